// Releasing snapshots without having applied one: only the pipeline's last phase makes a
// `ReleaseTicket`, so a made-up one cannot unpin a snapshot that waits to be applied.
use snapply_core::ports::ReleaseTicket;

fn main() {
    let _ = ReleaseTicket { index: u64::MAX, term: 1, sha256: [0; 32], _brand: std::marker::PhantomData };
}
