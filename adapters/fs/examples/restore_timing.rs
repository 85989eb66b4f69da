//! Where a restore's time goes on a data directory: persisting (checking the image and
//! materialising `<index>.snap.db`, off the apply loop) against applying (open by rename and the
//! restore proper, what the apply loop waits for).
//!
//! `cargo run --release -p snapply-fs --example restore_timing -- [keys] [value bytes]`

use std::time::Instant;

use snapply_core::ImageData;
use snapply_core::NoObserver;
use snapply_core::collections::Growable;
use snapply_core::image;
use snapply_core::mem::VecBackend;
use snapply_core::memports::PeerTable;
use snapply_core::ports::Ports;
use snapply_core::store::V2Deprecation;
use snapply_core::{Config, Node, Request, Snapshot, apply_snapshot};
use snapply_fs::{DataDir, FsSnapshotStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let value_len: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let config = |id| Config { id, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly };

    let mut leader = Node::<VecBackend, Growable>::new(config(1), VecBackend::new());
    let value = vec![0x5a; value_len];
    for i in 0..keys {
        let key = format!("key-{i:08}");
        leader.apply(i + 1, 1, &Request::Put { key: key.as_bytes(), value: &value, lease: 0 })?;
    }
    let metadata = leader.snapshot_metadata()?;
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2)?;
    let mut bytes = Vec::new();
    image::encode(&metadata, &snapply_core::backend::Backend::read(leader.backend())?, &v2, &mut bytes)?;

    let root = tempfile::tempdir()?;
    let dir = DataDir::open(root.path())?;
    let boot = dir.boot()?;
    let mut follower = Node::<_, Growable>::new(config(2), boot.backend);
    let mut store = FsSnapshotStore::new(dir);

    let start = Instant::now();
    let info = store.persist_image(&metadata, ImageData::Bytes(&bytes))?;
    let persist = start.elapsed();

    let start = Instant::now();
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage: &mut store, transport: &mut transport, observer: &mut NoObserver };
    let outcome = apply_snapshot(&mut follower, ports, Snapshot::persisted(&metadata, info.image_sha256))?;
    let apply = start.elapsed();
    drop(outcome);

    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    println!("{keys} keys of {value_len} bytes, image {mib:.1} MiB");
    println!("persist (check + materialise + fsyncs): {persist:?}");
    println!("apply (open by rename + restore):       {apply:?}");
    Ok(())
}
