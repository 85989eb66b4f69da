// Recovering the lessor outside the pipeline, with a consistent index that is not bound to the
// backend it commits to (etcd #13922): recovery is reachable only through `restore_lease`.
use snapply_core::collections::Growable;
use snapply_core::mem::VecBackend;
use snapply_core::store::{ConsistentIndex, Lessor};

fn main() {
    let mut backend = VecBackend::new();
    let mut lessor = Lessor::<Growable>::new(5);
    let _ = lessor.recover_into(&mut backend, 5, &ConsistentIndex::default());
}
