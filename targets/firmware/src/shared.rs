//! What the host (the build script) and the device compute alike: the device node's
//! configuration and the digest of a node's state. The build script includes this file with
//! `#[path]`, so both sides run the very same code.

use core::ops::ControlFlow;

use sha2::{Digest, Sha256};
use snapply_core::backend::{Backend, BackendError, for_each_record};
use snapply_core::collections::Profile;
use snapply_core::store::{StoreError, V2Deprecation};
use snapply_core::{Config, Node, Request};

/// The firmware's capacity profile: the reference device's (`snapply_core::collections::Reference`:
/// 512 key revisions, 12 KiB of key arena, 8 leases, 3 members, 2 users, 2 roles).
pub use snapply_core::collections::Reference as Device;

/// The device's node configuration (its member id, lease floor, v2 deprecation level).
pub const DEVICE: Config = Config { id: 2, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly };

/// The digests of a node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    /// SHA-256 over every backend record, bucket by bucket in key order: bucket id, key length
    /// (u32, little endian), key, value length, value.
    pub records: [u8; 32],
    /// SHA-256 over the `Debug` rendering of the stores and of the applied index, term and conf
    /// state: the key index, the lessor with its attached keys, auth with its permission cache,
    /// membership, v2, alarms, the consistent index. The rendering is the same on a 64-bit host
    /// and a 32-bit device: the stores hold the same values, and `Debug` prints numbers, not
    /// their width. The progress's snapshot index is left out: a node re-opened from its
    /// backend takes it from the consistent index, which entries applied after the snapshot
    /// move on.
    pub stores: [u8; 32],
    /// Number of backend records.
    pub record_count: u32,
}

/// Feeds `fmt::Write` output into a hash: a `Debug` rendering is hashed without being held.
struct HashWriter<'a>(&'a mut Sha256);

impl core::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

fn len_bytes(len: usize) -> [u8; 4] {
    // Keys and values of a backend are far below 4 GiB; saturating keeps this total anyway.
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

/// The digests of `node`'s state (see [`Digests`]).
pub fn digests<B: Backend, P: Profile>(node: &Node<B, P>) -> Result<Digests, BackendError> {
    let mut records = Sha256::new();
    let mut record_count: u32 = 0;
    {
        let txn = node.backend().read()?;
        for_each_record(&txn, &mut |bucket, key, value| {
            records.update([bucket.id()]);
            records.update(len_bytes(key.len()));
            records.update(key);
            records.update(len_bytes(value.len()));
            records.update(value);
            record_count = record_count.saturating_add(1);
            ControlFlow::Continue(())
        })?;
    }
    let mut stores = Sha256::new();
    // Writing into a hash cannot fail, and `Debug` of the stores only fails if the writer does.
    let _ = core::fmt::write(&mut HashWriter(&mut stores), format_args!("{:?}\n{:?}", node.stores(), node.progress()));
    Ok(Digests { records: records.finalize().into(), stores: stores.finalize().into(), record_count })
}

/// Entries the device applies right after a restore, at indexes after the snapshot's: a new
/// key, an overwrite, and a range deletion of keys the snapshot brought. They are persisted like
/// any entry and must survive the reset. Returns the index of the last one.
pub fn writes_after_restore<B: Backend, P: Profile>(
    node: &mut Node<B, P>,
    snapshot_index: u64,
    term: u64,
) -> Result<u64, StoreError> {
    let requests = [
        Request::Put { key: b"/device/after-restore", value: b"written after the restore", lease: 0 },
        Request::Put { key: b"/device/after-restore", value: b"and overwritten", lease: 0 },
        Request::DeleteRange { key: b"/device/c0003", range_end: b"/device/c0004" },
    ];
    let mut index = snapshot_index;
    for request in &requests {
        index += 1;
        node.apply(index, term, request)?;
    }
    Ok(index)
}
