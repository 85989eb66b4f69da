//! A request's encoding read back without a heap: the bytes `RequestBuf::encode` (feature `alloc`)
//! writes (postcard), decoded into a borrowed [`Request`] whose keys and values point into
//! them. A device that follows a host's committed entries decodes them so, in a fixed buffer.
//!
//! Only the requests that carry no list (of URLs, of transaction nodes) decode: a borrowed
//! `Request` has nowhere to put a list without a heap. For those, [`Request::decode`] answers
//! `None`, and the sender sends a snapshot taken after the entry instead.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::Request;
use crate::store::{Alarm, Downgrade, LeaseId, MemberId, PermissionType, Version};

/// `RequestBuf`'s variants, in its order, borrowed; the variants with a list are
/// ignored (postcard cannot skip them, so they fail to decode). Its order is checked against
/// `RequestBuf`'s by the round-trip test of every variant.
#[derive(Deserialize)]
enum Wire<'a> {
    Put { key: &'a [u8], value: &'a [u8], lease: LeaseId },
    DeleteRange { key: &'a [u8], range_end: &'a [u8] },
    Txn(IgnoredAny),
    Compact { revision: i64 },
    LeaseGrant { id: LeaseId, ttl: i64 },
    LeaseRevoke { id: LeaseId },
    LeaseCheckpoint { id: LeaseId, remaining_ttl: i64 },
    AlarmActivate(Alarm),
    AlarmDeactivate(Alarm),
    AuthSetEnabled(bool),
    UserAdd { name: &'a [u8], password_hash: &'a [u8], no_password: bool },
    RoleAdd { name: &'a [u8] },
    RoleGrantPermission { role: &'a [u8], kind: PermissionType, key: &'a [u8], range_end: &'a [u8] },
    UserGrantRole { user: &'a [u8], role: &'a [u8] },
    UserDelete { name: &'a [u8] },
    RoleDelete { name: &'a [u8] },
    RoleRevokePermission { role: &'a [u8], key: &'a [u8], range_end: &'a [u8] },
    UserRevokeRole { user: &'a [u8], role: &'a [u8] },
    Authenticate { name: &'a [u8] },
    UserChangePassword { name: &'a [u8], password_hash: &'a [u8] },
    MemberAdd(IgnoredAny),
    MemberRemove { id: MemberId },
    MemberUpdate(IgnoredAny),
    MemberAttrSet(IgnoredAny),
    MemberPromote { id: MemberId },
    ClusterVersion(Version),
    Downgrade(Downgrade),
}

impl<'a> Request<'a> {
    /// Decodes a request from its encoding (`RequestBuf::encode`, feature `alloc`), borrowing its keys
    /// and values from `bytes`, without a heap. `None` for bytes that are no request, with bytes
    /// left over, or for a request with a list (a transaction, a member's URLs), which needs
    /// `RequestBuf::decode`.
    pub fn decode(bytes: &'a [u8]) -> Option<Request<'a>> {
        let (wire, rest) = postcard::take_from_bytes::<Wire<'a>>(bytes).ok()?;
        if !rest.is_empty() {
            return None;
        }
        Some(match wire {
            Wire::Put { key, value, lease } => Request::Put { key, value, lease },
            Wire::DeleteRange { key, range_end } => Request::DeleteRange { key, range_end },
            Wire::Compact { revision } => Request::Compact { revision },
            Wire::LeaseGrant { id, ttl } => Request::LeaseGrant { id, ttl },
            Wire::LeaseRevoke { id } => Request::LeaseRevoke { id },
            Wire::LeaseCheckpoint { id, remaining_ttl } => Request::LeaseCheckpoint { id, remaining_ttl },
            Wire::AlarmActivate(a) => Request::AlarmActivate(a),
            Wire::AlarmDeactivate(a) => Request::AlarmDeactivate(a),
            Wire::AuthSetEnabled(on) => Request::AuthSetEnabled(on),
            Wire::UserAdd { name, password_hash, no_password } => Request::UserAdd { name, password_hash, no_password },
            Wire::RoleAdd { name } => Request::RoleAdd { name },
            Wire::RoleGrantPermission { role, kind, key, range_end } => {
                Request::RoleGrantPermission { role, kind, key, range_end }
            }
            Wire::UserGrantRole { user, role } => Request::UserGrantRole { user, role },
            Wire::UserDelete { name } => Request::UserDelete { name },
            Wire::RoleDelete { name } => Request::RoleDelete { name },
            Wire::RoleRevokePermission { role, key, range_end } => {
                Request::RoleRevokePermission { role, key, range_end }
            }
            Wire::UserRevokeRole { user, role } => Request::UserRevokeRole { user, role },
            Wire::Authenticate { name } => Request::Authenticate { name },
            Wire::UserChangePassword { name, password_hash } => Request::UserChangePassword { name, password_hash },
            Wire::MemberRemove { id } => Request::MemberRemove { id },
            Wire::MemberPromote { id } => Request::MemberPromote { id },
            Wire::ClusterVersion(v) => Request::ClusterVersion(v),
            Wire::Downgrade(d) => Request::Downgrade(d),
            Wire::Txn(_) | Wire::MemberAdd(_) | Wire::MemberUpdate(_) | Wire::MemberAttrSet(_) => return None,
        })
    }
}
