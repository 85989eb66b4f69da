// Installing a pre-built key index before the lessor: the key-index phase with a pre-built
// index is a transition of `LeaseRestored` only, so it cannot run on `IndexBound`.
use snapply_core::collections::Profile;
use snapply_core::pipeline::{IndexBound, PrebuiltIndex};
use snapply_core::ports::SnapshotStore;

pub fn skip<'n, P: Profile, S: SnapshotStore>(bound: IndexBound<'n, P, S>, index: PrebuiltIndex<P>) {
    let _ = bound.restore_mvcc_prebuilt(index);
}

fn main() {}
