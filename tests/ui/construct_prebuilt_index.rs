// Making up the key index the lessor phase hands to the key-index phase: only
// `IndexBound::restore_lease_prebuilt` makes a `PrebuiltIndex`, from a `Prebuilt` built from the
// snapshot's backend.
use snapply_core::collections::Growable;
use snapply_core::pipeline::PrebuiltIndex;
use snapply_core::store::{KvStore, Lessor};

fn main() {
    let _ = PrebuiltIndex::<Growable> {
        index: 7,
        sha256: [0; 32],
        attached: Lessor::new(1),
        kv: KvStore::default(),
    };
}
