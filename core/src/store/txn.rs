//! etcd's transactions (`TxnRequest`): compares on keys, then the success or the failure ops,
//! all in one write transaction of the key-value store (one main revision, a sub revision per
//! change), with nested transactions.
//!
//! As etcd's `applyTxn` does, every compare, nested ones included, is evaluated on the store as
//! it was before the transaction (etcd computes the whole branch path on a read view first):
//! here a compare reads at the revision the store had when the transaction began, which the
//! transaction's own changes (all at the next revision) are above.
//!
//! Nested transactions are not nested values: a [`Txn`] is a table of [`TxnNode`]s, the first one
//! the top, and a nested transaction is an op naming a later node ([`TxnOp::Txn`]). A table
//! borrows flat slices, so a decoder that owns a request builds it without recursion, and a node
//! may only name a later one, so evaluation always ends. Nesting is bounded by
//! [`MAX_TXN_DEPTH`], so the stack an evaluation takes is too.

use super::StoreError;
use super::kv::{Change, KeyValue, KvStore};
use super::lease::{LeaseId, Lessor};
use crate::backend::{ReadTxn, WriteTxn};
use crate::collections::Profile;

/// Deepest nesting of transactions a request may have (the top transaction is depth 1). etcd
/// has no such limit; it bounds the stack a device spends on one request.
pub const MAX_TXN_DEPTH: usize = 16;

/// How a compare's target is compared with the key's (etcd's `Compare.CompareResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CompareResult {
    /// The key's is equal to the target.
    Equal,
    /// The key's is greater than the target.
    Greater,
    /// The key's is less than the target.
    Less,
    /// The key's is not equal to the target.
    NotEqual,
}

/// What of a key is compared, with the value it is compared to (etcd's `Compare.target_union`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareTarget<'a> {
    /// The key's version (0 for a key that does not exist).
    Version(i64),
    /// The key's create revision (0 for a key that does not exist).
    CreateRevision(i64),
    /// The key's mod revision (0 for a key that does not exist).
    ModRevision(i64),
    /// The key's value, compared byte by byte (false for a key that does not exist).
    Value(&'a [u8]),
    /// The key's lease (0 for none, or for a key that does not exist).
    Lease(LeaseId),
}

/// One compare of a transaction (etcd's `Compare`): true when every key in
/// `[key, range_end)` compares as `result` says (`range_end` empty: just `key`; `[0]`: every key
/// from `key` on). Where no key is in the range, a key with every field 0 is compared instead,
/// and a value compare is false, as etcd's `applyCompare` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compare<'a> {
    /// The key, or the start of the range.
    pub key: &'a [u8],
    /// The end of the range (see above).
    pub range_end: &'a [u8],
    /// How the key's field must compare with the target.
    pub result: CompareResult,
    /// The field compared and the value it is compared with.
    pub target: CompareTarget<'a>,
}

/// One op of a transaction's branch (etcd's `RequestOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOp<'a> {
    /// A range read: it changes nothing; its result is the reader's to compute (see
    /// [`KvStore::txn_path`]).
    Range {
        /// The key or start of the range.
        key: &'a [u8],
        /// The end of the range.
        range_end: &'a [u8],
    },
    /// Put `value` under `key`, attached to `lease` (0 for none).
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// The lease, 0 for none.
        lease: LeaseId,
    },
    /// Delete every key in `[key, range_end)` (empty `range_end`: just `key`).
    DeleteRange {
        /// The key or start of the range.
        key: &'a [u8],
        /// The end of the range.
        range_end: &'a [u8],
    },
    /// The nested transaction at this index of the table ([`Txn::nodes`]); it must be after the
    /// node holding this op.
    Txn(u32),
}

/// One transaction of a table: its compares and its two branches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnNode<'a> {
    /// Compares, all of which must hold for `success` to run.
    pub compare: &'a [Compare<'a>],
    /// The ops run when every compare holds.
    pub success: &'a [TxnOp<'a>],
    /// The ops run otherwise.
    pub failure: &'a [TxnOp<'a>],
}

/// A transaction with its nested ones: `nodes[0]` is the top transaction (see the module's
/// docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Txn<'a> {
    /// The transactions, the top one first.
    pub nodes: &'a [TxnNode<'a>],
}

impl<'a> Txn<'a> {
    /// The top transaction, or an error for an empty table.
    fn top(&self) -> Result<&'a TxnNode<'a>, StoreError> {
        self.nodes.first().ok_or(StoreError::InvalidRequest("a transaction without its top node"))
    }

    /// The nested transaction `child` names from node `parent`.
    fn child(&self, parent: usize, child: u32) -> Result<(usize, &'a TxnNode<'a>), StoreError> {
        let child = usize::try_from(child).unwrap_or(usize::MAX);
        if child <= parent {
            return Err(StoreError::InvalidRequest("a nested transaction must come after the one holding it"));
        }
        let node = self.nodes.get(child).ok_or(StoreError::InvalidRequest("a nested transaction out of the table"))?;
        Ok((child, node))
    }

    /// Whether the transaction writes anything on either branch, nested ones included (etcd's
    /// `isTxnReadonly`, negated): a read-only transaction makes no revision whatever it takes.
    pub fn writes(&self) -> bool {
        self.nodes
            .iter()
            .flat_map(|n| n.success.iter().chain(n.failure.iter()))
            .any(|op| matches!(op, TxnOp::Put { .. } | TxnOp::DeleteRange { .. }))
    }

    /// Whether any branch puts a key (what etcd's NOSPACE alarm refuses: `applierV3Capped.Txn`).
    pub fn puts(&self) -> bool {
        self.nodes
            .iter()
            .flat_map(|n| n.success.iter().chain(n.failure.iter()))
            .any(|op| matches!(op, TxnOp::Put { .. }))
    }
}

fn compare_kv(c: &Compare<'_>, kv: &KeyValue<'_>) -> bool {
    let ord = match c.target {
        CompareTarget::Version(v) => kv.version.cmp(&v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(&v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(&v),
        CompareTarget::Value(v) => kv.value.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(&v),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::NotEqual => ord.is_ne(),
    }
}

impl<P: Profile> KvStore<P> {
    /// Whether `compare` holds at revision `at` (0 = current).
    ///
    /// # Errors
    /// As [`KvStore::range`].
    pub fn compare<R: ReadTxn + ?Sized>(&self, txn: &R, compare: &Compare<'_>, at: i64) -> Result<bool, StoreError> {
        let (mut any, mut all) = (false, true);
        self.range(txn, compare.key, compare.range_end, at, &mut |kv| {
            any = true;
            all = all && compare_kv(compare, kv);
        })?;
        if any {
            return Ok(all);
        }
        if let CompareTarget::Value(_) = compare.target {
            return Ok(false);
        }
        let none = KeyValue { key: compare.key, create_revision: 0, mod_revision: 0, version: 0, value: &[], lease: 0 };
        Ok(compare_kv(compare, &none))
    }

    /// Calls `f` with each transaction `txn` runs, in the order it runs them (the top one first,
    /// then each nested one where its op comes), with whether its compares held: etcd's
    /// `compareToPath`, evaluated at revision `at` (0 = current), as the apply evaluates them.
    /// What a client API answers a transaction with (`succeeded`, and which branch's responses)
    /// comes from this, read just before the transaction is applied.
    ///
    /// # Errors
    /// As [`KvStore::range`]; [`StoreError::InvalidRequest`] for a malformed table or one nested
    /// deeper than [`MAX_TXN_DEPTH`].
    pub fn txn_path<R: ReadTxn + ?Sized>(
        &self,
        txn: &R,
        request: &Txn<'_>,
        at: i64,
        f: &mut dyn FnMut(&TxnNode<'_>, bool),
    ) -> Result<(), StoreError> {
        let at = if at <= 0 { self.current_revision() } else { at };
        self.path_of(txn, request, 0, request.top()?, at, 1, f)
    }

    #[allow(clippy::too_many_arguments)]
    fn path_of<R: ReadTxn + ?Sized>(
        &self,
        txn: &R,
        request: &Txn<'_>,
        index: usize,
        node: &TxnNode<'_>,
        at: i64,
        depth: usize,
        f: &mut dyn FnMut(&TxnNode<'_>, bool),
    ) -> Result<(), StoreError> {
        if depth > MAX_TXN_DEPTH {
            return Err(StoreError::InvalidRequest("transactions nested deeper than 16"));
        }
        let mut holds = true;
        for c in node.compare {
            if !self.compare(txn, c, at)? {
                holds = false;
                break;
            }
        }
        f(node, holds);
        for op in if holds { node.success } else { node.failure } {
            if let TxnOp::Txn(child) = *op {
                let (i, child) = request.child(index, child)?;
                self.path_of(txn, request, i, child, at, depth + 1, f)?;
            }
        }
        Ok(())
    }

    /// Applies `request` in one write transaction of the store: every compare evaluated on the
    /// store as it was before, then the taken branches' puts and deletes, each at the next sub
    /// revision of one new main revision (none if nothing changed). Range ops change nothing.
    pub(crate) fn apply_txn<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        request: &Txn<'_>,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let at = self.current_revision();
        let mut change = Change::begin(self)?;
        self.run_node(txn, lessor, request, 0, request.top()?, at, 1, &mut change, scratch)?;
        self.end(change);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_node<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        request: &Txn<'_>,
        index: usize,
        node: &TxnNode<'_>,
        at: i64,
        depth: usize,
        change: &mut Change,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if depth > MAX_TXN_DEPTH {
            return Err(StoreError::InvalidRequest("transactions nested deeper than 16"));
        }
        let mut holds = true;
        for c in node.compare {
            if !self.compare(&*txn, c, at)? {
                holds = false;
                break;
            }
        }
        for op in if holds { node.success } else { node.failure } {
            match *op {
                TxnOp::Range { .. } => {}
                TxnOp::Put { key, value, lease } => self.put_in(txn, lessor, key, value, lease, change, scratch)?,
                TxnOp::DeleteRange { key, range_end } => {
                    self.delete_in(txn, lessor, key, range_end, change, scratch)?;
                }
                TxnOp::Txn(child) => {
                    let (i, child) = request.child(index, child)?;
                    self.run_node(txn, lessor, request, i, child, at, depth + 1, change, scratch)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[cfg(feature = "alloc")]
mod tests {
    use super::*;
    use crate::Request;
    use crate::backend::Backend;
    use crate::node::tests::{Got, TestNode, apply, node};
    use crate::store::{Alarm, AlarmType};
    use std::vec::Vec;

    fn put<'a>(key: &'a [u8], value: &'a [u8]) -> TxnOp<'a> {
        TxnOp::Put { key, value, lease: 0 }
    }

    fn value_is<'a>(key: &'a [u8], value: &'a [u8]) -> Compare<'a> {
        Compare { key, range_end: &[], result: CompareResult::Equal, target: CompareTarget::Value(value) }
    }

    /// Value, create revision, mod revision, version and lease of `key` now.
    fn get(n: &TestNode, key: &[u8]) -> Option<Got> {
        crate::node::tests::get(n, key, 0).unwrap()
    }

    fn txn<'a>(nodes: &'a [TxnNode<'a>]) -> Request<'a> {
        Request::Txn(Txn { nodes })
    }

    /// The branch the compares pick runs, its changes all in one new revision (sub revisions in
    /// order), and the other branch does not.
    #[test]
    fn the_branch_the_compares_pick_runs_in_one_revision() {
        let mut n = node();
        apply(&mut n, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
        let success = [put(b"b", b"yes"), put(b"c", b"yes"), TxnOp::DeleteRange { key: b"a", range_end: &[] }];
        let failure = [put(b"b", b"no")];
        let compare = [value_is(b"a", b"1")];
        let nodes = [TxnNode { compare: &compare, success: &success, failure: &failure }];
        assert_eq!(apply(&mut n, &txn(&nodes)), Ok(3), "one revision for three changes");
        assert_eq!(get(&n, b"b"), Some((b"yes".to_vec(), 3, 3, 1, 0)));
        assert_eq!(get(&n, b"c"), Some((b"yes".to_vec(), 3, 3, 1, 0)));
        assert_eq!(get(&n, b"a"), None);
        let revs: Vec<(i64, i64)> =
            n.stores().kv.entries().filter(|e| e.1.main == 3).map(|e| (e.1.main, e.1.sub)).collect();
        assert_eq!(revs.len(), 3);
        assert!(revs.contains(&(3, 0)) && revs.contains(&(3, 1)) && revs.contains(&(3, 2)), "{revs:?}");

        // Now `a` is gone: the value compare is false, the failure branch runs.
        assert_eq!(apply(&mut n, &txn(&nodes)), Ok(4));
        assert_eq!(get(&n, b"b"), Some((b"no".to_vec(), 3, 4, 2, 0)));
    }

    /// A key that does not exist compares as a key with every field 0, but a value compare on it
    /// is false (etcd's `applyCompare`); a range compare holds only if every key in it does.
    #[test]
    fn compares_on_missing_keys_and_ranges_follow_etcd() {
        let mut n = node();
        apply(&mut n, &Request::Put { key: b"k1", value: b"x", lease: 0 }).unwrap();
        apply(&mut n, &Request::Put { key: b"k2", value: b"y", lease: 0 }).unwrap();
        let txn_store = n.backend().read().unwrap();
        let kv = &n.stores().kv;
        let c =
            |key: &'static [u8], range_end: &'static [u8], result, target| Compare { key, range_end, result, target };
        use CompareResult::*;
        use CompareTarget::*;
        let cases = [
            (c(b"none", &[], Equal, Version(0)), true),
            (c(b"none", &[], Equal, CreateRevision(0)), true),
            (c(b"none", &[], Equal, Lease(0)), true),
            (c(b"none", &[], Equal, Value(b"")), false),
            (c(b"none", &[], NotEqual, Value(b"x")), false),
            (c(b"k1", &[], Equal, Value(b"x")), true),
            (c(b"k1", &[], Greater, Value(b"w")), true),
            (c(b"k1", &[], Less, ModRevision(3)), true),
            (c(b"k2", &[], Equal, ModRevision(3)), true),
            (c(b"k", b"l", Greater, Version(0)), true),
            (c(b"k", b"l", Equal, Value(b"x")), false),
            (c(b"k", &[0], Less, CreateRevision(4)), true),
        ];
        for (compare, expected) in cases {
            assert_eq!(kv.compare(&txn_store, &compare, 0), Ok(expected), "{compare:?}");
        }
    }

    /// Every compare, nested ones included, reads the store as it was before the transaction:
    /// a nested compare on a key the outer branch just changed sees the old value. `txn_path`
    /// reports the same path the apply takes.
    #[test]
    fn nested_compares_read_the_store_before_the_transaction() {
        let mut n = node();
        apply(&mut n, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
        let top_success = [put(b"a", b"2"), TxnOp::Txn(1)];
        let nested_compare = [value_is(b"a", b"1")];
        let nested_success = [put(b"seen", b"old")];
        let nested_failure = [put(b"seen", b"new")];
        let nodes = [
            TxnNode { compare: &[], success: &top_success, failure: &[] },
            TxnNode { compare: &nested_compare, success: &nested_success, failure: &nested_failure },
        ];
        let mut path = Vec::new();
        n.stores()
            .kv
            .txn_path(&n.backend().read().unwrap(), &Txn { nodes: &nodes }, 0, &mut |node, holds| {
                path.push((node.success.len(), holds))
            })
            .unwrap();
        assert_eq!(path, [(2, true), (1, true)]);
        assert_eq!(apply(&mut n, &txn(&nodes)), Ok(3));
        assert_eq!(get(&n, b"a").map(|g| g.0), Some(b"2".to_vec()));
        assert_eq!(get(&n, b"seen").map(|g| g.0), Some(b"old".to_vec()));
    }

    /// A transaction that changes nothing (ranges only, or a branch without ops) makes no
    /// revision, as etcd's `storeTxnWrite.End` does.
    #[test]
    fn a_transaction_that_changes_nothing_makes_no_revision() {
        let mut n = node();
        apply(&mut n, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
        let success = [TxnOp::Range { key: b"a", range_end: &[] }];
        let nodes = [TxnNode { compare: &[], success: &success, failure: &[] }];
        assert!(!Txn { nodes: &nodes }.writes());
        assert_eq!(apply(&mut n, &txn(&nodes)), Ok(2));
        assert_eq!(n.progress().applied_index, 2, "the entry is applied all the same");
    }

    /// A put with a lease that does not exist refuses the whole transaction: nothing of it is
    /// applied, not even the changes before it, and the entry still moves the applied index.
    #[test]
    fn a_refused_op_refuses_the_whole_transaction() {
        let mut n = node();
        let success = [put(b"first", b"1"), TxnOp::Put { key: b"second", value: b"2", lease: 99 }];
        let nodes = [TxnNode { compare: &[], success: &success, failure: &[] }];
        let before = n.stores().clone();
        assert_eq!(apply(&mut n, &txn(&nodes)), Err(StoreError::NotFound("lease")));
        assert_eq!(n.stores().kv, before.kv);
        assert_eq!(get(&n, b"first"), None);
        assert_eq!(n.progress().applied_index, 1);
    }

    /// A malformed table (a nested transaction named backwards or out of the table) and nesting
    /// deeper than `MAX_TXN_DEPTH` are refused as invalid requests, changing nothing.
    #[test]
    fn malformed_or_too_deep_transactions_are_refused() {
        let mut n = node();
        let backwards = [put(b"x", b"1"), TxnOp::Txn(0)];
        let nodes = [TxnNode { compare: &[], success: &backwards, failure: &[] }];
        assert!(matches!(apply(&mut n, &txn(&nodes)), Err(StoreError::InvalidRequest(_))));
        let outside = [TxnOp::Txn(5)];
        let nodes = [TxnNode { compare: &[], success: &outside, failure: &[] }];
        assert!(matches!(apply(&mut n, &txn(&nodes)), Err(StoreError::InvalidRequest(_))));
        assert!(matches!(apply(&mut n, &txn(&[])), Err(StoreError::InvalidRequest(_))));

        // A chain of nested transactions, each naming the next: 16 deep is taken, 17 is not.
        let ops: Vec<[TxnOp<'_>; 2]> =
            (0..MAX_TXN_DEPTH as u32 + 1).map(|i| [put(b"deep", b"v"), TxnOp::Txn(i + 1)]).collect();
        let chain = |depth: usize| -> Vec<TxnNode<'_>> {
            let mut nodes: Vec<TxnNode<'_>> =
                ops[..depth - 1].iter().map(|ops| TxnNode { compare: &[], success: &ops[..], failure: &[] }).collect();
            nodes.push(TxnNode { compare: &[], success: &ops[0][..1], failure: &[] });
            nodes
        };
        let deepest = chain(MAX_TXN_DEPTH);
        let rev = apply(&mut n, &txn(&deepest)).unwrap();
        assert_eq!(get(&n, b"deep").map(|g| (g.2, g.3)), Some((rev, MAX_TXN_DEPTH as i64)));
        let too_deep = chain(MAX_TXN_DEPTH + 1);
        assert_eq!(
            apply(&mut n, &txn(&too_deep)),
            Err(StoreError::InvalidRequest("transactions nested deeper than 16"))
        );
        assert_eq!(n.stores().kv.current_revision(), rev);
    }

    /// Under NOSPACE a transaction that puts is refused and one that only deletes is not; under
    /// CORRUPT every transaction is (etcd's capped and corrupt appliers).
    #[test]
    fn alarms_refuse_transactions_as_etcd_does() {
        let mut n = node();
        apply(&mut n, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
        apply(&mut n, &Request::AlarmActivate(Alarm { member: 1, kind: AlarmType::Nospace })).unwrap();
        let puts = [put(b"b", b"1")];
        let deletes = [TxnOp::DeleteRange { key: b"a", range_end: &[] }];
        let putting = [TxnNode { compare: &[], success: &[], failure: &puts }];
        let deleting = [TxnNode { compare: &[], success: &deletes, failure: &[] }];
        assert_eq!(apply(&mut n, &txn(&putting)), Err(StoreError::NoSpace));
        assert!(apply(&mut n, &txn(&deleting)).is_ok());
        assert_eq!(get(&n, b"a"), None);
        apply(&mut n, &Request::AlarmActivate(Alarm { member: 1, kind: AlarmType::Corrupt })).unwrap();
        assert_eq!(apply(&mut n, &txn(&deleting)), Err(StoreError::CorruptAlarm));
    }
}
