//! Weighted rendezvous (highest-random-weight) hashing: every key ranks every
//! member; the first is the owner. Adding or removing one of N members moves
//! only the keys it wins or held, about 1/N of them, and the ranking does not
//! depend on the order members are listed in.

use xxhash_rust::xxh3::xxh3_64;

/// A stable hash of a member's identity (its address).
pub fn member_hash(address: &str) -> u64 {
    xxh3_64(address.as_bytes())
}

/// The score of `member` (with `weight`) for `key`; higher wins. The
/// logarithmic form gives each member a share of keys proportional to its weight.
pub fn score(member: u64, weight: u32, key: u64) -> f64 {
    let mut pair = [0u8; 16];
    pair[..8].copy_from_slice(&member.to_le_bytes());
    pair[8..].copy_from_slice(&key.to_le_bytes());
    let hash = xxh3_64(&pair);
    // Uniform in (0, 1), never 0 or 1, so the logarithm is finite and negative.
    let uniform = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / uniform.ln()
}

/// The key requests about `key` at byte `offset` are ranked by: chunks by
/// (key, offset), so chunk 0 and a HEAD of the object land on the same
/// worker. Sidecars route with it and warm-ups find each chunk's owner with it.
pub fn chunk_route(key: &str, offset: u64) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(key.as_bytes());
    hasher.update(&[0xff]);
    hasher.update(&offset.to_le_bytes());
    hasher.digest()
}

/// The index of the member of `members` (hash, weight) that owns `key`.
pub fn owner(members: &[(u64, u32)], key: u64) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .map(|(i, &(hash, weight))| (score(hash, weight, key), hash, i))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
        .map(|(_, _, i)| i)
}

/// Indices of `members` (hash, weight) ordered from owner to last resort for `key`.
pub fn rank(members: &[(u64, u32)], key: u64) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, &(hash, weight))| (score(hash, weight, key), i))
        .collect();
    // Ties are practically impossible; break them by member hash for determinism.
    scored.sort_unstable_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| members[a.1].0.cmp(&members[b.1].0))
    });
    scored.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(addresses: &[&str]) -> Vec<(u64, u32)> {
        addresses.iter().map(|a| (member_hash(a), 1)).collect()
    }

    #[test]
    fn the_owner_is_the_first_of_the_ranking() {
        let mut weighted = members(&["a:1", "b:1", "c:1", "d:1"]);
        weighted[2].1 = 3;
        for key in 0..2_000u64 {
            let key = chunk_route(&format!("k{key}"), key * 4096);
            assert_eq!(super::owner(&weighted, key), Some(rank(&weighted, key)[0]));
        }
        assert_eq!(super::owner(&[], 1), None);
    }

    fn owner(members: &[(u64, u32)], key: u64) -> u64 {
        members[rank(members, key)[0]].0
    }

    const KEYS: u64 = 60_000;

    #[test]
    fn ownership_does_not_depend_on_member_order() {
        let forward = members(&["a:1", "b:1", "c:1", "d:1"]);
        let backward = members(&["d:1", "c:1", "b:1", "a:1"]);
        for key in 0..KEYS {
            let key = xxh3_64(&key.to_le_bytes());
            assert_eq!(owner(&forward, key), owner(&backward, key));
        }
    }

    #[test]
    fn adding_or_removing_one_of_n_moves_about_one_nth() {
        let three = members(&["w1:4143", "w2:4143", "w3:4143"]);
        let four = members(&["w1:4143", "w2:4143", "w3:4143", "w4:4143"]);
        let moved = (0..KEYS)
            .map(|k| xxh3_64(&k.to_le_bytes()))
            .filter(|&k| owner(&three, k) != owner(&four, k))
            .count() as f64
            / KEYS as f64;
        assert!(
            (moved - 0.25).abs() < 0.02,
            "adding a 4th member moved {moved:.3} of keys"
        );
        // Every moved key moved to the new member; nothing shuffled among the old ones.
        let new = member_hash("w4:4143");
        for key in (0..KEYS).map(|k| xxh3_64(&k.to_le_bytes())) {
            let (before, after) = (owner(&three, key), owner(&four, key));
            assert!(before == after || after == new);
        }
        // Removing w2 moves exactly w2's keys.
        let without = members(&["w1:4143", "w3:4143"]);
        let w2 = member_hash("w2:4143");
        let moved = (0..KEYS)
            .map(|k| xxh3_64(&k.to_le_bytes()))
            .filter(|&k| owner(&three, k) != owner(&without, k))
            .inspect(|&k| assert_eq!(owner(&three, k), w2, "only w2's keys move"))
            .count() as f64
            / KEYS as f64;
        assert!(
            (moved - 1.0 / 3.0).abs() < 0.02,
            "removing one of 3 moved {moved:.3}"
        );
    }

    #[test]
    fn weights_set_the_share_of_keys() {
        let weighted = vec![
            (member_hash("a:1"), 1),
            (member_hash("b:1"), 2),
            (member_hash("c:1"), 1),
        ];
        let mut counts = [0usize; 3];
        for key in (0..KEYS).map(|k| xxh3_64(&k.to_le_bytes())) {
            counts[rank(&weighted, key)[0]] += 1;
        }
        let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / KEYS as f64).collect();
        assert!(
            (shares[1] - 0.5).abs() < 0.02,
            "weight 2 of 4 owns {:.3}",
            shares[1]
        );
        assert!(
            (shares[0] - 0.25).abs() < 0.02 && (shares[2] - 0.25).abs() < 0.02,
            "{shares:?}"
        );
    }

    #[test]
    fn every_member_appears_once_in_the_ranking() {
        let pool = members(&["a:1", "b:1", "c:1"]);
        let mut ranking = rank(&pool, 42);
        ranking.sort_unstable();
        assert_eq!(ranking, [0, 1, 2]);
    }
}
