//! Linearizability of a 3-member `snapply serve` cluster, checked on recorded histories.
//!
//! Bounded clients put and read a few shared keys through different members while one member is
//! killed (SIGKILL) and restarted; every operation's call time, return time and answer is
//! recorded, and the history goes through the Wing–Gong checker of `snapply-tests`. Then a
//! deterministic lagging member: it is stopped, a put is acknowledged without it, the two others
//! are stopped (SIGSTOP) and it is restarted alone, so it holds only its old state and cannot
//! hear from a leader; a read through it is recorded too.
//!
//! The clients speak etcd's gRPC API (the `etcd-client` crate). With linearizable reads (etcd's
//! default) the history passes, and the lagging member's read times out instead of answering;
//! with serializable reads the checker finds the stale read.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use snapply_tests::linearizability::{Action, Operation, Violation, check};
use support::{Kv, KvError, Member, cluster, put_until_ok};

const CLIENTS: usize = 3;
const OPS_PER_CLIENT: usize = 40;
const KEYS: usize = 3;
/// How long a client waits for one answer before it counts the operation as unanswered.
const ANSWER: Duration = Duration::from_secs(3);
const BUDGET: u64 = 5_000_000;

struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl History {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap()
    }

    /// Runs `action` on `key` through `conn` (connecting first if needed; a read is
    /// serializable if `serializable`) and records it. A client whose request got no answer is
    /// dropped, so the next operation reconnects.
    fn run(&self, conn: &mut Option<Kv>, port: u16, key: &str, action: Action, serializable: bool) {
        if conn.is_none() {
            // Nothing was sent: nothing happened.
            let Ok(c) = Kv::new(port, ANSWER) else { return };
            *conn = Some(c);
        }
        let Some(c) = conn.as_mut() else { return };
        let call = self.now();
        let answer = match &action {
            Action::Write(v) => c.put(key, v.as_deref().unwrap_or_default()).map(|_| None),
            Action::Read(_) => c.get(key, serializable),
        };
        let ret = self.now();
        if matches!(answer, Err(KvError::NoAnswer(_))) {
            *conn = None;
        }
        let op = match (action, answer) {
            (Action::Write(v), Ok(_)) => Some((Action::Write(v), Some(ret))),
            // Refused, unanswered or cut off: it may have taken effect, at any time after its call.
            (Action::Write(v), Err(_)) => Some((Action::Write(v), None)),
            // A read that failed returned nothing.
            (Action::Read(_), answer) => answer.ok().map(|v| (Action::Read(v), Some(ret))),
        };
        if let Some((action, ret)) = op {
            self.ops.lock().unwrap().push(Operation { key: key.into(), action, call, ret });
        }
    }
}

/// What a scenario ended with: the history and the lagging member's answer to the read made
/// while it was alone.
struct Outcome {
    history: Vec<Operation>,
    lagging_answer: Result<Option<String>, KvError>,
}

/// The scenario, reading linearizably or, if `serializable`, serializably.
fn scenario(serializable: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut members = cluster(dir.path(), 3);
    for m in &mut members {
        m.start();
    }
    put_until_ok(&members[0], "/k0", "init");
    let ports: Vec<u16> = members.iter().map(|m| m.client).collect();
    let history = History { start: Instant::now(), ops: Mutex::new(Vec::new()) };
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);

    // Phase 1: concurrent clients while member 3 is killed and restarted.
    std::thread::scope(|s| {
        for client in 0..CLIENTS {
            let (history, ports, finished, stop) = (&history, &ports, &finished, &stop);
            s.spawn(move || {
                let mut conns: Vec<Option<Kv>> = ports.iter().map(|_| None).collect();
                for n in 0..OPS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Each operation goes to the next member, so every client talks to all three.
                    let m = (client + n) % ports.len();
                    let key = format!("/k{}", (client * 7 + n) % KEYS);
                    let (Some(conn), Some(&port)) = (conns.get_mut(m), ports.get(m)) else { break };
                    if n % 2 == 0 {
                        let value = format!("c{client}-{n}");
                        history.run(conn, port, &key, Action::Write(Some(value)), serializable);
                    } else {
                        history.run(conn, port, &key, Action::Read(None), serializable);
                    }
                }
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        members[2].kill();
        std::thread::sleep(Duration::from_millis(700));
        members[2].start();
        // Bounded in time whatever the answers' latency: each operation waits at most ANSWER.
        let deadline = Instant::now() + Duration::from_secs(30);
        while finished.load(Ordering::Relaxed) < CLIENTS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });

    // Phase 2: an acknowledged put member 3 has applied, then one it misses, then member 3 runs
    // alone on its old state. Its old value was written before the put it missed was called:
    // reading it after that put returned is stale whatever else was written.
    let put = |member: &Member, value: &str| {
        let call = history.now();
        put_until_ok(member, "/k0", value);
        let ret = history.now();
        let op = Operation { key: "/k0".into(), action: Action::Write(Some(value.into())), call, ret: Some(ret) };
        history.ops.lock().unwrap().push(op);
    };
    put(&members[0], "before-kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while members[2].kv(ANSWER).and_then(|mut c| c.get("/k0", true)).ok().flatten().as_deref() != Some("before-kill") {
        assert!(Instant::now() < deadline, "member 3 never applied the put");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stopped cleanly (SIGTERM), so its backend holds that put durably: killed, it could come
    // back on an older backend, whose value might be an unanswered write of phase 1, which a
    // checker may place anywhere after its call.
    members[2].signal("TERM");
    assert_eq!(members[2].wait_exit(Duration::from_secs(30)).code(), Some(0));
    put(&members[0], "after-kill");
    members[0].signal("STOP");
    members[1].signal("STOP");
    members[2].start();
    // Longer than the server's read timeout (etcd's request timeout), which answers first.
    let mut alone = members[2].kv(Duration::from_secs(20)).unwrap();
    let call = history.now();
    let lagging_answer = alone.get("/k0", serializable);
    let ret = history.now();
    if let Ok(value) = &lagging_answer {
        history.ops.lock().unwrap().push(Operation {
            key: "/k0".into(),
            action: Action::Read(value.clone()),
            call,
            ret: Some(ret),
        });
    }
    members[0].signal("CONT");
    members[1].signal("CONT");
    // With the others back, it answers a read again (a linearizable one only once it has
    // applied up to the read index).
    let mut conn = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = history.ops.lock().unwrap().len();
        history.run(&mut conn, members[2].client, "/k0", Action::Read(None), serializable);
        if history.ops.lock().unwrap().len() > len || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(members);
    Outcome { history: history.ops.into_inner().unwrap(), lagging_answer }
}

fn reads(history: &[Operation]) -> usize {
    history.iter().filter(|o| matches!(o.action, Action::Read(_))).count()
}

#[test]
fn linearizable_reads_pass_the_check_while_a_member_is_killed_and_restarted() {
    let Outcome { history, lagging_answer } = scenario(false);
    assert!(reads(&history) >= 10, "too few reads answered to check anything: {history:?}");
    // Alone, the restarted member knows no leader: it does not answer from its old state, and
    // its read times out as etcd's does (its request timeout, before the client's).
    assert_eq!(lagging_answer, Err(KvError::Status(tonic::Code::Unavailable, "etcdserver: request timed out".into())));
    // Once back, it answers the put it missed.
    let last = history.last().unwrap();
    assert_eq!(last.action, Action::Read(Some("after-kill".into())), "{history:?}");
    if let Err(v) = check(&history, BUDGET) {
        panic!("{v}");
    }
}

#[test]
fn serializable_reads_on_a_lagging_member_fail_the_check() {
    let Outcome { history, lagging_answer } = scenario(true);
    // Alone on its old state, the member answers at once, from that state.
    assert_eq!(lagging_answer, Ok(Some("before-kill".into())));
    match check(&history, BUDGET) {
        Err(Violation::NotLinearizable { key, .. }) => assert_eq!(key, "/k0"),
        other => panic!("the stale read was not found: {other:?}"),
    }
}
