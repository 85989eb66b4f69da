//! What committed entries carry: snapply's requests and the members of conf changes, encoded
//! with postcard (the records' encoding; see docs/records.md).

use serde::{Deserialize, Serialize};
use snapply_core::Request;
use snapply_core::store::{self, Alarm, AlarmType};

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
    /// A transaction: the owned form of the core's [`store::Txn`] table, the top transaction
    /// first (see [`TxnNode`]).
    Txn(Vec<TxnNode>),
    /// Grant a role a permission on `[key, range_end)`.
    RoleGrantPermission {
        /// The role.
        role: Vec<u8>,
        /// What is permitted.
        kind: store::PermissionType,
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// Revoke a role's permission on exactly `[key, range_end)`.
    RoleRevokePermission {
        /// The role.
        role: Vec<u8>,
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// Revoke a role from a user.
    UserRevokeRole {
        /// The user.
        user: Vec<u8>,
        /// The role.
        role: Vec<u8>,
    },
    /// Delete a user (and the tokens issued to it).
    UserDelete {
        /// The name.
        name: Vec<u8>,
    },
    /// Delete a role, revoking it from every user.
    RoleDelete {
        /// The name.
        name: Vec<u8>,
    },
    /// Replace a user's password hash (and drop the tokens issued to it).
    UserChangePassword {
        /// The name.
        name: Vec<u8>,
        /// The new hash.
        password_hash: Vec<u8>,
    },
    /// Issue a token to a user whose password the proposer checked (etcd's
    /// `InternalAuthenticateRequest`): every member applying it gives the user the same token,
    /// `<prefix>.<raft index>`, as etcd's simple tokens are.
    Authenticate {
        /// The user.
        name: Vec<u8>,
        /// The token's random part.
        prefix: String,
    },
    /// Replace a member's peer URLs (etcd's `MemberUpdate`; raft-rs has no conf change for it,
    /// so it is a normal entry).
    MemberUpdate {
        /// The member.
        id: u64,
        /// Its new peer URLs.
        peer_urls: Vec<Vec<u8>>,
    },
    /// A client's request with the auth it was checked with when proposed (etcd's request
    /// header: user name and auth revision), checked again when it is applied
    /// (`crate::auth::unwrap_checked`).
    Checked {
        /// The user.
        user: Vec<u8>,
        /// The auth revision the request was checked at.
        auth_revision: u64,
        /// What the request needs of the user.
        needs: Vec<crate::Need>,
        /// The request.
        command: Box<Command>,
    },
    /// Set the name and client URLs a member publishes once it started (etcd's
    /// `ClusterMemberAttrSetRequest`).
    MemberAttrSet {
        /// The member.
        id: u64,
        /// Its name (`--name`).
        name: Vec<u8>,
        /// Its client URLs (`--advertise-client-urls`).
        client_urls: Vec<Vec<u8>>,
    },
}

/// One transaction of a [`Command::Txn`] table (the owned form of [`store::TxnNode`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnNode {
    /// Compares, all of which must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// The ops run when every compare holds.
    pub success: Vec<TxnOp>,
    /// The ops run otherwise.
    pub failure: Vec<TxnOp>,
}

/// A compare of a transaction (the owned form of [`store::Compare`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key, or the start of the range.
    pub key: Vec<u8>,
    /// The end of the range (empty: just `key`; `[0]`: every key from `key` on).
    pub range_end: Vec<u8>,
    /// How the key's field must compare with the target.
    pub result: CompareResult,
    /// The field compared and the value it is compared with.
    pub target: CompareTarget,
}

/// How a compare's target is compared (etcd's `Compare.CompareResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Greater.
    Greater,
    /// Less.
    Less,
    /// Not equal.
    NotEqual,
}

/// What a compare compares (etcd's `Compare.target_union`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version.
    Version(i64),
    /// The key's create revision.
    CreateRevision(i64),
    /// The key's mod revision.
    ModRevision(i64),
    /// The key's value.
    Value(Vec<u8>),
    /// The key's lease.
    Lease(i64),
}

/// An op of a transaction's branch (the owned form of [`store::TxnOp`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// A range read.
    Range {
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// A put.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease, 0 for none.
        lease: i64,
    },
    /// A delete of `[key, range_end)`.
    DeleteRange {
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// The nested transaction at this index of the table (after the one holding it).
    Txn(u32),
}

impl Compare {
    fn borrowed(&self) -> store::Compare<'_> {
        let result = match self.result {
            CompareResult::Equal => store::CompareResult::Equal,
            CompareResult::Greater => store::CompareResult::Greater,
            CompareResult::Less => store::CompareResult::Less,
            CompareResult::NotEqual => store::CompareResult::NotEqual,
        };
        let target = match &self.target {
            CompareTarget::Version(v) => store::CompareTarget::Version(*v),
            CompareTarget::CreateRevision(v) => store::CompareTarget::CreateRevision(*v),
            CompareTarget::ModRevision(v) => store::CompareTarget::ModRevision(*v),
            CompareTarget::Value(v) => store::CompareTarget::Value(v),
            CompareTarget::Lease(v) => store::CompareTarget::Lease(*v),
        };
        store::Compare { key: &self.key, range_end: &self.range_end, result, target }
    }
}

impl TxnOp {
    fn borrowed(&self) -> store::TxnOp<'_> {
        match self {
            TxnOp::Range { key, range_end } => store::TxnOp::Range { key, range_end },
            TxnOp::Put { key, value, lease } => store::TxnOp::Put { key, value, lease: *lease },
            TxnOp::DeleteRange { key, range_end } => store::TxnOp::DeleteRange { key, range_end },
            TxnOp::Txn(i) => store::TxnOp::Txn(*i),
        }
    }
}

impl Command {
    /// Calls `f` with the core's request for this command (a transaction's borrowed table is
    /// built for the call).
    pub fn with_request<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let nodes = match self {
            Command::Txn(nodes) => nodes,
            Command::Checked { command, .. } => return command.with_request(f),
            Command::MemberUpdate { id, peer_urls } => {
                let peer_urls: Vec<&[u8]> = peer_urls.iter().map(Vec::as_slice).collect();
                return f(&Request::MemberUpdate { id: *id, peer_urls: &peer_urls });
            }
            Command::MemberAttrSet { id, name, client_urls } => {
                let client_urls: Vec<&[u8]> = client_urls.iter().map(Vec::as_slice).collect();
                return f(&Request::MemberAttrSet { id: *id, name, client_urls: &client_urls });
            }
            _ => return f(&self.request()),
        };
        let compares: Vec<Vec<store::Compare<'_>>> =
            nodes.iter().map(|n| n.compare.iter().map(Compare::borrowed).collect()).collect();
        let ops: Vec<[Vec<store::TxnOp<'_>>; 2]> = nodes
            .iter()
            .map(|n| [n.success.iter().map(TxnOp::borrowed).collect(), n.failure.iter().map(TxnOp::borrowed).collect()])
            .collect();
        let table: Vec<store::TxnNode<'_>> = compares
            .iter()
            .zip(&ops)
            .map(|(compare, [success, failure])| store::TxnNode { compare, success, failure })
            .collect();
        f(&Request::Txn(store::Txn { nodes: &table }))
    }

    /// The core's request for a command that is not a transaction (a transaction's table and a
    /// member's URLs are built by [`Command::with_request`]; here they are empty).
    fn request(&self) -> Request<'_> {
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
            Command::Txn(_) => Request::Txn(store::Txn { nodes: &[] }),
            Command::RoleGrantPermission { role, kind, key, range_end } => {
                Request::RoleGrantPermission { role, kind: *kind, key, range_end }
            }
            Command::RoleRevokePermission { role, key, range_end } => {
                Request::RoleRevokePermission { role, key, range_end }
            }
            Command::UserRevokeRole { user, role } => Request::UserRevokeRole { user, role },
            Command::UserDelete { name } => Request::UserDelete { name },
            Command::RoleDelete { name } => Request::RoleDelete { name },
            Command::UserChangePassword { name, password_hash } => Request::UserChangePassword { name, password_hash },
            // Answered by `with_request`, which takes the request inside.
            Command::Checked { command, .. } => command.request(),
            Command::Authenticate { name, .. } => Request::Authenticate { name },
            Command::MemberUpdate { id, .. } => Request::MemberUpdate { id: *id, peer_urls: &[] },
            Command::MemberAttrSet { id, name, .. } => Request::MemberAttrSet { id: *id, name, client_urls: &[] },
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
        c.with_request(|r| assert_eq!(*r, Request::Put { key: b"k", value: b"v", lease: 3 }));
        let txn = Command::Txn(vec![
            TxnNode {
                compare: vec![Compare {
                    key: b"k".to_vec(),
                    range_end: vec![],
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(b"v".to_vec()),
                }],
                success: vec![TxnOp::Txn(1)],
                failure: vec![TxnOp::Range { key: b"k".to_vec(), range_end: vec![] }],
            },
            TxnNode {
                success: vec![TxnOp::Put { key: b"n".to_vec(), value: b"1".to_vec(), lease: 0 }],
                ..TxnNode::default()
            },
        ]);
        assert_eq!(Command::decode(&txn.encode()), Some(txn.clone()));
        txn.with_request(|r| {
            let Request::Txn(t) = r else { panic!("{r:?}") };
            assert_eq!(t.nodes.len(), 2);
            assert_eq!(t.nodes[0].compare[0].target, store::CompareTarget::Value(b"v"));
            assert_eq!(t.nodes[0].success, [store::TxnOp::Txn(1)]);
            assert_eq!(t.nodes[1].success, [store::TxnOp::Put { key: b"n", value: b"1", lease: 0 }]);
        });
        let m = MemberInfo { name: "a".into(), peer_urls: vec!["http://127.0.0.1:1".into()], client_urls: vec![] };
        assert_eq!(MemberInfo::decode(&m.encode()), Some(m));
        assert_eq!(Command::decode(&[0xff, 0xff, 0xff]), None);
        let update = Command::MemberUpdate { id: 7, peer_urls: vec![b"http://127.0.0.1:9".to_vec()] };
        assert_eq!(Command::decode(&update.encode()), Some(update.clone()));
        update.with_request(|r| {
            assert_eq!(*r, Request::MemberUpdate { id: 7, peer_urls: &[b"http://127.0.0.1:9"] });
        });
        let attrs = Command::MemberAttrSet { id: 7, name: b"m".to_vec(), client_urls: vec![b"http://c".to_vec()] };
        assert_eq!(Command::decode(&attrs.encode()), Some(attrs.clone()));
        attrs.with_request(|r| {
            assert_eq!(*r, Request::MemberAttrSet { id: 7, name: b"m", client_urls: &[b"http://c"] });
        });
    }
}
