// Restoring the key-value store outside the pipeline, with any consistent index (etcd #13922):
// restoring is reachable only through `restore_mvcc`, after the index is bound.
use snapply_core::collections::Growable;
use snapply_core::mem::VecBackend;
use snapply_core::store::{ConsistentIndex, KvStore, Lessor};

fn main() {
    let mut backend = VecBackend::new();
    let mut lessor = Lessor::<Growable>::new(5);
    let mut kv = KvStore::<Growable>::default();
    let _ = kv.restore_into(&mut backend, &mut lessor, &ConsistentIndex::default());
}
