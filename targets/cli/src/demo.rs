//! `snapply demo`: a three-node raft-rs cluster on loopback, in this process, each node with its
//! own data directory in a temporary directory. One follower is cut off while the leader writes;
//! the leader snapshots its backend and compacts its raft log on its own, by its snapshot policy
//! (`--snapshot-count`, half the keys written here); once healed, the follower can only catch up
//! by the leader's snapshot, which it receives out of band, persists while it arrives and applies
//! through every phase of snapply's pipeline. The nodes' state digests are then compared.

use snapply_core::store::{Alarm, AlarmType};
use snapply_raft::RequestBuf;
use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use snapply_core::{Observer, Phase};
use snapply_raft::{Client, Cluster, Command, SnapshotPolicy, Trace};

use crate::observe::Printer;

/// Options of `snapply demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys the leader writes while the follower is cut off.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Bytes of each value.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    value_size: u32,
}

/// The exit codes of `snapply demo`, printed at the end of its `--help`. The demo reads no
/// input and keeps no data directory, so the file commands' codes 3 to 5 do not occur.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  the restored follower's state equals the leader's and the other follower's
  1  the states differ, or a step failed (the message says which)
  2  bad arguments";

/// How long the demo waits for any one step before it gives up.
const WAIT: Duration = Duration::from_secs(120);

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Proposes `commands` through `client`, 64 in flight at a time.
async fn propose_all(client: &Client, commands: Vec<Command>) -> Result<(), Box<dyn Error>> {
    // A bar on standard error for the one step that takes seconds; indicatif draws nothing when
    // standard error is not a terminal, so piped output stays plain.
    let bar = indicatif::ProgressBar::new(commands.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} entries eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("proposing");
    // Proposed in order, 64 waiting at most; the bar counts proposals (at most 64 ahead).
    client.propose_all(commands.into_iter().inspect(|_| bar.inc(1)), 64).await?;
    bar.finish_and_clear();
    Ok(())
}

/// A key space with leases, deletes, auth and an alarm, so that every store has something to
/// restore.
fn workload(args: &Args, prefix: &str) -> Vec<Command> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut commands = Vec::new();
    // The leader's lessor expires leases as etcd's does: an hour outlives any run of the demo,
    // so no put finds its lease revoked.
    for id in 1..=8 {
        commands.push(Command::Apply(RequestBuf::LeaseGrant { id, ttl: 3_600 }));
    }
    for i in 0..args.keys {
        let value: Vec<u8> = (0..args.value_size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b'a' + (seed % 26) as u8
            })
            .collect();
        let key = format!("/registry/{prefix}/pod-{i:07}").into_bytes();
        let lease = if i % 4 == 0 { i64::from(i % 8) + 1 } else { 0 };
        commands.push(Command::Apply(RequestBuf::Put { key: key.clone(), value, lease }));
        if i % 10 == 0 {
            commands.push(Command::Apply(RequestBuf::DeleteRange { key, range_end: Vec::new() }));
        }
    }
    commands
}

/// The leader snapshots after every half of the keys written, keeping a quarter of them in its
/// log for followers a little behind: the cut-off follower falls further behind than that.
fn policy(args: &Args) -> SnapshotPolicy {
    let count = u64::from(args.keys).div_ceil(2);
    SnapshotPolicy { count, catchup_entries: count / 2, ..SnapshotPolicy::default() }
}

async fn demo(args: &Args) -> Result<bool, Box<dyn Error>> {
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let cluster = Cluster::start_with(root.path(), 3, policy(args))?;
    let result = scenario(args, root.path(), &cluster, started).await;
    // Stop every node before the runtime goes, also when a step failed.
    cluster.shutdown().await;
    println!("total {}", ms(started.elapsed()));
    result
}

async fn scenario(args: &Args, root: &Path, cluster: &Cluster, started: Instant) -> Result<bool, Box<dyn Error>> {
    let leader = cluster.leader(WAIT).await?;
    println!(
        "3-node raft-rs cluster on loopback, data directories in {}: leader {leader:016x} elected in {}",
        root.display(),
        ms(started.elapsed())
    );
    let client = cluster.node(leader)?.client();
    propose_all(
        client,
        vec![
            Command::Apply(RequestBuf::UserAdd {
                name: b"root".to_vec(),
                password_hash: b"$2a$10$rootpasswordhash".to_vec(),
                no_password: false,
            }),
            Command::Apply(RequestBuf::RoleAdd { name: b"root".to_vec() }),
            Command::Apply(RequestBuf::UserGrantRole { user: b"root".to_vec(), role: b"root".to_vec() }),
            Command::Apply(RequestBuf::AuthSetEnabled(true)),
        ],
    )
    .await?;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("the cluster has no follower")?;

    let t = Instant::now();
    cluster.node(follower)?.client().isolate(true).await?;
    println!("follower {follower:016x} cut off from the network");
    let commands = workload(args, "pods");
    let n = commands.len();
    propose_all(client, commands).await?;
    propose_all(
        client,
        vec![Command::Apply(RequestBuf::AlarmActivate(Alarm { member: leader, kind: AlarmType::Nospace }))],
    )
    .await?;
    println!(
        "leader wrote {n} entries ({} keys, {} bytes per value) in {}",
        args.keys,
        args.value_size,
        ms(t.elapsed())
    );

    let lagging = cluster.node(follower)?.client().status().await?.applied_index;
    let (compacted, first) = leader_compacted_past(cluster, leader, lagging).await?;
    println!(
        "leader snapshotted its backend at index {compacted} on its own (snapshot count {}) and compacted its raft log to start at {first}; the follower is at index {lagging}",
        policy(args).count
    );

    let healed = Instant::now();
    cluster.node(follower)?.client().isolate(false).await?;
    println!("follower healed; the leader sends its snapshot:");
    let status = cluster.wait_applied(follower, compacted, WAIT).await?;
    let Some(restore) = status.last_restore else {
        return Err(format!("the follower caught up without a snapshot: {status:?}").into());
    };
    let mut printer = Printer::new();
    for step in &restore.trace {
        match *step {
            Trace::Event(e) => printer.event(&e),
            Trace::InProgress(on) => printer.in_progress(on),
            Trace::PhaseDone(phase, took) => printer.phase_done(phase, u64::try_from(took.as_micros()).ok()),
            _ => {}
        }
    }
    let apply: Duration = restore.phases.iter().filter(|(p, _)| *p > Phase::Persist).map(|(_, d)| *d).sum();
    println!(
        "follower {follower:016x} restored by snapshot at index {} term {} ({} bytes of image): heal to Applied {}, of which the apply (persisted -> Applied) {}",
        restore.index,
        restore.term,
        restore.image_bytes,
        ms(restore.applied_at.saturating_duration_since(healed)),
        ms(apply)
    );

    // The restored follower goes on applying entries like the others: the NOSPACE alarm it
    // restored is disarmed first (under it, puts are refused as etcd refuses them), then keys
    // are written.
    let mut after =
        vec![Command::Apply(RequestBuf::AlarmDeactivate(Alarm { member: leader, kind: AlarmType::Nospace }))];
    after.extend((0..10).map(|i| {
        Command::Apply(RequestBuf::Put {
            key: format!("/registry/after/{i}").into_bytes(),
            value: b"v".to_vec(),
            lease: 0,
        })
    }));
    propose_all(client, after).await?;
    let digests = cluster.settle(leader, WAIT).await?;
    let mut equal = true;
    let first = digests.values().next().copied();
    for (id, d) in &digests {
        let role = if *id == leader {
            "leader  "
        } else if *id == follower {
            "restored"
        } else {
            "follower"
        };
        println!("  {role} {id:016x} state digest {}", hex(d));
        equal &= Some(*d) == first;
    }
    println!("{}", if equal { "digests equal" } else { "digests DIFFER" });
    Ok(equal)
}

/// Waits until the leader's own policy has snapshotted and compacted its log past `lagging`, so
/// that only a snapshot can catch the follower up; returns the snapshot's index and the log's
/// first index.
async fn leader_compacted_past(cluster: &Cluster, leader: u64, lagging: u64) -> Result<(u64, u64), Box<dyn Error>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = cluster.node(leader)?.client().status().await?;
        if status.snapshot_index > 0 && status.log.0 > lagging.saturating_add(1) {
            return Ok((status.snapshot_index, status.log.0));
        }
        if Instant::now() > deadline {
            return Err(format!("the leader never compacted its log past index {lagging}: {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let equal = runtime.block_on(demo(args))?;
    if equal {
        println!("states equal");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("states DIFFER");
        Ok(ExitCode::FAILURE)
    }
}
