#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod etcd;
pub mod etcd_ops;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;

use proptest::prelude::*;
use snapply_core::backend::{Backend, BackendError, Bucket, ReadTxn, WriteTxn};

/// What a backend must hold: every `(bucket, key) → value`, in the order a scan returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model(BTreeMap<(Bucket, Vec<u8>), Vec<u8>>);

/// A record as the model and the checks compare them: key, value.
pub type Pair = (Vec<u8>, Vec<u8>);

impl Model {
    /// The value of `key` in `bucket`.
    pub fn get(&self, bucket: Bucket, key: &[u8]) -> Option<&[u8]> {
        self.0.get(&(bucket, key.to_vec())).map(Vec::as_slice)
    }

    /// The records of `bucket` whose key is `>= from`, in key order, at most `limit` of them.
    pub fn scan(&self, bucket: Bucket, from: &[u8], limit: Option<usize>) -> Vec<Pair> {
        self.0
            .range((bucket, from.to_vec())..)
            .take_while(|((b, _), _)| *b == bucket)
            .take(limit.unwrap_or(usize::MAX))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Sets `key` in `bucket` to `value`.
    pub fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) {
        self.0.insert((bucket, key.to_vec()), value.to_vec());
    }

    /// Removes `key` from `bucket`; returns whether it existed.
    pub fn delete(&mut self, bucket: Bucket, key: &[u8]) -> bool {
        self.0.remove(&(bucket, key.to_vec())).is_some()
    }

    /// Removes every key of `bucket`.
    pub fn clear(&mut self, bucket: Bucket) {
        self.0.retain(|(b, _), _| *b != bucket);
    }
}

/// One step of a generated sequence. Buckets are indexes into [`Bucket::ALL`].
#[derive(Clone, PartialEq, Eq)]
pub enum Step {
    /// Put a key in the open transaction.
    Put(usize, Vec<u8>, Vec<u8>),
    /// Delete a key in the open transaction, checking whether it existed.
    Delete(usize, Vec<u8>),
    /// Clear a bucket in the open transaction.
    Clear(usize),
    /// Read a key in the open transaction.
    Get(usize, Vec<u8>),
    /// A range read in the open transaction, from a key, stopping after `limit` records if any.
    Scan(usize, Vec<u8>, Option<usize>),
    /// Commit the open transaction.
    Commit,
    /// Drop the open transaction.
    Abort,
    /// Drop the open transaction, then the backend, and open it again from its medium.
    Reopen,
}

impl fmt::Debug for Step {
    // Short, so a shrunk failing sequence reads as a script.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = |i: &usize| Bucket::ALL.get(*i).map_or("?", |b| b.name());
        match self {
            Step::Put(i, k, v) => write!(f, "put {} {k:?} ({} bytes)", b(i), v.len()),
            Step::Delete(i, k) => write!(f, "delete {} {k:?}", b(i)),
            Step::Clear(i) => write!(f, "clear {}", b(i)),
            Step::Get(i, k) => write!(f, "get {} {k:?}", b(i)),
            Step::Scan(i, k, limit) => write!(f, "scan {} from {k:?} limit {limit:?}", b(i)),
            Step::Commit => f.write_str("commit"),
            Step::Abort => f.write_str("abort"),
            Step::Reopen => f.write_str("reopen"),
        }
    }
}

/// The shape of generated sequences: which buckets, how long values get, whether to reopen.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Steps per sequence, at most.
    pub steps: usize,
    /// Buckets used: the first `buckets` of [`Bucket::ALL`].
    pub buckets: usize,
    /// Longest key generated (keys are drawn from 5 byte values: 156 keys of up to 3 bytes).
    pub max_key: usize,
    /// Longest value generated.
    pub max_value: usize,
    /// Whether sequences reopen the backend (needs a medium: a no-op for memory backends).
    pub reopen: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { steps: 96, buckets: Bucket::ALL.len(), max_key: 3, max_value: 48, reopen: true }
    }
}

/// A key from a small alphabet, 0 to `max` bytes: keys collide often, and some are prefixes of
/// others (the empty key included), so the order of a scan and the key it starts from matter.
fn key(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![4 => 0u8..4, 1 => Just(0xFFu8)], 0..=max)
}

/// One step of a sequence of `shape`.
pub fn step(shape: Shape) -> impl Strategy<Value = Step> {
    let bucket = 0..shape.buckets.clamp(1, Bucket::ALL.len());
    let value = prop::collection::vec(any::<u8>(), 0..=shape.max_value);
    let limit = prop::option::of(0usize..4);
    let reopen = if shape.reopen { 1 } else { 0 };
    prop_oneof![
        8 => (bucket.clone(), key(shape.max_key), value).prop_map(|(b, k, v)| Step::Put(b, k, v)),
        3 => (bucket.clone(), key(shape.max_key)).prop_map(|(b, k)| Step::Delete(b, k)),
        1 => bucket.clone().prop_map(Step::Clear),
        3 => (bucket.clone(), key(shape.max_key)).prop_map(|(b, k)| Step::Get(b, k)),
        3 => (bucket, key(shape.max_key), limit).prop_map(|(b, k, l)| Step::Scan(b, k, l)),
        2 => Just(Step::Commit),
        1 => Just(Step::Abort),
        reopen => Just(Step::Reopen),
    ]
}

/// A sequence of `shape`.
pub fn steps(shape: Shape) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(shape), 1..=shape.steps.max(1))
}

/// A backend under check, and how to open it again from its medium.
pub trait Subject: Sized {
    /// The backend.
    type Backend: Backend;
    /// The backend, open.
    fn backend(&mut self) -> &mut Self::Backend;
    /// Drops the backend and opens it again from what its medium holds (a reboot). Backends
    /// without a medium keep their state.
    ///
    /// # Errors
    /// Why the backend could not be opened again.
    fn reopen(self) -> Result<Self, String>;
}

/// A backend without a medium (in memory): reopening keeps it as it is.
#[derive(Debug, Default)]
pub struct InMemory<B>(pub B);

impl<B: Backend> Subject for InMemory<B> {
    type Backend = B;
    fn backend(&mut self) -> &mut B {
        &mut self.0
    }
    fn reopen(self) -> Result<Self, String> {
        Ok(self)
    }
}

fn bucket(i: usize) -> Result<Bucket, TestCaseError> {
    Bucket::ALL.get(i).copied().ok_or_else(|| TestCaseError::fail(format!("no bucket {i}")))
}

fn ok<T>(r: Result<T, BackendError>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

/// The records of `bucket` from `from` as `txn` scans them, stopping after `limit`.
fn scan<R: ReadTxn>(txn: &R, bucket: Bucket, from: &[u8], limit: Option<usize>) -> Result<Vec<Pair>, TestCaseError> {
    let mut out = Vec::new();
    let limit = limit.unwrap_or(usize::MAX);
    let mut visit = |k: &[u8], v: &[u8]| {
        if out.len() >= limit {
            return ControlFlow::Break(());
        }
        out.push((k.to_vec(), v.to_vec()));
        if out.len() >= limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    ok(txn.scan(bucket, from, &mut visit), "scan")?;
    Ok(out)
}

/// Every bucket of `backend`, as a read transaction sees it, equals `model`.
fn check_all<B: Backend>(backend: &B, model: &Model, after: &str) -> Result<(), TestCaseError> {
    let read = ok(backend.read(), "beginning a read transaction")?;
    for b in Bucket::ALL {
        let got = scan(&read, b, &[], None)?;
        prop_assert_eq!(got, model.scan(b, &[], None), "bucket {} after {}", b.name(), after);
    }
    Ok(())
}

/// Runs `steps` against `subject` and a [`Model`]: every get, delete result and range read in a
/// transaction equals the model's with the transaction's own writes; after every commit, abort
/// and reopen every bucket equals the committed model.
///
/// Returns the subject, for checks of the medium after the sequence.
///
/// # Errors
/// The first difference, or a backend error (the sequences stay within every capacity the
/// caller's [`Shape`] is chosen for).
pub fn check<S: Subject>(mut subject: S, steps: &[Step]) -> Result<S, TestCaseError> {
    let mut committed = Model::default();
    let mut steps = steps.iter().peekable();
    while steps.peek().is_some() {
        let mut staged = committed.clone();
        let backend = subject.backend();
        let mut txn = ok(backend.write(), "beginning a write transaction")?;
        let mut end = &Step::Abort;
        for s in steps.by_ref() {
            match s {
                Step::Put(b, k, v) => {
                    let b = bucket(*b)?;
                    ok(txn.put(b, k, v), "put")?;
                    staged.put(b, k, v);
                }
                Step::Delete(b, k) => {
                    let b = bucket(*b)?;
                    let existed = ok(txn.delete(b, k), "delete")?;
                    prop_assert_eq!(existed, staged.delete(b, k), "delete {} {:?}", b.name(), k);
                }
                Step::Clear(b) => {
                    let b = bucket(*b)?;
                    ok(txn.clear(b), "clear")?;
                    staged.clear(b);
                }
                Step::Get(b, k) => {
                    let b = bucket(*b)?;
                    let mut got = None;
                    let found = ok(txn.get(b, k, &mut |v| got = Some(v.to_vec())), "get")?;
                    let want = staged.get(b, k);
                    prop_assert_eq!(found, want.is_some(), "get {} {:?}", b.name(), k);
                    prop_assert_eq!(got.as_deref(), want, "get {} {:?}", b.name(), k);
                }
                Step::Scan(b, from, limit) => {
                    let b = bucket(*b)?;
                    let got = scan(&txn, b, from, *limit)?;
                    prop_assert_eq!(got, staged.scan(b, from, *limit), "scan {} from {:?}", b.name(), from);
                }
                Step::Commit | Step::Abort | Step::Reopen => {
                    end = s;
                    break;
                }
            }
        }
        match end {
            Step::Commit => {
                ok(txn.commit(), "commit")?;
                committed = staged;
                check_all(subject.backend(), &committed, "a commit")?;
            }
            Step::Reopen => {
                drop(txn);
                subject = subject.reopen().map_err(TestCaseError::fail)?;
                check_all(subject.backend(), &committed, "a reopen")?;
            }
            _ => {
                drop(txn);
                check_all(subject.backend(), &committed, "an abort")?;
            }
        }
    }
    Ok(subject)
}
