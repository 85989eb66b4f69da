//! A linearizability checker for histories of a key-value store whose operations are puts,
//! deletes and gets of single keys: Wing and Gong's search with Lowe's memoisation (the
//! algorithm of Knossos and porcupine), on each key's sub-history apart (a history of
//! independent registers is linearizable if and only if each register's is).
//!
//! An operation is recorded with the time it was called and the time its answer arrived. One
//! whose answer never came (a timeout, a member killed meanwhile) may have taken effect at any
//! moment after its call, or never: record it with no return time. A read that failed returned
//! nothing and is left out of the history.
//!
//! No maintained Rust crate checks linearizability on its own (`stateright` has a tester inside a
//! whole model checker); this one is small enough to read.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What an operation did, and for a read what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the key to the value (`None`: delete it).
    Write(Option<String>),
    /// Read the key and saw this value (`None`: not found).
    Read(Option<String>),
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The key it touched.
    pub key: String,
    /// What it did.
    pub action: Action,
    /// When it was called, in any unit shared by the whole history.
    pub call: u64,
    /// When its answer arrived, or `None` if it never did (the operation may or may not have
    /// taken effect). A read always has one.
    pub ret: Option<u64>,
}

/// Why a history was not shown linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// No order of `key`'s operations respects both real time and a register's behaviour: its
    /// sub-history, ordered by call time.
    NotLinearizable {
        /// The key.
        key: String,
        /// Its operations.
        operations: Vec<Operation>,
    },
    /// The search for `key` went past its step budget without an answer.
    TooComplex {
        /// The key.
        key: String,
    },
    /// A read was recorded without a return time.
    ReadWithoutReturn {
        /// The key.
        key: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, operations } => {
                writeln!(f, "the operations on key {key:?} are not linearizable:")?;
                for op in operations {
                    writeln!(f, "  {:?} called {} returned {:?}", op.action, op.call, op.ret)?;
                }
                Ok(())
            }
            Violation::TooComplex { key } => write!(f, "the history of key {key:?} is too complex to check"),
            Violation::ReadWithoutReturn { key } => write!(f, "a read of key {key:?} has no return time"),
        }
    }
}

impl std::error::Error for Violation {}

/// Checks `history`; every key starts absent. At most `budget` search steps are spent on one key.
///
/// # Errors
/// The first key whose operations are not linearizable, or could not be decided within the
/// budget.
pub fn check(history: &[Operation], budget: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.ret.is_none() && matches!(op.action, Action::Read(_)) {
            return Err(Violation::ReadWithoutReturn { key: op.key.clone() });
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_register(&ops, budget) {
            Some(true) => {}
            Some(false) => {
                let mut operations: Vec<Operation> = ops.into_iter().cloned().collect();
                operations.sort_by_key(|o| o.call);
                return Err(Violation::NotLinearizable { key: key.into(), operations });
            }
            None => return Err(Violation::TooComplex { key: key.into() }),
        }
    }
    Ok(())
}

/// One call or return event in the doubly linked list the search lifts operations out of.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call, the index of its return event.
    partner: usize,
    prev: usize,
    next: usize,
}

/// The list's sentinel, and "no event".
const HEAD: usize = 0;

/// Wing–Gong over one register: `Some(true)` if linearizable, `None` past `budget` steps.
fn check_register(ops: &[&Operation], budget: u64) -> Option<bool> {
    // Events, sorted by time; at equal times calls first, so operations that touch are taken
    // as concurrent (the permissive reading: a checker must not invent violations). An
    // operation without a return returns after everything else.
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.call, false, i));
        times.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    times.sort_unstable_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    // Slot 0 is the head sentinel; event k of `times` is slot k + 1.
    let mut events = vec![Event { op: usize::MAX, is_call: false, partner: HEAD, prev: HEAD, next: HEAD }];
    let mut return_slot = vec![0usize; ops.len()];
    for (k, &(_, is_ret, i)) in times.iter().enumerate() {
        let slot = k + 1;
        events.push(Event { op: i, is_call: !is_ret, partner: HEAD, prev: slot - 1, next: HEAD });
        if is_ret {
            *return_slot.get_mut(i)? = slot;
        }
    }
    let n = events.len();
    for slot in 0..n {
        let next = if slot + 1 < n { slot + 1 } else { HEAD };
        events.get_mut(slot)?.next = next;
    }
    events.get_mut(HEAD)?.prev = n - 1;
    for slot in 1..n {
        let e = *events.get(slot)?;
        if e.is_call {
            events.get_mut(slot)?.partner = *return_slot.get(e.op)?;
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // The calls lifted so far, with the state before each.
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut entry = events.get(HEAD)?.next;
    let mut steps = 0u64;
    while events.get(HEAD)?.next != HEAD {
        steps += 1;
        if steps > budget {
            return None;
        }
        let e = *events.get(entry)?;
        if e.is_call {
            let op = ops.get(e.op)?;
            let after = match &op.action {
                Action::Write(v) => Some(v.clone()),
                Action::Read(v) => (*v == state).then(|| state.clone()),
            };
            if let Some(after) = after {
                let word = linearized.get_mut(e.op / 64)?;
                *word |= 1 << (e.op % 64);
                if seen.insert((linearized.clone(), after.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, after)));
                    lift(&mut events, entry)?;
                    entry = events.get(HEAD)?.next;
                    continue;
                }
                let word = linearized.get_mut(e.op / 64)?;
                *word &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else {
            // A return whose call is not linearized yet: undo the last choice, or fail when
            // there is none left.
            let Some((call, before)) = stack.pop() else {
                return Some(false);
            };
            let e = *events.get(call)?;
            let word = linearized.get_mut(e.op / 64)?;
            *word &= !(1 << (e.op % 64));
            state = before;
            unlift(&mut events, call)?;
            entry = e.next;
        }
        // The walk never runs past the last event: it is a return, handled above.
    }
    Some(true)
}

/// Takes a call and its return out of the list.
fn lift(events: &mut [Event], call: usize) -> Option<()> {
    let c = *events.get(call)?;
    events.get_mut(c.prev)?.next = c.next;
    events.get_mut(c.next)?.prev = c.prev;
    let r = *events.get(c.partner)?;
    events.get_mut(r.prev)?.next = r.next;
    events.get_mut(r.next)?.prev = r.prev;
    Some(())
}

/// Puts a lifted call and its return back, in the reverse order of [`lift`].
fn unlift(events: &mut [Event], call: usize) -> Option<()> {
    let c = *events.get(call)?;
    let r = *events.get(c.partner)?;
    events.get_mut(r.prev)?.next = c.partner;
    events.get_mut(r.next)?.prev = c.partner;
    events.get_mut(c.prev)?.next = call;
    events.get_mut(c.next)?.prev = call;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, action: Action, call: u64, ret: Option<u64>) -> Operation {
        Operation { key: key.into(), action, call, ret }
    }
    fn put(v: &str, call: u64, ret: u64) -> Operation {
        op("k", Action::Write(Some(v.into())), call, Some(ret))
    }
    fn get(v: Option<&str>, call: u64, ret: u64) -> Operation {
        op("k", Action::Read(v.map(Into::into)), call, Some(ret))
    }

    const BUDGET: u64 = 1_000_000;

    #[test]
    fn sequential_histories_that_read_what_was_written_pass() {
        let h = [get(None, 0, 1), put("a", 2, 3), get(Some("a"), 4, 5), put("b", 6, 7), get(Some("b"), 8, 9)];
        assert_eq!(check(&h, BUDGET), Ok(()));
        assert_eq!(check(&[], BUDGET), Ok(()));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let old = [put("a", 0, 1), put("b", 2, 10), get(Some("a"), 3, 4)];
        let new = [put("a", 0, 1), put("b", 2, 10), get(Some("b"), 3, 4)];
        assert_eq!(check(&old, BUDGET), Ok(()));
        assert_eq!(check(&new, BUDGET), Ok(()));
        // Operations that touch in time are taken as concurrent.
        assert_eq!(check(&[put("a", 0, 5), get(None, 5, 6)], BUDGET), Ok(()));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let h = [put("a", 0, 1), put("b", 2, 3), get(Some("a"), 4, 5)];
        let Err(Violation::NotLinearizable { key, operations }) = check(&h, BUDGET) else {
            panic!("a stale read passed");
        };
        assert_eq!(key, "k");
        assert_eq!(operations.len(), 3);
        // Not found after an acknowledged put: the stale reads of a lagging follower.
        assert!(check(&[put("a", 0, 1), get(None, 2, 3)], BUDGET).is_err());
    }

    #[test]
    fn reads_that_go_backwards_are_caught_even_when_each_is_concurrent_with_a_write() {
        // Both writes overlap both reads, but once a read saw "b" a later read cannot see "a"
        // again: "b" was written after "a" took effect.
        let h = [put("a", 0, 1), put("b", 2, 20), get(Some("b"), 3, 4), get(Some("a"), 5, 6)];
        assert!(check(&h, BUDGET).is_err());
        // Two concurrent writes: the reads fix their order, and they must agree on it.
        let agree = [put("a", 0, 20), put("b", 0, 20), get(Some("a"), 1, 2), get(Some("b"), 3, 4)];
        assert_eq!(check(&agree, BUDGET), Ok(()));
        let disagree =
            [put("a", 0, 20), put("b", 0, 20), get(Some("a"), 1, 2), get(Some("b"), 3, 4), get(Some("a"), 5, 6)];
        assert!(check(&disagree, BUDGET).is_err());
    }

    #[test]
    fn a_value_never_written_is_caught() {
        assert!(check(&[put("a", 0, 1), get(Some("z"), 2, 3)], BUDGET).is_err());
    }

    #[test]
    fn a_write_without_an_answer_may_take_effect_late_or_never() {
        let pending = |call| op("k", Action::Write(Some("b".into())), call, None);
        // Seen long after it was called...
        assert_eq!(check(&[put("a", 0, 1), pending(2), get(Some("a"), 3, 4), get(Some("b"), 50, 51)], BUDGET), Ok(()));
        // ...or never.
        assert_eq!(check(&[put("a", 0, 1), pending(2), get(Some("a"), 50, 51)], BUDGET), Ok(()));
        // But not before it was called.
        assert!(check(&[put("a", 0, 1), get(Some("b"), 2, 3), pending(4)], BUDGET).is_err());
        // A read must have a return time.
        let h = [op("k", Action::Read(None), 0, None)];
        assert_eq!(check(&h, BUDGET), Err(Violation::ReadWithoutReturn { key: "k".into() }));
    }

    #[test]
    fn deletes_are_writes_of_nothing() {
        let del = |call, ret| op("k", Action::Write(None), call, Some(ret));
        assert_eq!(check(&[put("a", 0, 1), del(2, 3), get(None, 4, 5)], BUDGET), Ok(()));
        assert!(check(&[put("a", 0, 1), del(2, 3), get(Some("a"), 4, 5)], BUDGET).is_err());
    }

    #[test]
    fn keys_are_checked_apart() {
        let other = |action, call, ret| op("other", action, call, Some(ret));
        // Each key alone is linearizable: so is the whole.
        let h = [
            put("a", 0, 1),
            other(Action::Write(Some("x".into())), 2, 3),
            get(Some("a"), 4, 5),
            other(Action::Read(Some("x".into())), 6, 7),
        ];
        assert_eq!(check(&h, BUDGET), Ok(()));
        let h = [put("a", 0, 1), other(Action::Read(Some("x".into())), 2, 3)];
        let Err(Violation::NotLinearizable { key, .. }) = check(&h, BUDGET) else { panic!("passed") };
        assert_eq!(key, "other");
    }

    #[test]
    fn many_concurrent_operations_are_decided_within_a_small_budget() {
        // 10 clients, 30 rounds: each writes, the writes all concurrent, then each reads, the
        // reads concurrent with each other but after every write of the round.
        let mut h = Vec::new();
        for round in 0..30u64 {
            let t = round * 10;
            for c in 0..10u64 {
                h.push(put(&format!("{round}-{c}"), t, t + 5));
            }
            for c in 0..10u64 {
                h.push(get(Some(&format!("{round}-{}", c % 3)), t + 6, t + 8));
            }
        }
        // Linearizable only if every round's reads see the same value (the last write): they
        // do not.
        assert!(matches!(check(&h, 10_000_000), Err(Violation::NotLinearizable { .. })));
        let agree: Vec<Operation> = h
            .into_iter()
            .map(|mut o| {
                if let Action::Read(Some(v)) = &mut o.action {
                    *v = format!("{}-0", v.split('-').next().unwrap_or_default());
                }
                o
            })
            .collect();
        assert_eq!(check(&agree, 10_000_000), Ok(()));
    }

    #[test]
    fn the_budget_bounds_the_search() {
        let h = [put("a", 0, 10), put("b", 0, 10), get(Some("b"), 1, 2)];
        assert_eq!(check(&h, 1), Err(Violation::TooComplex { key: "k".into() }));
    }
}
