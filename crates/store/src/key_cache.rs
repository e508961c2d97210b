//! Data keys this process has already opened, for one reader: the node's custodian.
//!
//! Opening an envelope is an X25519 Diffie-Hellman (an HPKE decapsulation), which
//! profiles put at about a fifth of the node's CPU on an audited FHIR read. The cache
//! memoizes that function and nothing else: an entry is found only by the blob's CID
//! and a digest of the exact envelope (its version, suite, encapsulated key and
//! ciphertext) and of the reader's secret, so a hit returns what opening that envelope
//! would have. Everything a read checks besides the envelope still runs on every read:
//! the envelope is read from storage (an erased or unlisted reader finds none), the
//! blob is checked against its CID, and the content is authenticated while it
//! decrypts. The node holds the custodian's secret, which opens every one of these
//! keys while their envelopes exist, so a kept key gives nothing the process could not
//! derive.
//!
//! Erasure and removing the reader drop the key, and a read that fetched the envelope
//! before them cannot put it back: every drop advances a generation, and a key opened
//! under an older generation is not kept (or is taken out again if the drop raced its
//! insert). What this process is not told of stays until evicted: a blob erased by
//! another process (`medledger blob erase`, another node on a shared bucket); the
//! ledger's erasures reach the node's own store (the shred queue). The cache zeroes
//! the keys it drops, not copies its table left behind while it grew.

use crate::envelope::{Envelope, Reader, ReaderSecret};
use medledger_core::Cid;
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const TAG: &[u8] = b"medledger/key-cache/v1\0";

/// Memoized envelope openings for one reader, bounded in entries.
pub(crate) struct KeyCache {
    reader: ReaderSecret,
    /// The reader's X25519 public key, to recognise its envelope at put time.
    public: [u8; 32],
    entries: Cache<Cid, ([u8; 32], Zeroizing<[u8; 32]>)>,
    /// Advanced by every drop; see the module doc.
    generation: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyCache({}, {} keys)",
            self.reader.account,
            self.entries.len()
        )
    }
}

impl KeyCache {
    pub(crate) fn new(reader: ReaderSecret, capacity: usize) -> Self {
        KeyCache {
            public: reader.public(),
            reader,
            entries: Cache::new(capacity.max(1)),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether `who` is this cache's reader (account and secret).
    pub(crate) fn is_reader(&self, who: &ReaderSecret) -> bool {
        who.account == self.reader.account && bool::from(who.secret.ct_eq(&self.reader.secret))
    }

    pub(crate) fn account(&self) -> medledger_core::AccountId {
        self.reader.account
    }

    /// Taken before a read fetches an envelope, and handed back to [`KeyCache::put`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn digest(&self, env: &Envelope) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(TAG);
        h.update(self.reader.secret);
        h.update(self.reader.account.0);
        h.update([env.version]);
        for part in [&env.suite, &env.enc, &env.ct] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// The key `env` opens to for `who`, if this cache is `who`'s and has opened it.
    pub(crate) fn get(&self, env: &Envelope, cid: &Cid, who: &ReaderSecret) -> Option<[u8; 32]> {
        if !self.is_reader(who) || env.reader != who.account {
            return None;
        }
        let (digest, key) = self.entries.get(cid)?;
        bool::from(digest.ct_eq(&self.digest(env))).then_some(*key)
    }

    /// Records that `env` opened to `key` for `who` (ignored for other readers), unless
    /// something was dropped since `since` (the envelope may be gone by now).
    pub(crate) fn put(
        &self,
        env: &Envelope,
        cid: &Cid,
        who: &ReaderSecret,
        key: &[u8; 32],
        since: u64,
    ) {
        if self.is_reader(who) && env.reader == who.account {
            self.insert(cid, self.digest(env), key, since);
        }
    }

    /// Records the key of a blob just sealed for `readers` (`envelopes` in their
    /// order), when one of them is this cache's reader with its public key: the
    /// node's own writes are mostly read back soon after.
    pub(crate) fn sealed(
        &self,
        cid: &Cid,
        envelopes: &[Envelope],
        readers: &[Reader],
        key: &[u8; 32],
        since: u64,
    ) {
        if let Some((env, _)) = envelopes
            .iter()
            .zip(readers)
            .find(|(_, r)| r.account == self.reader.account && r.public == self.public)
        {
            self.insert(cid, self.digest(env), key, since);
        }
    }

    fn insert(&self, cid: &Cid, digest: [u8; 32], key: &[u8; 32], since: u64) {
        if self.generation() != since {
            return;
        }
        self.entries.insert(*cid, (digest, Zeroizing::new(*key)));
        // A drop between the check above and the insert: take the key out again
        // (this may drop another fresh key too; it is then opened again).
        if self.generation() != since {
            self.entries.remove(cid);
        }
    }

    /// Drops the key of a blob (erased, or this reader removed from it).
    pub(crate) fn forget(&self, cid: &Cid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(cid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{unwrap, wrap};
    use medledger_core::{AccountId, Digest32};

    fn secret(b: u8) -> ReaderSecret {
        ReaderSecret {
            account: AccountId([b; 32]),
            secret: [b.wrapping_add(1); 32],
        }
    }

    #[test]
    fn a_hit_needs_the_same_envelope_and_the_same_reader_secret() {
        let me = secret(1);
        let cache = KeyCache::new(me.clone(), 16);
        let cid = Cid(Digest32([7; 32]));
        let key = [42u8; 32];
        let env = wrap(&key, &cid, &me.reader()).unwrap();
        assert_eq!(cache.get(&env, &cid, &me), None);
        cache.put(
            &env,
            &cid,
            &me,
            &unwrap(&env, &cid, &me).unwrap(),
            cache.generation(),
        );
        assert_eq!(cache.get(&env, &cid, &me), Some(key));

        // Another envelope for the same blob and reader (re-wrapped): a miss.
        let other = wrap(&key, &cid, &me.reader()).unwrap();
        assert_eq!(cache.get(&other, &cid, &me), None);
        // The same account with another secret: a miss, and nothing is recorded.
        let impostor = ReaderSecret {
            secret: [9; 32],
            ..me.clone()
        };
        assert_eq!(cache.get(&env, &cid, &impostor), None);
        cache.put(
            &env,
            &Cid(Digest32([8; 32])),
            &impostor,
            &key,
            cache.generation(),
        );
        assert_eq!(cache.get(&env, &Cid(Digest32([8; 32])), &me), None);
        // Another blob: a miss.
        assert_eq!(cache.get(&env, &Cid(Digest32([8; 32])), &me), None);

        cache.forget(&cid);
        assert_eq!(cache.get(&env, &cid, &me), None);
    }

    #[test]
    fn a_key_opened_before_a_drop_is_not_kept() {
        let me = secret(1);
        let cache = KeyCache::new(me.clone(), 16);
        let (cid, other) = (Cid(Digest32([7; 32])), Cid(Digest32([8; 32])));
        let key = [3u8; 32];
        let env = wrap(&key, &cid, &me.reader()).unwrap();
        let since = cache.generation();
        // An erasure while this read was opening its envelope.
        cache.forget(&other);
        cache.put(&env, &cid, &me, &key, since);
        assert_eq!(cache.get(&env, &cid, &me), None);
        cache.sealed(
            &cid,
            std::slice::from_ref(&env),
            &[me.reader()],
            &key,
            since,
        );
        assert_eq!(cache.get(&env, &cid, &me), None);
        cache.put(&env, &cid, &me, &key, cache.generation());
        assert_eq!(cache.get(&env, &cid, &me), Some(key));
    }

    #[test]
    fn sealing_records_only_the_cache_readers_own_envelope() {
        let me = secret(1);
        let them = secret(2);
        let cache = KeyCache::new(me.clone(), 16);
        let cid = Cid(Digest32([7; 32]));
        let key = [5u8; 32];
        let readers: Vec<Reader> = vec![them.reader(), me.reader()];
        let envs: Vec<Envelope> = readers
            .iter()
            .map(|r| wrap(&key, &cid, r).unwrap())
            .collect();
        cache.sealed(&cid, &envs, &readers, &key, cache.generation());
        assert_eq!(cache.get(&envs[1], &cid, &me), Some(key));
        assert_eq!(cache.get(&envs[0], &cid, &them), None);

        // Wrapped for another public key under the reader's account: not recorded.
        let cid2 = Cid(Digest32([8; 32]));
        let forged = Reader {
            account: me.account,
            public: them.public(),
        };
        let env = wrap(&key, &cid2, &forged).unwrap();
        cache.sealed(
            &cid2,
            std::slice::from_ref(&env),
            &[forged],
            &key,
            cache.generation(),
        );
        assert_eq!(cache.get(&env, &cid2, &me), None);
    }
}
