//! What a committed Raft entry asks of a node ([`Request`]), and how it is applied to the
//! stores: the refusals made before anything changes (a result a snapshot could not carry, an
//! active alarm), then each request's store operation, in one write transaction that
//! [`crate::Node::apply`] commits.

#[cfg(feature = "alloc")]
mod owned;
mod wire;

#[cfg(feature = "alloc")]
pub use owned::{CompareBuf, CompareTargetBuf, MemberBuf, RequestBuf, TxnNodeBuf, TxnOpBuf};

use crate::backend::WriteTxn;
use crate::collections::{Profile, Seq};
use crate::node::Stores;
use crate::store::{
    Alarm, AlarmStore, AlarmType, Change, Downgrade, LeaseId, MemberId, NewMember, PermissionType, StoreError, Version,
};

/// A request carried by a committed Raft entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// Put `value` under `key`, attached to `lease` (0 for none).
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// The lease, 0 for none.
        lease: LeaseId,
    },
    /// Delete every key in `[key, range_end)`.
    DeleteRange {
        /// The key or start of the range.
        key: &'a [u8],
        /// The end of the range (empty: just `key`).
        range_end: &'a [u8],
    },
    /// A transaction: compares, then one branch's puts and deletes (and nested transactions),
    /// in one revision (etcd's `TxnRequest`; see [`crate::store::Txn`]).
    Txn(crate::store::Txn<'a>),
    /// Compact the key-value history at `revision`.
    Compact {
        /// The revision.
        revision: i64,
    },
    /// Grant a lease.
    LeaseGrant {
        /// The id.
        id: LeaseId,
        /// The TTL in seconds.
        ttl: i64,
    },
    /// Revoke a lease and delete its keys.
    LeaseRevoke {
        /// The id.
        id: LeaseId,
    },
    /// Record a lease's remaining TTL (0 clears it); persisted from cluster version 3.6 on.
    LeaseCheckpoint {
        /// The id.
        id: LeaseId,
        /// The remaining TTL in seconds.
        remaining_ttl: i64,
    },
    /// Raise an alarm.
    AlarmActivate(Alarm),
    /// Clear an alarm.
    AlarmDeactivate(Alarm),
    /// Enable or disable auth.
    AuthSetEnabled(bool),
    /// Add a user.
    UserAdd {
        /// The name.
        name: &'a [u8],
        /// The password hash.
        password_hash: &'a [u8],
        /// Whether no password is needed.
        no_password: bool,
    },
    /// Add a role.
    RoleAdd {
        /// The name.
        name: &'a [u8],
    },
    /// Grant a role a permission.
    RoleGrantPermission {
        /// The role.
        role: &'a [u8],
        /// What is permitted.
        kind: PermissionType,
        /// The key or start of the range.
        key: &'a [u8],
        /// The end of the range.
        range_end: &'a [u8],
    },
    /// Grant a user a role.
    UserGrantRole {
        /// The user.
        user: &'a [u8],
        /// The role.
        role: &'a [u8],
    },
    /// Delete a user.
    UserDelete {
        /// The name.
        name: &'a [u8],
    },
    /// Delete a role, revoking it from every user.
    RoleDelete {
        /// The name.
        name: &'a [u8],
    },
    /// Revoke a role's permission on a key or range.
    RoleRevokePermission {
        /// The role.
        role: &'a [u8],
        /// The key or start of the range.
        key: &'a [u8],
        /// The end of the range.
        range_end: &'a [u8],
    },
    /// Revoke a role from a user.
    UserRevokeRole {
        /// The user.
        user: &'a [u8],
        /// The role.
        role: &'a [u8],
    },
    /// Let a user be issued a token (etcd's `InternalAuthenticateRequest` as it is applied): auth
    /// must be enabled and the user there with a password. The password was checked by the
    /// member that proposed it (a hash is too slow to check on every member), and the token is
    /// each member's own state, not the store's: applying this writes nothing but the index.
    Authenticate {
        /// The user.
        name: &'a [u8],
    },
    /// Replace a user's password hash (etcd's `UserChangePassword`; the hash is the proposer's).
    UserChangePassword {
        /// The user.
        name: &'a [u8],
        /// The new password hash.
        password_hash: &'a [u8],
    },
    /// Add a member.
    MemberAdd(NewMember<'a>),
    /// Remove a member.
    MemberRemove {
        /// The id.
        id: MemberId,
    },
    /// Replace a member's peer URLs.
    MemberUpdate {
        /// The id.
        id: MemberId,
        /// The new peer URLs.
        peer_urls: &'a [&'a [u8]],
    },
    /// Set the name and client URLs a member publishes once it started (etcd's
    /// `ClusterMemberAttrSetRequest`).
    MemberAttrSet {
        /// The id.
        id: MemberId,
        /// The member's name.
        name: &'a [u8],
        /// The member's client URLs.
        client_urls: &'a [&'a [u8]],
    },
    /// Promote a learner to a voting member.
    MemberPromote {
        /// The id.
        id: MemberId,
    },
    /// Set the cluster version.
    ClusterVersion(Version),
    /// Set the downgrade info.
    Downgrade(Downgrade),
}

/// Refuses, before anything changes, a request whose result a snapshot could not carry to a
/// node of any profile: a member with more peer URLs than the transport takes. Its error is not
/// a rejection, so the entry is not applied (see [`Node::apply`]).
pub(crate) fn refuse_unrestorable(request: &Request<'_>) -> Result<(), StoreError> {
    match request {
        Request::MemberAdd(member) => crate::store::check_peer_urls(member.peer_urls.len()),
        Request::MemberUpdate { peer_urls, .. } => crate::store::check_peer_urls(peer_urls.len()),
        _ => Ok(()),
    }
}

pub(crate) fn apply_request<P: Profile, W: WriteTxn>(
    s: &mut Stores<P>,
    txn: &mut W,
    request: &Request<'_>,
    scratch: &mut P::Record,
) -> Result<(), StoreError> {
    refuse_under_alarm(&s.alarms, request)?;
    match *request {
        Request::Put { key, value, lease } => {
            s.kv.put(txn, &mut s.lessor, key, value, lease, scratch)?;
        }
        Request::DeleteRange { key, range_end } => {
            s.kv.delete_range(txn, &mut s.lessor, key, range_end, scratch)?;
        }
        Request::Txn(t) => s.kv.apply_txn(txn, &mut s.lessor, &t, scratch)?,
        Request::Compact { revision } => s.kv.schedule_compaction(txn, revision)?,
        Request::LeaseGrant { id, ttl } => s.lessor.grant(txn, id, ttl, scratch)?,
        Request::LeaseRevoke { id } => {
            s.lessor.revoke(txn, id)?;
            // etcd's `lessor.Revoke` deletes the lease's keys, sorted, in one write transaction:
            // one revision, sub revisions 0..N-1. Key by key: a device has no room to list them
            // all first; the lessor keeps them sorted by key.
            let mut change = Change::begin(&s.kv)?;
            let mut key = P::Bytes::default();
            while s.lessor.first_key_of(id, &mut key)? {
                s.kv.delete_in(txn, &mut s.lessor, key.as_slice(), &[], &mut change, scratch)?;
                // Deleting the key detached it; detaching again is a no-op that guarantees the
                // loop ends even for a key that was not live.
                s.lessor.detach(id, key.as_slice());
            }
            s.kv.end(change);
        }
        Request::LeaseCheckpoint { id, remaining_ttl } => {
            // etcd 3.6's `shouldPersistCheckpoints`: from cluster version 3.6 on.
            let persist = s.membership.version().is_some_and(|v| (v.major, v.minor) >= (3, 6));
            s.lessor.checkpoint(txn, id, remaining_ttl, persist, scratch)?
        }
        Request::AlarmActivate(alarm) => {
            s.alarms.activate(txn, alarm)?;
        }
        Request::AlarmDeactivate(alarm) => {
            s.alarms.deactivate(txn, alarm)?;
        }
        Request::AuthSetEnabled(enabled) => s.auth.set_enabled(txn, enabled)?,
        Request::UserAdd { name, password_hash, no_password } => {
            s.auth.add_user(txn, name, password_hash, no_password, scratch)?
        }
        Request::RoleAdd { name } => s.auth.add_role(txn, name, scratch)?,
        Request::RoleGrantPermission { role, kind, key, range_end } => {
            s.auth.grant_permission(txn, role, kind, key, range_end, scratch)?
        }
        Request::UserGrantRole { user, role } => s.auth.grant_role(txn, user, role, scratch)?,
        Request::UserDelete { name } => s.auth.delete_user(txn, name)?,
        Request::RoleDelete { name } => s.auth.delete_role(txn, name, scratch)?,
        Request::RoleRevokePermission { role, key, range_end } => {
            s.auth.revoke_permission(txn, role, key, range_end, scratch)?
        }
        Request::UserRevokeRole { user, role } => s.auth.revoke_role(txn, user, role, scratch)?,
        Request::Authenticate { name } => s.auth.check_authenticate(name)?,
        Request::UserChangePassword { name, password_hash } => {
            s.auth.change_password(txn, name, password_hash, scratch)?
        }
        Request::MemberAdd(new) => {
            s.membership.add(txn, &new, scratch)?;
            let first = new.peer_urls.first().copied().unwrap_or(&[]);
            s.v2.add_member(new.id, first)?;
        }
        Request::MemberRemove { id } => {
            s.membership.remove(txn, id)?;
            s.v2.remove_member(id)?;
        }
        Request::MemberUpdate { id, peer_urls } => {
            s.membership.update_peer_urls(txn, id, peer_urls, scratch)?;
            s.v2.update_member(id, peer_urls.first().copied().unwrap_or(&[]))?;
        }
        Request::MemberAttrSet { id, name, client_urls } => {
            s.membership.set_attributes(txn, id, name, client_urls, scratch)?
        }
        Request::MemberPromote { id } => s.membership.promote(txn, id, scratch)?,
        Request::ClusterVersion(v) => s.membership.set_version(txn, v)?,
        Request::Downgrade(d) => s.membership.set_downgrade(txn, d)?,
    }
    Ok(())
}

/// Refuses what etcd's capped and corrupt appliers refuse while an alarm is active: under
/// NOSPACE, puts and lease grants (`applierV3Capped`, "database space exceeded"); under CORRUPT,
/// every key-value and lease request but checkpoints (`applierV3Corrupt`). Deletes and
/// compactions stay allowed under NOSPACE, so an operator can make room.
pub(crate) fn refuse_under_alarm<P: Profile>(alarms: &AlarmStore<P>, request: &Request<'_>) -> Result<(), StoreError> {
    let kv_or_lease = matches!(
        request,
        Request::Put { .. }
            | Request::DeleteRange { .. }
            | Request::Txn(_)
            | Request::Compact { .. }
            | Request::LeaseGrant { .. }
            | Request::LeaseRevoke { .. }
    );
    if kv_or_lease && alarms.is_active(AlarmType::Corrupt) {
        return Err(StoreError::CorruptAlarm);
    }
    let adds_data = match request {
        Request::Put { .. } | Request::LeaseGrant { .. } => true,
        Request::Txn(t) => t.puts(),
        _ => false,
    };
    if adds_data && alarms.is_active(AlarmType::Nospace) {
        return Err(StoreError::NoSpace);
    }
    Ok(())
}
