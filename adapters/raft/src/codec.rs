//! What committed entries carry: snapply's requests and the members of conf changes, encoded
//! with postcard (the records' encoding; see docs/records.md).

use serde::{Deserialize, Serialize};
use snapply_core::Request;
use snapply_core::store::{Alarm, AlarmType};

/// A request a client proposes, as a committed normal entry carries it: the owned form of the
/// core's [`Request`] for the requests snapply's clients make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Put `value` under `key`, attached to `lease` (0 for none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease, 0 for none.
        lease: i64,
    },
    /// Delete `[key, range_end)` (an empty `range_end`: just `key`).
    DeleteRange {
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// Compact the key-value history at `revision`.
    Compact {
        /// The revision.
        revision: i64,
    },
    /// Grant a lease.
    LeaseGrant {
        /// The id.
        id: i64,
        /// The TTL in seconds.
        ttl: i64,
    },
    /// Revoke a lease and delete its keys.
    LeaseRevoke {
        /// The id.
        id: i64,
    },
    /// Raise (or clear) an alarm for `member`.
    Alarm {
        /// The member.
        member: u64,
        /// `NOSPACE` if true, `CORRUPT` otherwise.
        nospace: bool,
        /// Raise if true, clear otherwise.
        activate: bool,
    },
    /// Enable or disable auth.
    AuthSetEnabled(bool),
    /// Add a user.
    UserAdd {
        /// The name.
        name: Vec<u8>,
        /// The password hash.
        password_hash: Vec<u8>,
    },
    /// Add a role.
    RoleAdd {
        /// The name.
        name: Vec<u8>,
    },
    /// Grant a user a role.
    UserGrantRole {
        /// The user.
        user: Vec<u8>,
        /// The role.
        role: Vec<u8>,
    },
}

impl Command {
    /// The core's request for this command.
    pub fn request(&self) -> Request<'_> {
        match self {
            Command::Put { key, value, lease } => Request::Put { key, value, lease: *lease },
            Command::DeleteRange { key, range_end } => Request::DeleteRange { key, range_end },
            Command::Compact { revision } => Request::Compact { revision: *revision },
            Command::LeaseGrant { id, ttl } => Request::LeaseGrant { id: *id, ttl: *ttl },
            Command::LeaseRevoke { id } => Request::LeaseRevoke { id: *id },
            Command::Alarm { member, nospace, activate } => {
                let kind = if *nospace { AlarmType::Nospace } else { AlarmType::Corrupt };
                let alarm = Alarm { member: *member, kind };
                if *activate { Request::AlarmActivate(alarm) } else { Request::AlarmDeactivate(alarm) }
            }
            Command::AuthSetEnabled(on) => Request::AuthSetEnabled(*on),
            Command::UserAdd { name, password_hash } => {
                Request::UserAdd { name, password_hash, no_password: password_hash.is_empty() }
            }
            Command::RoleAdd { name } => Request::RoleAdd { name },
            Command::UserGrantRole { user, role } => Request::UserGrantRole { user, role },
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // postcard cannot fail to encode these types into a growable vector.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A cluster member as a conf change's context carries it (etcd puts the `Member` in
/// `ConfChange.Context` the same way).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's name.
    pub name: String,
    /// URLs peers reach it at (`http://127.0.0.1:2380`).
    pub peer_urls: Vec<String>,
    /// URLs clients reach it at.
    pub client_urls: Vec<String>,
}

impl MemberInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_members_round_trip_and_garbage_is_refused() {
        let c = Command::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 3 };
        assert_eq!(Command::decode(&c.encode()), Some(c.clone()));
        assert_eq!(c.request(), Request::Put { key: b"k", value: b"v", lease: 3 });
        let m = MemberInfo { name: "a".into(), peer_urls: vec!["http://127.0.0.1:1".into()], client_urls: vec![] };
        assert_eq!(MemberInfo::decode(&m.encode()), Some(m));
        assert_eq!(Command::decode(&[0xff, 0xff, 0xff]), None);
    }
}
