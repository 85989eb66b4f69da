//! The stores a snapshot restores, each able to write its state into the backend buckets and to
//! recover from them.

mod alarm;
mod auth;
mod cindex;
pub(crate) mod codec;
mod error;
mod kv;
mod lease;
mod membership;
pub mod records;
mod txn;
mod v2;

pub use alarm::{Alarm, AlarmStore, AlarmType};
pub use auth::{
    AUTH_ENABLED_KEY, AUTH_FAILED, AUTH_NOT_ENABLED, AUTH_REVISION_KEY, AuthStore, CachedPermission, Permission,
    PermissionType, ROOT_ROLE, Role, TokenProvider, User,
};
pub use cindex::{ConsistentIndex, META_CONF_STATE, META_CONSISTENT_INDEX, META_TERM, load_conf_state};
pub(crate) use cindex::{conf_state_is, save_conf_state};
pub use error::StoreError;
pub(crate) use kv::Change;
pub use kv::{
    IndexEntry, KeyValue, KvStore, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT, REV_KEY_LEN, Revision,
    TOMBSTONE_MARK, in_range, max_key_len, parse_revision_key, revision_key,
};
pub use lease::{Expiry, Lease, LeaseId, LeaseItem, Lessor, MAX_LEASE_TTL, Renewal};
pub use membership::{
    CLUSTER_VERSION_KEY, Capabilities, DOWNGRADE_KEY, Downgrade, MAX_LEARNERS, MAX_MEMBER_URLS, Member, MemberId,
    Membership, NewMember, Version, check_peer_urls, member_key,
};
pub use txn::{Compare, CompareResult, CompareTarget, MAX_TXN_DEPTH, Txn, TxnNode, TxnOp};
pub use v2::{CLUSTER_PREFIX, V2Deprecation, V2Node, V2Store};

/// Reads every store a restore recovers from `backend` (leases, keys with their lease
/// attachments, alarms, auth, membership) and drops them, without writing: a snapshot store
/// calls it while persisting, off the apply loop's critical path, so a snapshot whose records
/// do not recover is refused before it can become the live backend. Recovering for real stays
/// the pipeline's: only it has bound the consistent index the recovery commits with.
pub fn check_backend<P: crate::collections::Profile, B: crate::backend::Backend>(
    backend: &B,
) -> Result<(), StoreError> {
    let txn = backend.read()?;
    // The TTL floor only clamps TTLs; it cannot make a lease fail to recover.
    let mut lessor = Lessor::<P>::load(&txn, 1)?;
    KvStore::<P>::load(&txn, &mut lessor)?;
    AlarmStore::<P>::load(&txn)?;
    AuthStore::<P>::load(&txn)?;
    let membership = Membership::<P>::load(&txn)?;
    // What the open phase refuses too: every check a restore makes is one `verify` makes.
    for m in membership.members() {
        check_peer_urls(crate::collections::Seq::len(&m.peer_urls))?;
    }
    Ok(())
}
