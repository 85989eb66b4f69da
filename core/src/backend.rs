//! The backend port: a bucketed, ordered key-value store with read and write transactions,
//! like etcd's bbolt backend.
//!
//! The traits are synchronous and object-safe in their callbacks (`&mut dyn FnMut`), so a flash
//! firmware pays for one copy of each store's recovery code, not one per backend type.

use core::ops::ControlFlow;

use serde::{Deserialize, Serialize};

/// A bucket of the backend (etcd's bbolt buckets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Bucket {
    /// MVCC revisions: revision bytes -> key-value record.
    Key = 0,
    /// Consistent index, term, conf state, compaction revisions.
    Meta = 1,
    /// Leases: id -> lease record.
    Lease = 2,
    /// Alarms: (member, kind) -> empty.
    Alarm = 3,
    /// Auth flag and revision.
    Auth = 4,
    /// Users: name -> user record.
    AuthUsers = 5,
    /// Roles: name -> role record.
    AuthRoles = 6,
    /// Members: id -> member record.
    Members = 7,
    /// Removed member ids.
    MembersRemoved = 8,
    /// Cluster version and downgrade info.
    Cluster = 9,
}

impl Bucket {
    /// Every bucket, in the order images store them.
    pub const ALL: [Bucket; 10] = [
        Bucket::Key,
        Bucket::Meta,
        Bucket::Lease,
        Bucket::Alarm,
        Bucket::Auth,
        Bucket::AuthUsers,
        Bucket::AuthRoles,
        Bucket::Members,
        Bucket::MembersRemoved,
        Bucket::Cluster,
    ];

    /// The bucket's name as etcd spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Bucket::Key => "key",
            Bucket::Meta => "meta",
            Bucket::Lease => "lease",
            Bucket::Alarm => "alarm",
            Bucket::Auth => "auth",
            Bucket::AuthUsers => "authUsers",
            Bucket::AuthRoles => "authRoles",
            Bucket::Members => "members",
            Bucket::MembersRemoved => "members_removed",
            Bucket::Cluster => "cluster",
        }
    }

    /// The bucket with the persisted id `id`, if any.
    pub const fn from_id(id: u8) -> Option<Bucket> {
        Some(match id {
            0 => Bucket::Key,
            1 => Bucket::Meta,
            2 => Bucket::Lease,
            3 => Bucket::Alarm,
            4 => Bucket::Auth,
            5 => Bucket::AuthUsers,
            6 => Bucket::AuthRoles,
            7 => Bucket::Members,
            8 => Bucket::MembersRemoved,
            9 => Bucket::Cluster,
            _ => return None,
        })
    }

    /// The bucket's persisted id.
    pub const fn id(self) -> u8 {
        self as u8
    }
}

/// A backend failed: the one error shape of every port (see [`crate::ports::PortError`]).
/// Adapters map their medium's error into it, keeping a short static context; the core stays
/// free of every medium's error type.
pub type BackendError = crate::error::PortError;

/// What went wrong in a backend (see [`crate::ports::PortErrorKind`]).
pub type BackendErrorKind = crate::error::PortErrorKind;

impl From<crate::collections::CapacityError> for BackendError {
    fn from(e: crate::collections::CapacityError) -> Self {
        BackendError::new(BackendErrorKind::Full, e.what)
    }
}

/// The callback of [`ReadTxn::scan`]: called with each `(key, value)`, breaks to stop.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// The callback of [`for_each_record`]: called with each `(bucket, key, value)`, breaks to stop.
pub type VisitRecord<'a> = dyn FnMut(Bucket, &[u8], &[u8]) -> ControlFlow<()> + 'a;

/// A consistent read view of a backend.
pub trait ReadTxn {
    /// Calls `f` with the value of `key` in `bucket`; returns whether the key exists.
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError>;

    /// Calls `f` with every `(key, value)` of `bucket` whose key is `>= from`, in key order,
    /// until `f` breaks.
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError>;
}

/// A write transaction: nothing it does is visible or durable until [`WriteTxn::commit`];
/// dropping it discards everything.
pub trait WriteTxn: ReadTxn {
    /// Sets `key` in `bucket` to `value`.
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError>;
    /// Removes `key` from `bucket`; returns whether it existed.
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError>;
    /// Removes every key of `bucket`.
    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError>;
    /// Makes the transaction's writes visible and durable, atomically.
    fn commit(self) -> Result<(), BackendError>;
}

/// A bucketed key-value backend (etcd's `backend.Backend`).
pub trait Backend {
    /// A read transaction.
    type Read<'a>: ReadTxn
    where
        Self: 'a;
    /// A write transaction.
    type Write<'a>: WriteTxn
    where
        Self: 'a;

    /// Begins a read transaction.
    fn read(&self) -> Result<Self::Read<'_>, BackendError>;
    /// Begins a write transaction.
    fn write(&mut self) -> Result<Self::Write<'_>, BackendError>;
}

/// Every record of `txn`, bucket by bucket in [`Bucket::ALL`] order, then key order.
pub fn for_each_record<R: ReadTxn + ?Sized>(txn: &R, f: &mut VisitRecord<'_>) -> Result<(), BackendError> {
    for bucket in Bucket::ALL {
        let mut stop = false;
        txn.scan(bucket, &[], &mut |k, v| {
            let flow = f(bucket, k, v);
            stop = flow.is_break();
            flow
        })?;
        if stop {
            break;
        }
    }
    Ok(())
}

/// A record as [`dump`] returns it: bucket, key, value.
#[cfg(feature = "alloc")]
pub type OwnedRecord = (Bucket, alloc::vec::Vec<u8>, alloc::vec::Vec<u8>);

/// Every record of `txn`, in the order of [`for_each_record`], copied out (feature `alloc`).
#[cfg(feature = "alloc")]
pub fn dump<R: ReadTxn + ?Sized>(txn: &R) -> Result<alloc::vec::Vec<OwnedRecord>, BackendError> {
    let mut out = alloc::vec::Vec::new();
    for_each_record(txn, &mut |b, k, v| {
        out.push((b, k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })?;
    Ok(out)
}
