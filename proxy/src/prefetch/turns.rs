//! Turns to send what memory holds, earliest position of the order first.
//! When every loader worker starts its batch at once (an epoch's start),
//! reads of samples the proxy already holds compete only for CPU, and
//! shared fairly they all finish late together: the model waits for its
//! first batch while later batches are half sent. With the order known,
//! the sample needed soonest goes first, and a turn just given back is kept
//! a moment for the sample after it (its reader asks again within
//! microseconds), so the first batch streams as if it were read alone.
//! Everything is bounded: a reader that strays from the order, or asks
//! slowly, turns keeping off, and no read waits longer than `MOST_WAIT`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The longest a read waits for its turn before it goes anyway. A turn
/// lasts one in-memory sample handed to the socket (tens of microseconds),
/// but at an epoch's start the last loader worker's first sample waits
/// for every batch before its own (7 × 12 ms for 8 workers of 256 samples
/// of 110 KiB on two cores).
const MOST_WAIT: Duration = Duration::from_millis(200);
/// How long a given-back turn is kept for the next sample of the order
/// (tokio's timer counts milliseconds).
const KEEP: Duration = Duration::from_millis(1);
/// A next sample asked for within this long after its predecessor was
/// sent is worth keeping the turn for; a slower reader is not (the others
/// would idle while it thinks).
const QUICK: Duration = Duration::from_micros(250);
/// Positions after the one sent that count as its successor (a batch's
/// samples may be asked a little out of order).
const LEAD: u32 = 4;
/// After a pause this long with no sample sent (between epochs, say),
/// keeping is on again whatever the score: an epoch's start is where it
/// matters most.
const PAUSE: Duration = Duration::from_millis(50);
/// Keeping is on while the score is not negative: each quick successor
/// adds one, a keep that went unused or a slow successor takes four.
const SCORE_BOUND: i32 = 16;

/// Sends of samples of an order, one at a time by default.
pub struct Turns {
    state: Mutex<State>,
}

/// What the turns did so far.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TurnCounts {
    /// Reads that had a turn at once.
    pub at_once: u64,
    /// Reads that waited for theirs.
    pub waited: u64,
    /// Reads that went without one (waited `MOST_WAIT`).
    pub timed_out: u64,
    /// Turns kept for the next sample and taken by it.
    pub kept_taken: u64,
    /// Turns kept for a next sample that did not come in time.
    pub kept_lapsed: u64,
    /// Whether keeping is on now.
    pub keeping: bool,
}

struct State {
    free: usize,
    /// Waiting reads by (position, arrival): the lowest goes next.
    waiting: BTreeMap<(u32, u64), oneshot::Sender<()>>,
    arrivals: u64,
    /// A turn kept for a successor of `after` until the timer numbered `id`.
    kept: Option<Kept>,
    kept_timers: u64,
    /// The last sample sent and when, to score its successor.
    last_sent: Option<(u32, Instant)>,
    /// When a turn was last given back.
    last_given_back: Option<Instant>,
    score: i32,
    counts: TurnCounts,
}

#[derive(Clone, Copy)]
struct Kept {
    after: u32,
    id: u64,
}

/// A read's turn: the next waiting read gets it when this is dropped.
pub struct Turn {
    turns: Arc<Turns>,
    position: u32,
}

fn follows(position: u32, sent: u32) -> bool {
    position > sent && position - sent <= LEAD
}

impl Turns {
    /// `at_once` sends at a time (at least one).
    pub fn new(at_once: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: at_once.max(1),
                waiting: BTreeMap::new(),
                arrivals: 0,
                kept: None,
                kept_timers: 0,
                last_sent: None,
                last_given_back: None,
                score: 0,
                counts: TurnCounts::default(),
            }),
        })
    }

    /// Waits for the turn of the read at `position`: at once when a send is
    /// free (or kept for it), else after every waiting read before it, or
    /// `MOST_WAIT` at most (then `None`: it goes without a turn).
    pub async fn take(self: &Arc<Self>, position: u32) -> Option<Turn> {
        let mut waiting = {
            let mut state = self.lock();
            if state
                .last_given_back
                .is_some_and(|at| at.elapsed() >= PAUSE)
            {
                state.score = state.score.max(0);
            }
            if let Some((sent, at)) = state.last_sent
                && follows(position, sent)
            {
                state.last_sent = None;
                state.score(at.elapsed() <= QUICK);
            }
            if state.kept.is_some_and(|kept| follows(position, kept.after)) {
                state.kept = None;
                state.counts.kept_taken += 1;
                return Some(self.turn(position));
            }
            if state.free > 0 {
                state.free -= 1;
                state.counts.at_once += 1;
                return Some(self.turn(position));
            }
            state.counts.waited += 1;
            state.arrivals += 1;
            let entry = (position, state.arrivals);
            let (tx, given) = oneshot::channel();
            state.waiting.insert(entry, tx);
            Waiting {
                turns: self,
                entry,
                given,
            }
        };
        if tokio::time::timeout(MOST_WAIT, &mut waiting.given)
            .await
            .is_ok()
        {
            return Some(self.turn(position));
        }
        let mut state = self.lock();
        if state.waiting.remove(&waiting.entry).is_some() {
            state.counts.timed_out += 1;
            return None;
        }
        // Handed a turn (under the lock) as the wait ran out: it is ours.
        drop(state);
        waiting.given.try_recv().ok().map(|()| self.turn(position))
    }

    fn turn(self: &Arc<Self>, position: u32) -> Turn {
        Turn {
            turns: Arc::clone(self),
            position,
        }
    }

    /// Gives back the turn of the sample at `sent`: to an earlier waiting
    /// sample if there is one (needed sooner), else to its successor if that
    /// waits, kept for it a moment if it is likely to come, else to the
    /// earliest waiting read.
    fn give_back(self: &Arc<Self>, sent: u32) {
        let mut state = self.lock();
        let now = Instant::now();
        state.last_sent = Some((sent, now));
        state.last_given_back = Some(now);
        let earliest = state.waiting.keys().next().map(|&(position, _)| position);
        let keep = match earliest {
            None => false,
            Some(position) if position <= sent || follows(position, sent) => false,
            Some(_) => state.kept.is_none() && state.score >= 0,
        };
        if keep && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            state.kept_timers += 1;
            let id = state.kept_timers;
            state.kept = Some(Kept { after: sent, id });
            let turns = Arc::clone(self);
            runtime.spawn(async move {
                tokio::time::sleep(KEEP).await;
                let mut state = turns.lock();
                if state.kept.is_some_and(|kept| kept.id == id) {
                    state.kept = None;
                    state.counts.kept_lapsed += 1;
                    state.score(false);
                    state.hand_on();
                }
            });
            return;
        }
        state.hand_on();
    }

    /// What the turns did so far.
    pub fn counts(&self) -> TurnCounts {
        let state = self.lock();
        TurnCounts {
            keeping: state.score >= 0,
            ..state.counts
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// A turn is free: the earliest waiting read has it, else it is free.
    /// Called under the lock, so a waiter whose time ran out either finds
    /// its entry (no turn) or was given one.
    fn hand_on(&mut self) {
        while let Some((_, waiter)) = self.waiting.pop_first() {
            if waiter.send(()).is_ok() {
                return;
            }
        }
        self.free += 1;
    }

    fn score(&mut self, quick: bool) {
        self.score = if quick {
            (self.score + 1).min(SCORE_BOUND)
        } else {
            (self.score - 4).max(-SCORE_BOUND)
        };
    }
}

/// A read in the queue; a read dropped while it waits (its client went
/// away) leaves it, or passes on a turn it was just handed.
struct Waiting<'a> {
    turns: &'a Arc<Turns>,
    entry: (u32, u64),
    given: oneshot::Receiver<()>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.turns.lock();
        if state.waiting.remove(&self.entry).is_none() && self.given.try_recv().is_ok() {
            state.hand_on();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.give_back(self.position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `n` reads are queued.
    async fn queued(turns: &Turns, n: usize) {
        while turns.lock().waiting.len() < n {
            tokio::task::yield_now().await;
        }
    }

    /// A read of `position` that asks once `n - 1` others are queued, and
    /// says whether it had a turn; returned once it waits in the queue.
    async fn waiter(turns: &Arc<Turns>, position: u32, n: usize) -> tokio::task::JoinHandle<bool> {
        let queue = Arc::clone(turns);
        let read = tokio::spawn(async move { queue.take(position).await.is_some() });
        queued(turns, n).await;
        read
    }

    #[tokio::test]
    async fn the_earliest_waiting_position_goes_next() {
        let turns = Turns::new(1);
        let first = turns.take(50).await.expect("a free turn");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (queued_before, position) in [30u32, 10, 20].into_iter().enumerate() {
            let (queue, tx) = (Arc::clone(&turns), tx.clone());
            tokio::spawn(async move {
                let turn = queue.take(position).await;
                let _ = tx.send((position, turn.is_some()));
                drop(turn);
            });
            queued(&turns, queued_before + 1).await;
        }
        drop(first);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.expect("every read gets an answer"));
        }
        assert_eq!(order, [(10, true), (20, true), (30, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_a_bounded_time_for_a_turn_that_never_comes() {
        let turns = Turns::new(1);
        let _held = turns.take(0).await.expect("a free turn");
        let waited = tokio::time::Instant::now();
        assert!(turns.take(1).await.is_none(), "goes without a turn");
        assert_eq!(waited.elapsed(), MOST_WAIT);
        assert!(turns.lock().waiting.is_empty(), "no waiter left behind");
    }

    #[tokio::test]
    async fn a_reader_gone_while_waiting_leaves_the_queue() {
        let turns = Turns::new(1);
        let held = turns.take(0).await.expect("a free turn");
        let gone = waiter(&turns, 1, 1).await;
        gone.abort();
        let _ = gone.await;
        assert!(turns.lock().waiting.is_empty(), "it left the queue");
        let next = waiter(&turns, 9, 1).await;
        drop(held);
        assert!(
            next.await.expect("no panic"),
            "the live waiter got the turn"
        );
    }

    #[tokio::test]
    async fn a_turn_is_kept_for_the_next_sample_while_later_ones_wait() {
        let turns = Turns::new(1);
        let first = turns.take(0).await.expect("a free turn");
        let later = waiter(&turns, 256, 1).await;
        drop(first);
        // Position 1 asks after position 0 was sent: the kept turn is its,
        // although position 256 was waiting first.
        let second = turns.take(1).await.expect("the kept turn");
        assert_eq!(turns.lock().waiting.len(), 1, "256 still waits");
        assert!(turns.lock().score > 0, "a quick successor scored");
        drop(second);
        assert!(
            later.await.expect("no panic"),
            "256 goes once the keep lapses"
        );
    }

    #[tokio::test]
    async fn an_earlier_waiting_sample_goes_before_the_next_one() {
        let turns = Turns::new(1);
        // The last batch's reader had the turn first; the first batch's
        // reader asked while it was held.
        let later = turns.take(512).await.expect("a free turn");
        let earlier = waiter(&turns, 0, 1).await;
        drop(later);
        assert!(earlier.await.expect("no panic"), "position 0 went next");
        assert_eq!(turns.counts().kept_taken, 0, "nothing was kept for 513");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_keep_lapses_and_keeping_turns_off() {
        let turns = Turns::new(1);
        let first = turns.take(0).await.expect("a free turn");
        let later = waiter(&turns, 256, 1).await;
        let given_back = tokio::time::Instant::now();
        drop(first);
        // Nobody asks for position 1: 256 gets the turn when the keep lapses.
        assert!(later.await.expect("no panic"));
        assert!(given_back.elapsed() >= KEEP && given_back.elapsed() < MOST_WAIT);
        assert!(turns.lock().score < 0, "keeping is off");
        // With keeping off, a turn given back goes straight to the waiter.
        let held = turns.take(300).await.expect("a free turn");
        let waiter = waiter(&turns, 500, 1).await;
        let given_back = tokio::time::Instant::now();
        drop(held);
        assert!(waiter.await.expect("no panic"));
        assert_eq!(given_back.elapsed(), Duration::ZERO);
    }
}
