// Retrying a failed phase on the same state: the failed call consumed it; a retry restarts from
// `Validated::new` (use of moved value).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::SnapshotStore;

fn retry<'n, P: Profile, S: SnapshotStore>(state: Persisted<'n, P, S>) {
    if state.open_backend().is_err() {
        let _ = state.open_backend();
    }
}

fn main() {}
