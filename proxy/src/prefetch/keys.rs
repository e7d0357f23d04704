//! An order's key list, with each key's index: built once per list, so
//! that the orders that reuse a list (every epoch's after the first) cost
//! no hashing of a million keys.

use std::collections::HashMap;
use std::sync::Arc;

/// The keys of one order (shared between orders that reuse them).
pub type Keys = Arc<KeyList>;

/// Keys by index, and indices by key.
pub struct KeyList {
    keys: Box<[Arc<str>]>,
    /// Each distinct key's first index.
    index: HashMap<Arc<str>, u32>,
    /// Each index's key's first index, only when the list repeats a key
    /// (a list read in order, with a sample read twice).
    first_of: Option<Box<[u32]>>,
}

impl KeyList {
    /// Indexes `keys` (at most `u32::MAX`; an order holds far fewer).
    pub fn new(keys: Vec<Arc<str>>) -> Self {
        let mut index = HashMap::with_capacity(keys.len());
        let mut first_of: Option<Vec<u32>> = None;
        for (at, key) in keys.iter().enumerate() {
            let at = at as u32;
            let first = *index.entry(Arc::clone(key)).or_insert(at);
            if first != at || first_of.is_some() {
                first_of
                    .get_or_insert_with(|| (0..at).collect())
                    .push(first);
            }
        }
        Self {
            keys: keys.into_boxed_slice(),
            index,
            first_of: first_of.map(Vec::into_boxed_slice),
        }
    }

    /// Keys in the list.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key at `index`.
    pub fn get(&self, index: u32) -> Option<&Arc<str>> {
        self.keys.get(index as usize)
    }

    /// The first index of `key`.
    pub fn find(&self, key: &str) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The first index of the key at `index` (itself unless repeated).
    pub fn first_of(&self, index: u32) -> u32 {
        self.first_of
            .as_ref()
            .and_then(|first| first.get(index as usize).copied())
            .unwrap_or(index)
    }
}

/// Where a posted order's keys come from, once resolved.
pub enum NewKeys {
    /// A list sent (or listed) with this order: indexed on its way in.
    List(Vec<Arc<str>>),
    /// The list of the order this one replaces.
    Reused(Keys),
}

impl NewKeys {
    /// The indexed list (indexing a new one takes a while).
    pub fn into_keys(self) -> Keys {
        match self {
            Self::List(keys) => Arc::new(KeyList::new(keys)),
            Self::Reused(keys) => keys,
        }
    }

    /// Keys in the list.
    pub fn len(&self) -> usize {
        match self {
            Self::List(keys) => keys.len(),
            Self::Reused(keys) => keys.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(keys: &[&str]) -> KeyList {
        KeyList::new(keys.iter().map(|&k| Arc::from(k)).collect())
    }

    #[test]
    fn a_key_is_found_at_its_first_index() {
        let keys = list(&["a", "b", "c"]);
        assert_eq!((keys.find("b"), keys.find("z")), (Some(1), None));
        assert_eq!(keys.first_of(2), 2);
        assert_eq!(keys.get(0).map(|k| &**k), Some("a"));
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn a_repeated_key_is_one_key() {
        let keys = list(&["a", "b", "a", "c", "b"]);
        assert_eq!(
            (0..5).map(|i| keys.first_of(i)).collect::<Vec<_>>(),
            [0, 1, 0, 3, 1]
        );
        assert_eq!(keys.find("a"), Some(0));
    }
}
