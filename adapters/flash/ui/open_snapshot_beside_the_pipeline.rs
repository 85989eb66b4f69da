// Opening a persisted snapshot's backend without the pipeline's proof of durability: a second
// writable backend on an area (the committed one, while it holds exactly that snapshot) that a
// node may be running on. Only the pipeline opens it, with the `Durable` its persist made.
use std::cell::RefCell;

use snapply_flash::FlashSnapshotStore;
use snapply_flash::mock::MockFlash;

fn main() {
    let chip = RefCell::new(MockFlash::<4, 4096>::new(4));
    let indexes = snapply_flash::Indexes::new();
    let mut buf = vec![0u8; 4096];
    let mut store = FlashSnapshotStore::<_, 64, 256>::new(&chip, &indexes, 0..4 * 4096, &mut buf).unwrap();
    let _ = store.open_snapshot(7, 2, &[0; 32]);
}
