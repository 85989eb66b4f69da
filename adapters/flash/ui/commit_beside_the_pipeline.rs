// Committing a persisted snapshot without the pipeline's release ticket: the flip would make
// the snapshot's area the committed one while the node still writes to the old area, so an
// entry acknowledged after it is gone after a reboot. Only the pipeline's last phase commits.
use std::cell::RefCell;

use snapply_flash::FlashSnapshotStore;
use snapply_flash::mock::MockFlash;

fn main() {
    let chip = RefCell::new(MockFlash::<4, 4096>::new(4));
    let indexes = snapply_flash::Indexes::new();
    let mut buf = vec![0u8; 4096];
    let mut store = FlashSnapshotStore::<_, 64, 256>::new(&chip, &indexes, 0..4 * 4096, &mut buf).unwrap();
    let _ = store.commit_snapshot(7, 2, &[0; 32]);
}
