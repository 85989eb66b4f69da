//! The seeded request streams of the differential tests: one generator, so the comparison of
//! final snapshots (`tests/tests/etcd_differential.rs`) and the comparison of every gRPC
//! response against a `snapply serve` cluster (`targets/cli/tests/etcd_grpc_differential.rs`)
//! send the same streams for the same seed.

// Each op's fields are those of the etcd request it stands for.
#![allow(missing_docs)]
// Test scaffolding: a failure here is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::should_implement_trait
)]

use snapply_core::store::PermissionType;

/// Leases granted with less than this are revoked at the end of their stream, long before
/// etcd's minimum TTL would let them expire (an expiry is etcd's own revoke, not a request).
pub const LONG_TTL: i64 = 100_000;

/// A deterministic generator (xorshift64*): the same seed gives the same streams.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One request of a stream.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: u8,
        value: Vec<u8>,
        lease: Option<u8>,
    },
    Delete {
        key: u8,
        end: Option<u8>,
    },
    DeleteFrom {
        key: u8,
    },
    Compact {
        back: i64,
    },
    Grant {
        lease: u8,
        ttl: i64,
    },
    Revoke {
        lease: u8,
    },
    KeepAlive {
        lease: u8,
    },
    UserAdd {
        user: u8,
    },
    UserDelete {
        user: u8,
    },
    RoleAdd {
        role: u8,
    },
    RoleDelete {
        role: u8,
    },
    RoleGrant {
        role: u8,
        key: u8,
        end: Option<Vec<u8>>,
        kind: PermissionType,
    },
    RoleRevoke {
        role: u8,
        key: u8,
        end: Option<Vec<u8>>,
    },
    UserGrant {
        user: u8,
        role: u8,
    },
    UserRevoke {
        user: u8,
        role: u8,
    },
    RootSetup,
    AuthEnable,
    AuthDisable,
    LearnerAdd {
        url: u8,
    },
    MemberRemove {
        learner: bool,
    },
    MemberUpdate {
        url: u8,
    },
    Alarm {
        activate: bool,
        corrupt: bool,
    },
    /// If `k<key>` is at `version`, put `value` (with `lease`) under each of `puts` and then,
    /// nested, delete `k<delete>` if it has a value; otherwise delete `[k<delete>, k<delete+3>)`.
    /// The put keys are `k0` to `k5` and distinct, the deleted ones from `k6` on: etcd refuses a
    /// transaction that puts a key twice or puts and deletes one.
    Txn {
        key: u8,
        version: u8,
        puts: Vec<u8>,
        value: Vec<u8>,
        lease: Option<u8>,
        delete: u8,
    },
}

pub fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}
pub fn user(u: u8) -> Vec<u8> {
    if u == 3 { b"root".to_vec() } else { format!("u{u}").into_bytes() }
}
pub fn role(r: u8) -> Vec<u8> {
    if r == 3 { b"root".to_vec() } else { format!("r{r}").into_bytes() }
}
pub fn lease_id(l: u8) -> i64 {
    0x1000 + i64::from(l)
}
pub fn kind_name(k: PermissionType) -> &'static str {
    match k {
        PermissionType::Read => "READ",
        PermissionType::Write => "WRITE",
        _ => "READWRITE",
    }
}

pub fn gen_op(rng: &mut Rng) -> Op {
    let end = |rng: &mut Rng| match rng.below(5) {
        0 | 1 => None,
        2 => Some(vec![0]),
        // Sometimes below the key: an invalid permission range.
        3 => Some(key(rng.below(8) as u8)),
        _ => Some(b"k".to_vec()),
    };
    match rng.below(108) {
        0..=24 => {
            let value = (0..rng.below(12)).map(|_| b'a' + rng.below(26) as u8).collect();
            let lease = (rng.below(3) == 0).then(|| rng.below(4) as u8);
            Op::Put { key: rng.below(8) as u8, value, lease }
        }
        25..=31 => Op::Delete { key: rng.below(8) as u8, end: (rng.below(2) == 0).then(|| rng.below(9) as u8) },
        32 => Op::DeleteFrom { key: rng.below(8) as u8 },
        33..=37 => Op::Compact { back: rng.pick(&[-1, 0, 0, 1, 1, 2, 3, 5]) },
        38..=44 => Op::Grant {
            lease: rng.below(4) as u8,
            ttl: rng.pick(&[0, 1, LONG_TTL, LONG_TTL * 2, 9_000_000_000, 9_000_000_001]),
        },
        45..=49 => Op::Revoke { lease: rng.below(4) as u8 },
        50..=51 => Op::KeepAlive { lease: rng.below(4) as u8 },
        52..=54 => Op::UserAdd { user: rng.below(3) as u8 },
        55 => Op::UserDelete { user: rng.below(4) as u8 },
        56..=58 => Op::RoleAdd { role: rng.below(3) as u8 },
        59 => Op::RoleDelete { role: rng.below(4) as u8 },
        60..=66 => Op::RoleGrant {
            role: rng.below(4) as u8,
            key: rng.below(8) as u8,
            end: end(rng),
            kind: rng.pick(&[PermissionType::Read, PermissionType::Write, PermissionType::ReadWrite]),
        },
        67..=69 => Op::RoleRevoke { role: rng.below(3) as u8, key: rng.below(8) as u8, end: end(rng) },
        70..=74 => Op::UserGrant { user: rng.below(4) as u8, role: rng.below(4) as u8 },
        75..=76 => Op::UserRevoke { user: rng.below(4) as u8, role: rng.below(4) as u8 },
        77..=78 => Op::RootSetup,
        79..=81 => Op::AuthEnable,
        82..=83 => Op::AuthDisable,
        84..=87 => Op::LearnerAdd { url: rng.below(4) as u8 },
        88..=89 => Op::MemberRemove { learner: rng.below(4) != 0 },
        90..=92 => Op::MemberUpdate { url: rng.below(4) as u8 },
        93..=94 => Op::Alarm { activate: true, corrupt: rng.below(3) == 0 },
        100..=107 => {
            let mut puts: Vec<u8> = (0..6).filter(|_| rng.below(2) == 0).collect();
            puts.truncate(3);
            let value = (0..rng.below(6)).map(|_| b'a' + rng.below(26) as u8).collect();
            let lease = (rng.below(4) == 0).then(|| rng.below(4) as u8);
            Op::Txn {
                key: rng.below(9) as u8,
                version: rng.below(3) as u8,
                puts,
                value,
                lease,
                delete: 6 + rng.below(3) as u8,
            }
        }
        _ => Op::Alarm { activate: false, corrupt: rng.below(3) == 0 },
    }
}

/// Streams that make each documented difference and each fixed divergence of the issue
/// happen, whatever the seed.
pub fn fixed_streams() -> Vec<Vec<Op>> {
    let put = |k: u8, lease: Option<u8>| Op::Put { key: k, value: b"v".to_vec(), lease };
    vec![
        // A lease revoke deletes its keys in one revision; TTLs 0 and 1 are raised to the
        // minimum, above 9,000,000,000 refused.
        vec![
            Op::Grant { lease: 0, ttl: LONG_TTL },
            put(3, Some(0)),
            put(1, Some(0)),
            put(2, Some(0)),
            Op::Revoke { lease: 0 },
            Op::Grant { lease: 1, ttl: 0 },
            Op::Grant { lease: 2, ttl: 1 },
            Op::Grant { lease: 3, ttl: 9_000_000_001 },
        ],
        // Compaction at exactly a tombstone's revision.
        vec![put(5, None), Op::Delete { key: 5, end: None }, Op::Compact { back: 0 }],
        // Auth: revision from 1, enable without a bump, idempotent enable and disable, a grant of
        // a role the user has.
        vec![
            Op::RootSetup,
            Op::UserGrant { user: 3, role: 3 },
            Op::AuthEnable,
            Op::AuthEnable,
            Op::AuthDisable,
            Op::AuthDisable,
        ],
        // Role permissions sorted by key, an invalid range, the first one by key updated.
        vec![
            Op::RoleAdd { role: 0 },
            Op::RoleGrant { role: 0, key: 6, end: None, kind: PermissionType::Read },
            Op::RoleGrant { role: 0, key: 2, end: Some(b"k3".to_vec()), kind: PermissionType::Read },
            Op::RoleGrant { role: 0, key: 2, end: None, kind: PermissionType::Write },
            Op::RoleGrant { role: 0, key: 2, end: None, kind: PermissionType::ReadWrite },
            Op::RoleGrant { role: 0, key: 4, end: Some(b"k1".to_vec()), kind: PermissionType::Read },
            Op::RoleGrant { role: 0, key: 7, end: Some(vec![0]), kind: PermissionType::Read },
        ],
        // Members: a peer URL in use, the learner limit, an update onto a URL in use.
        vec![
            Op::LearnerAdd { url: 0 },
            Op::LearnerAdd { url: 1 },
            Op::LearnerAdd { url: 2 },
            Op::MemberUpdate { url: 0 },
            Op::MemberUpdate { url: 3 },
            Op::MemberRemove { learner: true },
            Op::MemberRemove { learner: true },
        ],
        // Alarms: puts and lease grants refused under NOSPACE, deletes pass; under CORRUPT
        // every key-value and lease request is refused.
        vec![
            put(0, None),
            Op::Alarm { activate: true, corrupt: false },
            put(1, None),
            Op::Grant { lease: 0, ttl: LONG_TTL },
            Op::Delete { key: 0, end: None },
            Op::Alarm { activate: false, corrupt: false },
            Op::Alarm { activate: true, corrupt: true },
            put(1, None),
            Op::Delete { key: 1, end: None },
            Op::Compact { back: 0 },
            Op::RoleAdd { role: 1 },
            Op::Alarm { activate: false, corrupt: true },
        ],
    ]
}
