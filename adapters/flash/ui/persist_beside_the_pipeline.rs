// Persisting a snapshot without the pipeline's ticket: a persist beside a running node erases
// the area that is not committed, which after a flip is the area the node still runs on. Only
// the `SnapshotStore` port persists, and only the pipeline can call it.
use std::cell::RefCell;

use snapply_core::{ImageData, SnapshotMetadata};
use snapply_flash::FlashSnapshotStore;
use snapply_flash::mock::MockFlash;

fn main() {
    let chip = RefCell::new(MockFlash::<4, 4096>::new(4));
    let indexes = snapply_flash::Indexes::new();
    let mut buf = vec![0u8; 4096];
    let mut store = FlashSnapshotStore::<_, 64, 256>::new(&chip, &indexes, 0..4 * 4096, &mut buf).unwrap();
    let _ = store.persist_snapshot(&SnapshotMetadata::default(), ImageData::Bytes(&[]));
}
