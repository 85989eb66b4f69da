//! snapply's half of the side-by-side with etcd (`cargo xtask bench --etcd`).
//!
//! `beside_etcd image <keys> <value bytes> <out>`: writes the image of a leader holding `keys`
//! keys `/bench/key-<i>` of `value bytes` bytes each (the data the etcd scenario loads).
//!
//! `beside_etcd restore <image>`: restores it on a fresh data directory through the async
//! driver, the image streamed from its file, and prints one line:
//! `snapply keys=<n> image_bytes=<n> apply_us=<persisted -> Applied>
//! first_byte_us=<first byte -> Applied> peak_rss_kib=<VmHWM>`. The process does nothing else, so
//! its peak RSS is the restore's.

use std::path::PathBuf;
use std::time::Instant;

use snapply_core::NoObserver;
use snapply_core::backend::Backend;
use snapply_core::collections::Growable;
use snapply_core::image::{self, Source};
use snapply_core::mem::VecBackend;
use snapply_core::memports::PeerTable;
use snapply_core::store::V2Deprecation;
use snapply_core::{Config, Node, Request};
use snapply_fs::{AsyncNode, DataDir, FsSnapshotStore, persist_file_for_apply};

type Error = Box<dyn std::error::Error>;

fn config(id: u64) -> Config {
    Config { id, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["image", keys, value, out] => write_image(keys.parse()?, value.parse()?, &PathBuf::from(out)),
        ["restore", image] => restore(PathBuf::from(image)),
        _ => Err("usage: beside_etcd image <keys> <value bytes> <out> | beside_etcd restore <image>".into()),
    }
}

fn write_image(keys: u64, value_len: usize, out: &std::path::Path) -> Result<(), Error> {
    let mut leader = Node::<VecBackend, Growable>::new(config(1), VecBackend::new());
    let value = vec![b'v'; value_len];
    for i in 0..keys {
        let key = format!("/bench/key-{i:08}");
        leader.apply(i + 1, 2, &Request::Put { key: key.as_bytes(), value: &value, lease: 0 })?;
    }
    let metadata = leader.snapshot_metadata()?;
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2)?;
    let mut bytes = Vec::new();
    image::encode(&metadata, &leader.backend().read()?, &v2, &mut bytes)?;
    std::fs::write(out, &bytes)?;
    Ok(())
}

/// An image source on a buffered file.
struct FileSource(std::io::BufReader<std::fs::File>);

impl Source for FileSource {
    type Error = std::io::Error;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        std::io::Read::read(&mut self.0, buf)
    }
}

fn restore(image_path: PathBuf) -> Result<(), Error> {
    let image_bytes = std::fs::metadata(&image_path)?.len();
    // The metadata travels beside the image in raft's message; here it is read from the image
    // itself, streamed, before the clock starts.
    let mut buf = vec![0; image::MIN_BUFFER];
    let file = std::fs::File::open(&image_path)?;
    let (metadata, summary) = image::verify(FileSource(std::io::BufReader::new(file)), &mut buf)
        .map_err(|e| format!("reading the image's metadata: {e:?}"))?;

    let root = tempfile::tempdir_in(image_path.parent().unwrap_or(std::path::Path::new(".")))?;
    let dir = DataDir::open(root.path())?;
    let boot = dir.boot()?;
    let node = Node::new(config(2), boot.backend);
    let driver = AsyncNode::new(node, FsSnapshotStore::new(dir.clone()), PeerTable::<Growable>::default(), NoObserver);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build()?;
    let (first_byte, apply) = rt.block_on(async {
        let start = Instant::now();
        let persisted = persist_file_for_apply(dir, metadata.clone(), image_path, config(2)).await?;
        let durable = Instant::now();
        driver.apply_snapshot(metadata, async { Ok(persisted) }).await?.ok_or("the snapshot was empty")?;
        Ok::<_, Error>((start.elapsed(), durable.elapsed()))
    })?;
    println!(
        "snapply records={} image_bytes={image_bytes} apply_us={} first_byte_us={} peak_rss_kib={}",
        summary.records,
        apply.as_micros(),
        first_byte.as_micros(),
        peak_rss_kib().unwrap_or(0)
    );
    Ok(())
}

/// This process's peak resident set size (`VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
