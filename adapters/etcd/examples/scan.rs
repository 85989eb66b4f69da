//! Reads a whole etcd snapshot and reports what it holds and how fast it was read.
//!
//! ```sh
//! cargo run --release -p snapply-etcd --example scan -- snapshot.db
//! ```

use std::process::ExitCode;
use std::time::Instant;

use snapply_etcd::{EtcdSnapshot, Options};

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: scan <snapshot.db>");
        return ExitCode::FAILURE;
    };
    match scan(path.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scan(path: &std::path::Path) -> Result<(), snapply_etcd::Error> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mb = size as f64 / 1e6;

    let start = Instant::now();
    let file = std::fs::File::open(path).map_err(|source| snapply_etcd::Error::Open { path: path.into(), source })?;
    let snap = EtcdSnapshot::from_source(file, Options::default())?;
    let opened = start.elapsed();

    let walk = Instant::now();
    let (mut revisions, mut tombstones, mut bytes) = (0u64, 0u64, 0u64);
    for item in snap.revisions() {
        let (rev, kv) = item?;
        revisions += 1;
        tombstones += u64::from(rev.tombstone);
        bytes += (kv.key.len() + kv.value.len()) as u64;
    }
    let meta = snap.meta()?;
    let leases = snap.leases()?.len();
    let users = snap.users()?.len();
    let roles = snap.roles()?.len();
    let members = snap.members()?.len();
    let walked = walk.elapsed();

    println!("file            {size} bytes, digest {:?}", snap.digest());
    println!("layout          {:?}, consistent index {:?}", meta.layout(), meta.consistent_index);
    println!("revisions       {revisions} ({tombstones} tombstones), {bytes} bytes of keys and values");
    println!("leases {leases}, users {users}, roles {roles}, members {members}");
    println!("open + SHA-256  {:.1} ms ({:.0} MB/s)", opened.as_secs_f64() * 1e3, mb / opened.as_secs_f64());
    println!(
        "walk + decode   {:.1} ms: {:.0} revisions/s, {:.0} MB/s of file",
        walked.as_secs_f64() * 1e3,
        revisions as f64 / walked.as_secs_f64(),
        mb / walked.as_secs_f64()
    );
    let total = start.elapsed().as_secs_f64();
    println!(
        "total           {:.1} ms: {:.0} revisions/s, {:.0} MB/s",
        total * 1e3,
        revisions as f64 / total,
        mb / total
    );
    Ok(())
}
