//! In-memory backends: [`MemBackend`] with fixed capacities and no heap, and (feature `alloc`)
//! `VecBackend` with growable tables.
//!
//! [`MemBackend`] keeps two banks, like the flash adapter: a write transaction writes into the
//! inactive bank, which starts as a copy of the active one, and commit flips which bank is
//! active. `VecBackend` keeps a transaction's changes in an overlay. Either way a dropped
//! transaction leaves the committed state untouched.

use crate::backend::{Backend, BackendError, BackendErrorKind, Bucket, ReadTxn, Visit, WriteTxn};

/// One bank of records, sorted by `(bucket, key)`.
pub trait Table: Clone + Default + sealed::Sealed {
    #[doc(hidden)]
    fn get(&self, bucket: Bucket, key: &[u8]) -> Option<&[u8]>;
    #[doc(hidden)]
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>);
    #[doc(hidden)]
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError>;
    #[doc(hidden)]
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> bool;
    #[doc(hidden)]
    fn clear(&mut self, bucket: Bucket);
    #[doc(hidden)]
    fn len(&self) -> usize;
    #[doc(hidden)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A backend held in memory, generic over its [`Table`].
#[derive(Clone, Debug, Default)]
pub struct Banked<T: Table> {
    banks: (T, T),
    /// Whether the second bank is the committed one.
    second: bool,
}

impl<T: Table> Banked<T> {
    /// The committed bank.
    fn active(&self) -> &T {
        if self.second { &self.banks.1 } else { &self.banks.0 }
    }
    /// The bank a write transaction stages into.
    fn staged(&self) -> &T {
        if self.second { &self.banks.0 } else { &self.banks.1 }
    }
    fn staged_mut(&mut self) -> &mut T {
        if self.second { &mut self.banks.0 } else { &mut self.banks.1 }
    }
}

impl<T: Table> Banked<T> {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records, over all buckets.
    pub fn len(&self) -> usize {
        self.active().len()
    }

    /// Whether the backend holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read view of a [`Banked`] backend.
#[derive(Debug)]
pub struct BankRead<'a, T: Table> {
    table: &'a T,
}

/// Write transaction of a [`Banked`] backend.
#[derive(Debug)]
pub struct BankWrite<'a, T: Table> {
    owner: &'a mut Banked<T>,
}

fn read_get<T: Table>(t: &T, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> bool {
    match t.get(bucket, key) {
        Some(v) => {
            f(v);
            true
        }
        None => false,
    }
}

impl<T: Table> ReadTxn for BankRead<'_, T> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        Ok(read_get(self.table, bucket, key, f))
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        self.table.scan(bucket, from, f);
        Ok(())
    }
}

impl<T: Table> BankWrite<'_, T> {
    fn staged(&self) -> &T {
        self.owner.staged()
    }
    fn staged_mut(&mut self) -> &mut T {
        self.owner.staged_mut()
    }
}

impl<T: Table> ReadTxn for BankWrite<'_, T> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        Ok(read_get(self.staged(), bucket, key, f))
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        self.staged().scan(bucket, from, f);
        Ok(())
    }
}

impl<T: Table> WriteTxn for BankWrite<'_, T> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.staged_mut().put(bucket, key, value)
    }
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self.staged_mut().delete(bucket, key))
    }
    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
        self.staged_mut().clear(bucket);
        Ok(())
    }
    fn commit(self) -> Result<(), BackendError> {
        self.owner.second = !self.owner.second;
        Ok(())
    }
}

impl<T: Table> Backend for Banked<T> {
    type Read<'a>
        = BankRead<'a, T>
    where
        Self: 'a;
    type Write<'a>
        = BankWrite<'a, T>
    where
        Self: 'a;

    fn read(&self) -> Result<Self::Read<'_>, BackendError> {
        Ok(BankRead { table: self.active() })
    }

    fn write(&mut self) -> Result<Self::Write<'_>, BackendError> {
        let (a, b) = &mut self.banks;
        if self.second {
            a.clone_from(b);
        } else {
            b.clone_from(a);
        }
        Ok(BankWrite { owner: self })
    }
}

/// A record of a fixed table.
type FixedEntry<const K: usize, const V: usize> = (Bucket, heapless::Vec<u8, K>, heapless::Vec<u8, V>);

/// A table of at most `N` records with keys of at most `K` and values of at most `V` bytes.
#[derive(Clone, Debug, Default)]
pub struct FixedTable<const N: usize, const K: usize, const V: usize> {
    entries: heapless::Vec<FixedEntry<K, V>, N>,
}

/// An in-memory backend without heap: `N` records, keys up to `K` bytes, values up to `V` bytes.
pub type MemBackend<const N: usize, const K: usize, const V: usize> = Banked<FixedTable<N, K, V>>;

fn position<E>(entries: &[E], bucket: Bucket, key: &[u8], get: impl Fn(&E) -> (Bucket, &[u8])) -> Result<usize, usize> {
    entries.binary_search_by(|e| {
        let (b, k) = get(e);
        (b, k).cmp(&(bucket, key))
    })
}

impl<const N: usize, const K: usize, const V: usize> sealed::Sealed for FixedTable<N, K, V> {}

impl<const N: usize, const K: usize, const V: usize> Table for FixedTable<N, K, V> {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Option<&[u8]> {
        let i = position(&self.entries, bucket, key, |e| (e.0, &e.1)).ok()?;
        self.entries.get(i).map(|e| e.2.as_slice())
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) {
        let start = position(&self.entries, bucket, from, |e| (e.0, &e.1)).unwrap_or_else(|i| i);
        for e in self.entries.get(start..).unwrap_or(&[]).iter().take_while(|e| e.0 == bucket) {
            if f(&e.1, &e.2).is_break() {
                break;
            }
        }
    }
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        let full = |what| BackendError::new(BackendErrorKind::Full, what);
        let v = heapless::Vec::from_slice(value).map_err(|_| full("storing a value longer than the table allows"))?;
        match position(&self.entries, bucket, key, |e| (e.0, &e.1)) {
            Ok(i) => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.2 = v;
                }
            }
            Err(i) => {
                let k =
                    heapless::Vec::from_slice(key).map_err(|_| full("storing a key longer than the table allows"))?;
                self.entries.insert(i, (bucket, k, v)).map_err(|_| full("adding a record to a full table"))?;
            }
        }
        Ok(())
    }
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> bool {
        match position(&self.entries, bucket, key, |e| (e.0, &e.1)) {
            Ok(i) => {
                self.entries.remove(i);
                true
            }
            Err(_) => false,
        }
    }
    fn clear(&mut self, bucket: Bucket) {
        self.entries.retain(|e| e.0 != bucket);
    }
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(feature = "alloc")]
mod growable {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use core::ops::ControlFlow;

    use crate::backend::{Backend, BackendError, Bucket, ReadTxn, Visit, WriteTxn};

    type Map = BTreeMap<(Bucket, Vec<u8>), Vec<u8>>;

    /// An in-memory backend with growable tables (feature `alloc`).
    ///
    /// A write transaction keeps its changes in an overlay that reads see and commit merges, so
    /// a transaction costs what it changes, not the size of the backend.
    #[derive(Clone, Debug, Default)]
    pub struct VecBackend {
        map: Map,
    }

    impl VecBackend {
        /// An empty backend.
        pub fn new() -> Self {
            Self::default()
        }

        /// Number of records, over all buckets.
        pub fn len(&self) -> usize {
            self.map.len()
        }

        /// Whether the backend holds no record.
        pub fn is_empty(&self) -> bool {
            self.map.is_empty()
        }
    }

    /// Read transaction of a `VecBackend`.
    #[derive(Debug)]
    pub struct VecRead<'a> {
        map: &'a Map,
    }

    /// Write transaction of a `VecBackend`.
    #[derive(Debug)]
    pub struct VecWrite<'a> {
        map: &'a mut Map,
        /// Changes: `Some` puts, `None` deletes.
        pending: BTreeMap<(Bucket, Vec<u8>), Option<Vec<u8>>>,
        /// Buckets cleared before the changes in `pending`.
        cleared: [bool; Bucket::ALL.len()],
    }

    impl VecWrite<'_> {
        fn is_cleared(&self, bucket: Bucket) -> bool {
            self.cleared.get(usize::from(bucket.id())).copied().unwrap_or(false)
        }
    }

    fn scan_map(map: &Map, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) {
        for ((b, k), v) in map.range((bucket, from.to_vec())..) {
            if *b != bucket || f(k, v).is_break() {
                break;
            }
        }
    }

    impl ReadTxn for VecRead<'_> {
        fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
            Ok(self.map.get(&(bucket, key.to_vec())).map(|v| f(v)).is_some())
        }
        fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
            scan_map(self.map, bucket, from, f);
            Ok(())
        }
    }

    impl ReadTxn for VecWrite<'_> {
        fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
            let k = (bucket, key.to_vec());
            let value = match self.pending.get(&k) {
                Some(change) => change.as_deref(),
                None if self.is_cleared(bucket) => None,
                None => self.map.get(&k).map(Vec::as_slice),
            };
            Ok(value.map(f).is_some())
        }

        fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
            // Merge the committed records (unless the bucket was cleared) with the overlay; the
            // overlay wins on equal keys and hides deleted ones.
            let start = (bucket, from.to_vec());
            let mut base = self.map.range(start.clone()..).take_while(|((b, _), _)| *b == bucket).peekable();
            if self.is_cleared(bucket) {
                base.by_ref().for_each(drop);
            }
            let mut over = self.pending.range(start..).take_while(|((b, _), _)| *b == bucket).peekable();
            loop {
                let take_over = match (base.peek(), over.peek()) {
                    (None, None) => return Ok(()),
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some(((_, a), _)), Some(((_, b), _))) => b <= a,
                };
                let flow = if take_over {
                    let Some(((_, k), change)) = over.next() else { return Ok(()) };
                    if base.peek().is_some_and(|((_, a), _)| a == k) {
                        base.next();
                    }
                    match change {
                        Some(v) => f(k, v),
                        None => ControlFlow::Continue(()),
                    }
                } else {
                    let Some(((_, k), v)) = base.next() else { return Ok(()) };
                    f(k, v)
                };
                if flow.is_break() {
                    return Ok(());
                }
            }
        }
    }

    impl WriteTxn for VecWrite<'_> {
        fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
            self.pending.insert((bucket, key.to_vec()), Some(value.to_vec()));
            Ok(())
        }
        fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
            let existed = self.get(bucket, key, &mut |_| {})?;
            self.pending.insert((bucket, key.to_vec()), None);
            Ok(existed)
        }
        fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
            if let Some(cleared) = self.cleared.get_mut(usize::from(bucket.id())) {
                *cleared = true;
            }
            self.pending.retain(|(b, _), _| *b != bucket);
            Ok(())
        }
        fn commit(self) -> Result<(), BackendError> {
            for bucket in Bucket::ALL {
                if self.is_cleared(bucket) {
                    self.map.retain(|(b, _), _| *b != bucket);
                }
            }
            for (k, change) in self.pending {
                match change {
                    Some(v) => {
                        self.map.insert(k, v);
                    }
                    None => {
                        self.map.remove(&k);
                    }
                }
            }
            Ok(())
        }
    }

    impl Backend for VecBackend {
        type Read<'a>
            = VecRead<'a>
        where
            Self: 'a;
        type Write<'a>
            = VecWrite<'a>
        where
            Self: 'a;

        fn read(&self) -> Result<Self::Read<'_>, BackendError> {
            Ok(VecRead { map: &self.map })
        }
        fn write(&mut self) -> Result<Self::Write<'_>, BackendError> {
            Ok(VecWrite { map: &mut self.map, pending: BTreeMap::new(), cleared: [false; Bucket::ALL.len()] })
        }
    }
}

#[cfg(feature = "alloc")]
pub use growable::{VecBackend, VecRead, VecWrite};

#[cfg(test)]
mod tests {
    use super::*;
    use core::ops::ControlFlow;

    fn all<B: Backend>(b: &B, bucket: Bucket) -> std::vec::Vec<(std::vec::Vec<u8>, std::vec::Vec<u8>)> {
        let mut out = std::vec::Vec::new();
        b.read()
            .unwrap()
            .scan(bucket, &[], &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    }

    fn exercise<B: Backend + Default>() {
        let mut b = B::default();
        let mut w = b.write().unwrap();
        w.put(Bucket::Key, b"b", b"2").unwrap();
        w.put(Bucket::Key, b"a", b"1").unwrap();
        w.put(Bucket::Meta, b"a", b"m").unwrap();
        w.commit().unwrap();
        assert_eq!(all(&b, Bucket::Key), [(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);

        // A dropped transaction changes nothing.
        let mut w = b.write().unwrap();
        w.delete(Bucket::Key, b"a").unwrap();
        w.clear(Bucket::Meta).unwrap();
        drop(w);
        assert_eq!(all(&b, Bucket::Key).len(), 2);
        assert_eq!(all(&b, Bucket::Meta).len(), 1);

        let mut w = b.write().unwrap();
        assert!(w.delete(Bucket::Key, b"a").unwrap());
        w.commit().unwrap();
        assert_eq!(all(&b, Bucket::Key), [(b"b".to_vec(), b"2".to_vec())]);
        assert_eq!(all(&b, Bucket::Meta).len(), 1);
    }

    #[test]
    fn fixed_backend_commits_and_discards() {
        exercise::<MemBackend<8, 8, 8>>();
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn vec_backend_commits_and_discards() {
        exercise::<VecBackend>();
    }

    #[test]
    fn fixed_backend_reports_full_instead_of_dropping() {
        let mut b = MemBackend::<1, 4, 4>::default();
        let mut w = b.write().unwrap();
        w.put(Bucket::Key, b"a", b"1").unwrap();
        assert_eq!(w.put(Bucket::Key, b"b", b"1").unwrap_err().kind, BackendErrorKind::Full);
        assert_eq!(w.put(Bucket::Key, b"a", b"too long").unwrap_err().kind, BackendErrorKind::Full);
    }
}
