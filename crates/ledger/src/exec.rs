//! The state the contracts run over. Pure: reads go through [`StateRead`], writes
//! collect in an [`Overlay`], so the node (over redb) and `verify` (over a scratch
//! map) run the very same code. A rejected transaction writes nothing.

use crate::error::Result;
use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::BTreeMap;

/// Key-value state with ordered prefix scans.
pub trait StateRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries whose key starts with `prefix` and sorts after
    /// `start_after` (when given), in key order.
    fn scan_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_page(prefix, None, usize::MAX)
    }

    /// Up to `limit` entries whose key starts with `prefix` and sorts before `before`
    /// (when given), newest key first. The stored state seeks; other states (scratch
    /// maps, overlays) scan the prefix.
    fn scan_page_rev(
        &self,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut all = self.scan(prefix)?;
        all.retain(|(k, _)| before.is_none_or(|b| k.as_slice() < b));
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }
}

impl StateRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// A block's (or transaction's) pending writes: `None` deletes the key.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Applies `writes` to a plain map.
pub fn apply_writes(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: Writes) {
    for (k, v) in writes {
        match v {
            Some(v) => state.insert(k, v),
            None => state.remove(&k),
        };
    }
}

/// Merges pending writes over a base scan (both in key order).
pub(crate) fn merge_scan(
    base: Vec<(Vec<u8>, Vec<u8>)>,
    pending: &Writes,
    prefix: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
    for (k, v) in pending
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
    {
        match v {
            Some(v) => merged.insert(k.clone(), v.clone()),
            None => merged.remove(k),
        };
    }
    merged.into_iter().collect()
}

/// The part of a key-ordered scan after `start_after`, at most `limit` entries.
pub(crate) fn page(
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    start_after: Option<&[u8]>,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries
        .into_iter()
        .filter(|(k, _)| start_after.is_none_or(|s| k.as_slice() > s))
        .take(limit)
        .collect()
}

/// Pending writes over a base state. Iterating `writes` yields keys in sorted order,
/// which is the order the state digest commits to.
pub struct Overlay<'a, S: StateRead> {
    base: &'a S,
    pub writes: Writes,
}

impl<'a, S: StateRead> Overlay<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Overlay {
            base,
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// Every entry under `prefix`, pending writes included.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(merge_scan(self.base.scan(prefix)?, &self.writes, prefix))
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Reads a borsh-encoded value; a value that does not decode is corruption.
    pub fn get_obj<T: BorshDeserialize>(&self, key: &[u8]) -> Result<Option<T>> {
        decode_opt(key, self.get(key)?)
    }

    pub fn put_obj<T: BorshSerialize>(&mut self, key: Vec<u8>, value: &T) {
        self.put(
            key,
            borsh::to_vec(value).expect("encoding into a Vec cannot fail"),
        );
    }
}

impl<S: StateRead> StateRead for Overlay<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Overlay::get(self, key)
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(page(Overlay::scan(self, prefix)?, start_after, limit))
    }
}

/// Reads a borsh-encoded value from any state.
pub fn read_obj<T: BorshDeserialize>(state: &impl StateRead, key: &[u8]) -> Result<Option<T>> {
    decode_opt(key, state.get(key)?)
}

/// Decodes a stored value, naming the key's prefix on failure (never the value).
pub(crate) fn decode_opt<T: BorshDeserialize>(key: &[u8], v: Option<Vec<u8>>) -> Result<Option<T>> {
    match v {
        None => Ok(None),
        Some(bytes) => T::try_from_slice(&bytes).map(Some).map_err(|e| {
            let prefix: String = key
                .iter()
                .take_while(|b| **b != b'/')
                .map(|b| *b as char)
                .collect();
            crate::LedgerError::CorruptMeta(format!("state entry {prefix}/: {e}"))
        }),
    }
}
