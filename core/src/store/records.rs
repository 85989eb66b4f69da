//! The records of every bucket but `key` (docs/records.md), in one place: the stores write them
//! through these functions, and so does an importer that writes an image from another store's
//! data (`snapply-etcd`), so the layout has one owner. Values are postcard, fields in the order
//! given here; keys that must sort numerically are big-endian.
//!
//! Lists inside a record (a user's roles, a role's permissions, a member's URLs) are written
//! item by item from the caller's slice, so neither side needs a second copy of them.

use super::alarm::Alarm;
use super::auth::PermissionType;
use super::lease::LeaseId;
use super::membership::MemberId;
use super::{StoreError, codec};
use crate::collections::Seq;

/// The value of a removed member's record in the `members_removed` bucket (etcd writes
/// `removed`).
pub const MEMBER_REMOVED: &[u8] = b"removed";

/// The key of lease `id` in the `lease` bucket: big-endian, so leases sort by id as in etcd.
pub fn lease_key(id: LeaseId) -> [u8; 8] {
    id.to_be_bytes()
}

/// The key of `alarm` in the `alarm` bucket: the member id big-endian, then the alarm type's
/// byte (`AlarmType as u8`); the value is empty.
pub fn alarm_key(alarm: &Alarm) -> [u8; 9] {
    let mut k = [0u8; 9];
    let (id, kind) = k.split_at_mut(8);
    id.copy_from_slice(&alarm.member.to_be_bytes());
    kind.copy_from_slice(&[alarm.kind as u8]);
    k
}

/// Encodes a lease record (etcd's `leasepb.Lease`: id, TTL, remaining TTL) into `out`,
/// cleared first.
///
/// # Errors
/// [`StoreError::Capacity`] if `out` cannot hold it.
pub fn encode_lease<S: Seq<u8>>(id: LeaseId, ttl: i64, remaining_ttl: i64, out: &mut S) -> Result<(), StoreError> {
    codec::encode(&(id, ttl, remaining_ttl), out)
}

/// Decodes a lease record: id, TTL, remaining TTL.
pub(crate) fn decode_lease(bytes: &[u8]) -> Result<(LeaseId, i64, i64), StoreError> {
    codec::decode::<(LeaseId, i64, i64)>(crate::backend::Bucket::Lease, bytes)
}

/// Encodes a user record (name, password hash, role names, no-password flag) into `out`,
/// cleared first; `role` gives each of `roles`' names, which must be sorted.
///
/// # Errors
/// [`StoreError::Capacity`] if `out` cannot hold it.
pub fn encode_user<'a, S: Seq<u8>, R>(
    name: &[u8],
    password_hash: &[u8],
    roles: &'a [R],
    role: impl Fn(&'a R) -> &'a [u8],
    no_password: bool,
    out: &mut S,
) -> Result<(), StoreError> {
    codec::encode(&(name, password_hash, codec::List(roles, role), no_password), out)
}

/// One permission of a role record: its type, key and range end.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct PermissionRecord<'a> {
    pub(crate) kind: PermissionType,
    pub(crate) key: &'a [u8],
    pub(crate) range_end: &'a [u8],
}

/// Encodes a role record (name, then its permissions: type, key, range end) into `out`, cleared
/// first; `permission` gives each of `permissions`' fields, in etcd's order.
///
/// # Errors
/// [`StoreError::Capacity`] if `out` cannot hold it.
pub fn encode_role<'a, S: Seq<u8>, T>(
    name: &[u8],
    permissions: &'a [T],
    permission: impl Fn(&'a T) -> (PermissionType, &'a [u8], &'a [u8]),
    out: &mut S,
) -> Result<(), StoreError> {
    let list = codec::List(permissions, |p| {
        let (kind, key, range_end) = permission(p);
        PermissionRecord { kind, key, range_end }
    });
    codec::encode(&(name, list), out)
}

/// Encodes a member record (id, name, peer URLs, client URLs, learner flag) into `out`, cleared
/// first; `url` gives each URL's bytes.
///
/// # Errors
/// [`StoreError::Capacity`] if `out` cannot hold it.
pub fn encode_member<'a, S: Seq<u8>, U>(
    id: MemberId,
    name: &[u8],
    peer_urls: &'a [U],
    client_urls: &'a [U],
    url: impl Fn(&'a U) -> &'a [u8] + Copy,
    is_learner: bool,
    out: &mut S,
) -> Result<(), StoreError> {
    let record = (id, name, codec::List(peer_urls, url), codec::List(client_urls, url), is_learner);
    codec::encode(&record, out)
}
