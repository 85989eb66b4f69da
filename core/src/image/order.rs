//! The bucket-then-key order of records, checked by the encoder and the decoder alike.

use super::MAX_KEY_LEN;
use crate::backend::Bucket;

// `Bucket::ALL` is the order images store buckets in, and the order check compares bucket ids;
// the two agree only while `ALL` lists the buckets by increasing id. Evaluated at compile time,
// where an index out of bounds is a build error, not a panic.
#[allow(clippy::indexing_slicing)]
const _: () = {
    let mut i = 1;
    while i < Bucket::ALL.len() {
        assert!(Bucket::ALL[i - 1].id() < Bucket::ALL[i].id());
        i += 1;
    }
};

/// Where a record falls relative to the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Strictly after: the only acceptable answer.
    After,
    /// Same bucket and key.
    Duplicate,
    /// Before.
    Before,
}

/// The last record admitted: its bucket id and a copy of its key. A fixed array, so the check
/// costs the same stack whatever the image holds.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    last: Option<u8>,
    len: usize,
    key: [u8; MAX_KEY_LEN],
}

impl Order {
    pub(crate) const fn new() -> Self {
        Order { last: None, len: 0, key: [0; MAX_KEY_LEN] }
    }

    /// Admits `(bucket, key)` if it sorts strictly after the previous record. The caller has
    /// checked `key.len() <= MAX_KEY_LEN`; a longer key is refused as [`Verdict::Before`].
    pub(crate) fn admit(&mut self, bucket: Bucket, key: &[u8]) -> Verdict {
        let id = bucket.id();
        if let Some(last) = self.last {
            let previous = self.key.get(..self.len).unwrap_or(&[]);
            match (last, previous).cmp(&(id, key)) {
                core::cmp::Ordering::Less => {}
                core::cmp::Ordering::Equal => return Verdict::Duplicate,
                core::cmp::Ordering::Greater => return Verdict::Before,
            }
        }
        let Some(slot) = self.key.get_mut(..key.len()) else {
            return Verdict::Before;
        };
        slot.copy_from_slice(key);
        self.len = key.len();
        self.last = Some(id);
        Verdict::After
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_bucket_then_key() {
        let mut order = Order::new();
        assert_eq!(order.admit(Bucket::Key, b""), Verdict::After);
        assert_eq!(order.admit(Bucket::Key, b"a"), Verdict::After);
        assert_eq!(order.admit(Bucket::Key, b"a"), Verdict::Duplicate);
        assert_eq!(order.admit(Bucket::Key, b""), Verdict::Before);
        assert_eq!(order.admit(Bucket::Key, b"ab"), Verdict::After);
        assert_eq!(order.admit(Bucket::Key, b"b"), Verdict::After);
        assert_eq!(order.admit(Bucket::Meta, b"a"), Verdict::After);
        assert_eq!(order.admit(Bucket::Key, b"z"), Verdict::Before);
        assert_eq!(order.admit(Bucket::Cluster, b""), Verdict::After);
    }

    #[test]
    fn refuses_keys_it_cannot_remember() {
        let mut order = Order::new();
        assert_eq!(order.admit(Bucket::Key, &[0; MAX_KEY_LEN]), Verdict::After);
        assert_eq!(order.admit(Bucket::Key, &[1; MAX_KEY_LEN + 1]), Verdict::Before);
    }
}
