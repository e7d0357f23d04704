//! What `POST /v1/prefetch/{bucket}` says: the keys of an epoch in the order
//! they will be read, either written out (one per line) or described
//! compactly in JSON, as a key list (or a prefix to list) and a permutation
//! of it (`shuffle` with a seed, explicit `indices`, or the list's own
//! order). A million-sample epoch then costs a seed, not megabytes.

use serde::Deserialize;

/// Longest key S3 allows.
const MAX_KEY_BYTES: usize = 1024;
/// Most samples one order may hold (positions are `u32`; a few bytes each
/// in memory).
pub const MAX_ORDER_SAMPLES: usize = 20_000_000;

/// Where an order's keys come from.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    /// These keys.
    List(Vec<String>),
    /// Every key under this prefix, in listing (byte) order.
    Prefix(String),
    /// The key list of the order this one replaces.
    Previous,
}

/// How the key list is permuted into the read order.
#[derive(Debug, PartialEq, Eq)]
pub enum Permutation {
    /// The list's own order.
    Identity,
    /// [`shuffle`] with this seed, then with seed + 1, ... for `epochs`
    /// epochs one after another (a seeded sampler's next epochs).
    Shuffle {
        /// The first epoch's seed.
        seed: u64,
        /// Epochs in the order (at least 1).
        epochs: u32,
    },
    /// The keys at these indices of the list, in this order (repeats allowed).
    Indices(Vec<u32>),
}

/// A parsed order.
#[derive(Debug, PartialEq, Eq)]
pub struct OrderSpec {
    /// The keys.
    pub keys: KeySource,
    /// Their read order.
    pub permutation: Permutation,
}

/// Why a body is not an order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadOrder(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOrder {
    keys: Option<Vec<String>>,
    prefix: Option<String>,
    permutation: Option<JsonPermutation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum JsonPermutation {
    Identity,
    Shuffle {
        seed: u64,
        #[serde(default = "one")]
        epochs: u32,
    },
    Indices {
        indices: Vec<u32>,
    },
}

fn one() -> u32 {
    1
}

/// Parses a body: JSON when it starts with `{`, else keys one per line.
pub fn parse(body: &[u8]) -> Result<OrderSpec, BadOrder> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BadOrder(format!("the order is not UTF-8 text: {e}")))?;
    let trimmed = text.trim_start();
    let spec = if trimmed.starts_with('{') {
        parse_json(trimmed)?
    } else {
        let keys: Vec<String> = text
            .lines()
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            return Err(BadOrder(
                "the order is empty: send the keys one per line, or JSON".into(),
            ));
        }
        OrderSpec {
            keys: KeySource::List(keys),
            permutation: Permutation::Identity,
        }
    };
    if let KeySource::List(keys) = &spec.keys {
        check_keys(keys)?;
    }
    if let Permutation::Indices(indices) = &spec.permutation {
        if indices.is_empty() {
            return Err(BadOrder("permutation.indices is empty".into()));
        }
        if indices.len() > MAX_ORDER_SAMPLES {
            return Err(BadOrder(format!(
                "permutation.indices has {} entries; at most {MAX_ORDER_SAMPLES} are accepted",
                indices.len()
            )));
        }
        if let KeySource::List(keys) = &spec.keys
            && let Some(bad) = indices.iter().find(|&&i| i as usize >= keys.len())
        {
            return Err(BadOrder(format!(
                "permutation.indices has {bad}, past the {} keys",
                keys.len()
            )));
        }
    }
    Ok(spec)
}

fn parse_json(text: &str) -> Result<OrderSpec, BadOrder> {
    let order: JsonOrder = serde_json::from_str(text).map_err(|e| {
        BadOrder(format!(
            "the order is not valid JSON of the expected shape: {e}"
        ))
    })?;
    let keys = match (order.keys, order.prefix) {
        (Some(_), Some(_)) => {
            return Err(BadOrder("give 'keys' or 'prefix', not both".into()));
        }
        (Some(keys), None) => {
            if keys.is_empty() {
                return Err(BadOrder("'keys' is empty".into()));
            }
            KeySource::List(keys)
        }
        (None, Some(prefix)) => KeySource::Prefix(prefix),
        (None, None) => KeySource::Previous,
    };
    let permutation = match order.permutation {
        None | Some(JsonPermutation::Identity) => Permutation::Identity,
        Some(JsonPermutation::Shuffle { seed, epochs }) => {
            if epochs == 0 {
                return Err(BadOrder("permutation.epochs must be at least 1".into()));
            }
            Permutation::Shuffle { seed, epochs }
        }
        Some(JsonPermutation::Indices { indices }) => Permutation::Indices(indices),
    };
    Ok(OrderSpec { keys, permutation })
}

fn check_keys(keys: &[String]) -> Result<(), BadOrder> {
    if keys.len() > MAX_ORDER_SAMPLES {
        return Err(BadOrder(format!(
            "the order has {} keys; at most {MAX_ORDER_SAMPLES} are accepted",
            keys.len()
        )));
    }
    if let Some((line, key)) = keys
        .iter()
        .enumerate()
        .find(|(_, k)| k.is_empty() || k.len() > MAX_KEY_BYTES)
    {
        return Err(BadOrder(format!(
            "key {} is {} bytes long; keys have 1 to {MAX_KEY_BYTES} bytes",
            line + 1,
            key.len()
        )));
    }
    Ok(())
}

impl Permutation {
    /// The read order over a list of `len` keys, as indices into it.
    pub fn apply(&self, len: usize) -> Result<Vec<u32>, BadOrder> {
        let len32 = u32::try_from(len)
            .ok()
            .filter(|&n| n as usize <= MAX_ORDER_SAMPLES)
            .ok_or_else(|| BadOrder(format!("{len} keys are more than one order may hold")))?;
        match self {
            Self::Identity => Ok((0..len32).collect()),
            Self::Shuffle { seed, epochs } => {
                let total = len.saturating_mul(*epochs as usize);
                if total > MAX_ORDER_SAMPLES {
                    return Err(BadOrder(format!(
                        "{epochs} epochs of {len} keys are {total} samples; at most {MAX_ORDER_SAMPLES} are accepted"
                    )));
                }
                let mut order = Vec::with_capacity(total);
                for epoch in 0..*epochs {
                    order.extend(shuffle(len32, seed.wrapping_add(u64::from(epoch))));
                }
                Ok(order)
            }
            Self::Indices(indices) => match indices.iter().find(|&&i| i >= len32) {
                Some(bad) => Err(BadOrder(format!(
                    "permutation.indices has {bad}, past the {len} keys"
                ))),
                None => Ok(indices.clone()),
            },
        }
    }
}

/// SplitMix64: tiny, fully specified, and the same in any language.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The `shuffle` permutation of `0..len`: Fisher–Yates from the top, each
/// swap partner `j = (x * (i + 1)) >> 64` for the next SplitMix64 output `x`.
/// Clients reproduce it exactly (the Python package does), so posting the
/// seed is enough.
pub fn shuffle(len: u32, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len).collect();
    let mut random = SplitMix64(seed);
    for i in (1..order.len()).rev() {
        let j = ((u128::from(random.next()) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_one_per_line() {
        let spec = parse(b"a/1.jpg\r\nb/2.jpg\n\nc\n").expect("order");
        assert_eq!(
            spec,
            OrderSpec {
                keys: KeySource::List(vec!["a/1.jpg".into(), "b/2.jpg".into(), "c".into()]),
                permutation: Permutation::Identity,
            }
        );
    }

    #[test]
    fn compact_json_forms() {
        let spec = parse(br#"{"prefix": "train/", "permutation": {"kind": "shuffle", "seed": 7}}"#)
            .expect("order");
        assert_eq!(spec.keys, KeySource::Prefix("train/".into()));
        assert_eq!(
            spec.permutation,
            Permutation::Shuffle { seed: 7, epochs: 1 }
        );
        let spec =
            parse(br#"{"permutation": {"kind": "indices", "indices": [2, 0, 1]}}"#).expect("order");
        assert_eq!(spec.keys, KeySource::Previous);
        assert_eq!(spec.permutation.apply(3), Ok(vec![2, 0, 1]));
        assert!(spec.permutation.apply(2).is_err(), "index past the list");
    }

    #[test]
    fn bad_orders_say_what_is_wrong() {
        for (body, says) in [
            (&b""[..], "empty"),
            (b"\n\n", "empty"),
            (b"{\"keys\": []}", "empty"),
            (b"{\"keys\": [\"a\"], \"prefix\": \"b\"}", "not both"),
            (
                b"{\"keys\": [\"a\"], \"permutation\": {\"kind\": \"indices\", \"indices\": [1]}}",
                "past",
            ),
            (
                b"{\"keys\": [\"a\"], \"permutation\": {\"kind\": \"sorted\"}}",
                "JSON",
            ),
            (b"{\"key\": [\"a\"]}", "JSON"),
            (b"\xff\xfe", "UTF-8"),
            (b"{\"keys\": [\"\"]}", "1 to 1024"),
        ] {
            let err = parse(body).expect_err("refused");
            assert!(
                err.0.contains(says),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                err.0
            );
        }
    }

    #[test]
    fn a_shuffle_over_several_epochs_is_each_epochs_shuffle_in_turn() {
        let spec = parse(br#"{"permutation": {"kind": "shuffle", "seed": 41, "epochs": 3}}"#)
            .expect("order");
        let order = spec.permutation.apply(10).expect("order");
        let expected: Vec<u32> = [41, 42, 43]
            .into_iter()
            .flat_map(|s| shuffle(10, s))
            .collect();
        assert_eq!(order, expected);
        assert_eq!(
            order[10..20],
            [8, 3, 6, 5, 4, 0, 9, 2, 1, 7],
            "the second epoch is seed + 1"
        );
        let zero = parse(br#"{"permutation": {"kind": "shuffle", "seed": 1, "epochs": 0}}"#);
        assert!(zero.is_err_and(|e| e.0.contains("at least 1")));
        let huge = Permutation::Shuffle {
            seed: 1,
            epochs: 1000,
        }
        .apply(MAX_ORDER_SAMPLES / 10);
        assert!(huge.is_err_and(|e| e.0.contains("at most")));
    }

    #[test]
    fn shuffle_is_a_fixed_permutation() {
        let order = shuffle(10, 42);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(order, sorted, "shuffled");
        assert_eq!(order, shuffle(10, 42), "the same seed, the same order");
        assert_ne!(order, shuffle(10, 43));
        // Pinned: the Python package's test asserts the same list.
        assert_eq!(order, [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]);
    }
}
