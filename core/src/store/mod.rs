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
mod v2;

pub use alarm::{Alarm, AlarmStore, AlarmType};
pub use auth::{
    AUTH_ENABLED_KEY, AUTH_REVISION_KEY, AuthStore, CachedPermission, Permission, PermissionType, ROOT_ROLE, Role,
    TokenProvider, User,
};
pub(crate) use cindex::save_conf_state;
pub use cindex::{ConsistentIndex, META_CONF_STATE, META_CONSISTENT_INDEX, META_TERM, load_conf_state};
pub use error::StoreError;
pub use kv::{
    IndexEntry, KeyValue, KvStore, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT, REV_KEY_LEN, Revision,
    TOMBSTONE_MARK, parse_revision_key, revision_key,
};
pub use lease::{Expiry, Lease, LeaseId, LeaseItem, Lessor};
pub use membership::{
    CLUSTER_VERSION_KEY, Capabilities, DOWNGRADE_KEY, Downgrade, MAX_MEMBER_URLS, Member, MemberId, Membership,
    NewMember, Version, member_key,
};
pub use v2::{CLUSTER_PREFIX, V2Deprecation, V2Node, V2Store};

/// The stores etcd restores after the backend swap (alarms, auth, v2, membership), read and
/// checked when the new backend is opened and installed with it at the swap.
#[derive(Debug)]
pub(crate) struct Later<P: crate::collections::Profile> {
    pub(crate) alarms: AlarmStore<P>,
    pub(crate) auth: AuthStore<P>,
    pub(crate) v2: V2Store<P>,
    pub(crate) membership: Membership<P>,
}
