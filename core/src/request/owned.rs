//! The owned form of a [`Request`] (feature `alloc`): what a host keeps in a log entry or
//! sends over a wire, encoded with postcard. It mirrors [`Request`] variant for variant, and
//! [`RequestBuf::with_request`] lends the borrowed form the stores apply, so a request has one
//! definition of what it carries and one encoding, whoever carries it.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::Request;
use crate::store::{self, Alarm, CompareResult, Downgrade, LeaseId, MemberId, NewMember, PermissionType, Version};

/// A [`Request`] that owns its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant is the same-named one of `Request`, which documents it.
pub enum RequestBuf {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: LeaseId,
    },
    DeleteRange {
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    /// A transaction's table, the top transaction first (see [`store::Txn`]).
    Txn(Vec<TxnNodeBuf>),
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: LeaseId,
        ttl: i64,
    },
    LeaseRevoke {
        id: LeaseId,
    },
    LeaseCheckpoint {
        id: LeaseId,
        remaining_ttl: i64,
    },
    AlarmActivate(Alarm),
    AlarmDeactivate(Alarm),
    AuthSetEnabled(bool),
    UserAdd {
        name: Vec<u8>,
        password_hash: Vec<u8>,
        no_password: bool,
    },
    RoleAdd {
        name: Vec<u8>,
    },
    RoleGrantPermission {
        role: Vec<u8>,
        kind: PermissionType,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    UserGrantRole {
        user: Vec<u8>,
        role: Vec<u8>,
    },
    UserDelete {
        name: Vec<u8>,
    },
    RoleDelete {
        name: Vec<u8>,
    },
    RoleRevokePermission {
        role: Vec<u8>,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    UserRevokeRole {
        user: Vec<u8>,
        role: Vec<u8>,
    },
    Authenticate {
        name: Vec<u8>,
    },
    UserChangePassword {
        name: Vec<u8>,
        password_hash: Vec<u8>,
    },
    MemberAdd(MemberBuf),
    MemberRemove {
        id: MemberId,
    },
    MemberUpdate {
        id: MemberId,
        peer_urls: Vec<Vec<u8>>,
    },
    MemberAttrSet {
        id: MemberId,
        name: Vec<u8>,
        client_urls: Vec<Vec<u8>>,
    },
    MemberPromote {
        id: MemberId,
    },
    ClusterVersion(Version),
    Downgrade(Downgrade),
}

/// The owned form of [`NewMember`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The fields of `NewMember`.
pub struct MemberBuf {
    pub id: MemberId,
    pub name: Vec<u8>,
    pub peer_urls: Vec<Vec<u8>>,
    pub client_urls: Vec<Vec<u8>>,
    pub is_learner: bool,
}

/// The owned form of [`store::TxnNode`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The fields of `store::TxnNode`.
pub struct TxnNodeBuf {
    pub compare: Vec<CompareBuf>,
    pub success: Vec<TxnOpBuf>,
    pub failure: Vec<TxnOpBuf>,
}

/// The owned form of [`store::Compare`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The fields of `store::Compare`.
pub struct CompareBuf {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTargetBuf,
}

/// The owned form of [`store::CompareTarget`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The variants of `store::CompareTarget`.
pub enum CompareTargetBuf {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(LeaseId),
}

/// The owned form of [`store::TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The variants of `store::TxnOp`.
pub enum TxnOpBuf {
    Range { key: Vec<u8>, range_end: Vec<u8> },
    Put { key: Vec<u8>, value: Vec<u8>, lease: LeaseId },
    DeleteRange { key: Vec<u8>, range_end: Vec<u8> },
    Txn(u32),
}

impl CompareBuf {
    fn borrowed(&self) -> store::Compare<'_> {
        let target = match &self.target {
            CompareTargetBuf::Version(v) => store::CompareTarget::Version(*v),
            CompareTargetBuf::CreateRevision(v) => store::CompareTarget::CreateRevision(*v),
            CompareTargetBuf::ModRevision(v) => store::CompareTarget::ModRevision(*v),
            CompareTargetBuf::Value(v) => store::CompareTarget::Value(v),
            CompareTargetBuf::Lease(v) => store::CompareTarget::Lease(*v),
        };
        store::Compare { key: &self.key, range_end: &self.range_end, result: self.result, target }
    }
}

impl TxnOpBuf {
    fn borrowed(&self) -> store::TxnOp<'_> {
        match self {
            TxnOpBuf::Range { key, range_end } => store::TxnOp::Range { key, range_end },
            TxnOpBuf::Put { key, value, lease } => store::TxnOp::Put { key, value, lease: *lease },
            TxnOpBuf::DeleteRange { key, range_end } => store::TxnOp::DeleteRange { key, range_end },
            TxnOpBuf::Txn(i) => store::TxnOp::Txn(*i),
        }
    }
}

fn slices(list: &[Vec<u8>]) -> Vec<&[u8]> {
    list.iter().map(Vec::as_slice).collect()
}

impl RequestBuf {
    /// Calls `f` with the borrowed [`Request`] (a transaction's table and a member's URL lists
    /// are built for the call).
    pub fn with_request<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        match self {
            RequestBuf::Txn(nodes) => {
                let compares: Vec<Vec<store::Compare<'_>>> =
                    nodes.iter().map(|n| n.compare.iter().map(CompareBuf::borrowed).collect()).collect();
                let ops: Vec<[Vec<store::TxnOp<'_>>; 2]> = nodes
                    .iter()
                    .map(|n| {
                        [
                            n.success.iter().map(TxnOpBuf::borrowed).collect(),
                            n.failure.iter().map(TxnOpBuf::borrowed).collect(),
                        ]
                    })
                    .collect();
                let table: Vec<store::TxnNode<'_>> = compares
                    .iter()
                    .zip(&ops)
                    .map(|(compare, [success, failure])| store::TxnNode { compare, success, failure })
                    .collect();
                f(&Request::Txn(store::Txn { nodes: &table }))
            }
            RequestBuf::MemberAdd(m) => {
                let (peer_urls, client_urls) = (slices(&m.peer_urls), slices(&m.client_urls));
                f(&Request::MemberAdd(NewMember {
                    id: m.id,
                    name: &m.name,
                    peer_urls: &peer_urls,
                    client_urls: &client_urls,
                    is_learner: m.is_learner,
                }))
            }
            RequestBuf::MemberUpdate { id, peer_urls } => {
                f(&Request::MemberUpdate { id: *id, peer_urls: &slices(peer_urls) })
            }
            RequestBuf::MemberAttrSet { id, name, client_urls } => {
                f(&Request::MemberAttrSet { id: *id, name, client_urls: &slices(client_urls) })
            }
            RequestBuf::Put { key, value, lease } => f(&Request::Put { key, value, lease: *lease }),
            RequestBuf::DeleteRange { key, range_end } => f(&Request::DeleteRange { key, range_end }),
            RequestBuf::Compact { revision } => f(&Request::Compact { revision: *revision }),
            RequestBuf::LeaseGrant { id, ttl } => f(&Request::LeaseGrant { id: *id, ttl: *ttl }),
            RequestBuf::LeaseRevoke { id } => f(&Request::LeaseRevoke { id: *id }),
            RequestBuf::LeaseCheckpoint { id, remaining_ttl } => {
                f(&Request::LeaseCheckpoint { id: *id, remaining_ttl: *remaining_ttl })
            }
            RequestBuf::AlarmActivate(a) => f(&Request::AlarmActivate(*a)),
            RequestBuf::AlarmDeactivate(a) => f(&Request::AlarmDeactivate(*a)),
            RequestBuf::AuthSetEnabled(on) => f(&Request::AuthSetEnabled(*on)),
            RequestBuf::UserAdd { name, password_hash, no_password } => {
                f(&Request::UserAdd { name, password_hash, no_password: *no_password })
            }
            RequestBuf::RoleAdd { name } => f(&Request::RoleAdd { name }),
            RequestBuf::RoleGrantPermission { role, kind, key, range_end } => {
                f(&Request::RoleGrantPermission { role, kind: *kind, key, range_end })
            }
            RequestBuf::UserGrantRole { user, role } => f(&Request::UserGrantRole { user, role }),
            RequestBuf::UserDelete { name } => f(&Request::UserDelete { name }),
            RequestBuf::RoleDelete { name } => f(&Request::RoleDelete { name }),
            RequestBuf::RoleRevokePermission { role, key, range_end } => {
                f(&Request::RoleRevokePermission { role, key, range_end })
            }
            RequestBuf::UserRevokeRole { user, role } => f(&Request::UserRevokeRole { user, role }),
            RequestBuf::Authenticate { name } => f(&Request::Authenticate { name }),
            RequestBuf::UserChangePassword { name, password_hash } => {
                f(&Request::UserChangePassword { name, password_hash })
            }
            RequestBuf::MemberRemove { id } => f(&Request::MemberRemove { id: *id }),
            RequestBuf::MemberPromote { id } => f(&Request::MemberPromote { id: *id }),
            RequestBuf::ClusterVersion(v) => f(&Request::ClusterVersion(*v)),
            RequestBuf::Downgrade(d) => f(&Request::Downgrade(*d)),
        }
    }

    /// The request's postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // postcard cannot fail to encode these types into a growable vector.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a request from its postcard encoding; `None` for bytes that are not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

impl From<&Request<'_>> for RequestBuf {
    fn from(request: &Request<'_>) -> Self {
        let owned = |list: &[&[u8]]| list.iter().map(|s| s.to_vec()).collect::<Vec<_>>();
        match *request {
            Request::Put { key, value, lease } => RequestBuf::Put { key: key.to_vec(), value: value.to_vec(), lease },
            Request::DeleteRange { key, range_end } => {
                RequestBuf::DeleteRange { key: key.to_vec(), range_end: range_end.to_vec() }
            }
            Request::Txn(t) => RequestBuf::Txn(t.nodes.iter().map(TxnNodeBuf::from).collect()),
            Request::Compact { revision } => RequestBuf::Compact { revision },
            Request::LeaseGrant { id, ttl } => RequestBuf::LeaseGrant { id, ttl },
            Request::LeaseRevoke { id } => RequestBuf::LeaseRevoke { id },
            Request::LeaseCheckpoint { id, remaining_ttl } => RequestBuf::LeaseCheckpoint { id, remaining_ttl },
            Request::AlarmActivate(a) => RequestBuf::AlarmActivate(a),
            Request::AlarmDeactivate(a) => RequestBuf::AlarmDeactivate(a),
            Request::AuthSetEnabled(on) => RequestBuf::AuthSetEnabled(on),
            Request::UserAdd { name, password_hash, no_password } => {
                RequestBuf::UserAdd { name: name.to_vec(), password_hash: password_hash.to_vec(), no_password }
            }
            Request::RoleAdd { name } => RequestBuf::RoleAdd { name: name.to_vec() },
            Request::RoleGrantPermission { role, kind, key, range_end } => RequestBuf::RoleGrantPermission {
                role: role.to_vec(),
                kind,
                key: key.to_vec(),
                range_end: range_end.to_vec(),
            },
            Request::UserGrantRole { user, role } => {
                RequestBuf::UserGrantRole { user: user.to_vec(), role: role.to_vec() }
            }
            Request::UserDelete { name } => RequestBuf::UserDelete { name: name.to_vec() },
            Request::RoleDelete { name } => RequestBuf::RoleDelete { name: name.to_vec() },
            Request::RoleRevokePermission { role, key, range_end } => RequestBuf::RoleRevokePermission {
                role: role.to_vec(),
                key: key.to_vec(),
                range_end: range_end.to_vec(),
            },
            Request::UserRevokeRole { user, role } => {
                RequestBuf::UserRevokeRole { user: user.to_vec(), role: role.to_vec() }
            }
            Request::Authenticate { name } => RequestBuf::Authenticate { name: name.to_vec() },
            Request::UserChangePassword { name, password_hash } => {
                RequestBuf::UserChangePassword { name: name.to_vec(), password_hash: password_hash.to_vec() }
            }
            Request::MemberAdd(m) => RequestBuf::MemberAdd(MemberBuf {
                id: m.id,
                name: m.name.to_vec(),
                peer_urls: owned(m.peer_urls),
                client_urls: owned(m.client_urls),
                is_learner: m.is_learner,
            }),
            Request::MemberRemove { id } => RequestBuf::MemberRemove { id },
            Request::MemberUpdate { id, peer_urls } => RequestBuf::MemberUpdate { id, peer_urls: owned(peer_urls) },
            Request::MemberAttrSet { id, name, client_urls } => {
                RequestBuf::MemberAttrSet { id, name: name.to_vec(), client_urls: owned(client_urls) }
            }
            Request::MemberPromote { id } => RequestBuf::MemberPromote { id },
            Request::ClusterVersion(v) => RequestBuf::ClusterVersion(v),
            Request::Downgrade(d) => RequestBuf::Downgrade(d),
        }
    }
}

impl From<&store::TxnNode<'_>> for TxnNodeBuf {
    fn from(node: &store::TxnNode<'_>) -> Self {
        let ops = |ops: &[store::TxnOp<'_>]| {
            ops.iter()
                .map(|op| match *op {
                    store::TxnOp::Range { key, range_end } => {
                        TxnOpBuf::Range { key: key.to_vec(), range_end: range_end.to_vec() }
                    }
                    store::TxnOp::Put { key, value, lease } => {
                        TxnOpBuf::Put { key: key.to_vec(), value: value.to_vec(), lease }
                    }
                    store::TxnOp::DeleteRange { key, range_end } => {
                        TxnOpBuf::DeleteRange { key: key.to_vec(), range_end: range_end.to_vec() }
                    }
                    store::TxnOp::Txn(i) => TxnOpBuf::Txn(i),
                })
                .collect()
        };
        let compare = node
            .compare
            .iter()
            .map(|c| CompareBuf {
                key: c.key.to_vec(),
                range_end: c.range_end.to_vec(),
                result: c.result,
                target: match c.target {
                    store::CompareTarget::Version(v) => CompareTargetBuf::Version(v),
                    store::CompareTarget::CreateRevision(v) => CompareTargetBuf::CreateRevision(v),
                    store::CompareTarget::ModRevision(v) => CompareTargetBuf::ModRevision(v),
                    store::CompareTarget::Value(v) => CompareTargetBuf::Value(v.to_vec()),
                    store::CompareTarget::Lease(v) => CompareTargetBuf::Lease(v),
                },
            })
            .collect();
        TxnNodeBuf { compare, success: ops(node.success), failure: ops(node.failure) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AlarmType;

    /// Every variant: borrowed → owned → encoded → decoded → borrowed gives the request back.
    #[test]
    fn every_request_round_trips_through_its_owned_form_and_encoding_and_borrowed_decoding() {
        let urls: [&[u8]; 2] = [b"http://a:1", b"http://b:2"];
        let compare = [store::Compare {
            key: b"k",
            range_end: b"",
            result: CompareResult::Greater,
            target: store::CompareTarget::Value(b"v"),
        }];
        let success = [store::TxnOp::Put { key: b"k", value: b"w", lease: 7 }, store::TxnOp::Txn(1)];
        let failure = [store::TxnOp::Range { key: b"a", range_end: b"z" }];
        let nested = [store::TxnOp::DeleteRange { key: b"d", range_end: b"" }];
        let table = [
            store::TxnNode { compare: &compare, success: &success, failure: &failure },
            store::TxnNode { compare: &[], success: &nested, failure: &[] },
        ];
        let alarm = Alarm { member: 3, kind: AlarmType::Nospace };
        let requests = [
            Request::Put { key: b"k", value: b"v", lease: 1 },
            Request::DeleteRange { key: b"a", range_end: b"b" },
            Request::Txn(store::Txn { nodes: &table }),
            Request::Compact { revision: 4 },
            Request::LeaseGrant { id: 5, ttl: 10 },
            Request::LeaseRevoke { id: 5 },
            Request::LeaseCheckpoint { id: 5, remaining_ttl: 3 },
            Request::AlarmActivate(alarm),
            Request::AlarmDeactivate(Alarm { kind: AlarmType::Corrupt, ..alarm }),
            Request::AuthSetEnabled(true),
            Request::UserAdd { name: b"u", password_hash: b"h", no_password: false },
            Request::RoleAdd { name: b"r" },
            Request::RoleGrantPermission { role: b"r", kind: PermissionType::ReadWrite, key: b"a", range_end: b"b" },
            Request::UserGrantRole { user: b"u", role: b"r" },
            Request::UserDelete { name: b"u" },
            Request::RoleDelete { name: b"r" },
            Request::RoleRevokePermission { role: b"r", key: b"a", range_end: b"b" },
            Request::UserRevokeRole { user: b"u", role: b"r" },
            Request::Authenticate { name: b"u" },
            Request::UserChangePassword { name: b"u", password_hash: b"h2" },
            Request::MemberAdd(NewMember {
                id: 9,
                name: b"m",
                peer_urls: &urls,
                client_urls: &urls[..1],
                is_learner: true,
            }),
            Request::MemberRemove { id: 9 },
            Request::MemberUpdate { id: 9, peer_urls: &urls },
            Request::MemberAttrSet { id: 9, name: b"m", client_urls: &urls },
            Request::MemberPromote { id: 9 },
            Request::ClusterVersion(Version { major: 3, minor: 5, patch: 0 }),
            Request::Downgrade(Downgrade { enabled: true, target: Version { major: 3, minor: 4, patch: 0 } }),
        ];
        for request in &requests {
            let owned = RequestBuf::from(request);
            let bytes = owned.encode();
            let decoded = RequestBuf::decode(&bytes);
            assert_eq!(decoded.as_ref(), Some(&owned), "{request:?}");
            owned.with_request(|back| assert_eq!(back, request));
            // Without a heap: every request but those with a list, from the same bytes.
            let has_list = matches!(
                request,
                Request::Txn(_) | Request::MemberAdd(_) | Request::MemberUpdate { .. } | Request::MemberAttrSet { .. }
            );
            let borrowed = Request::decode(&bytes);
            assert_eq!(borrowed.as_ref(), if has_list { None } else { Some(request) }, "{request:?}");
            // Bytes left over are no request.
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Request::decode(&longer), None, "{request:?}");
        }
        assert_eq!(RequestBuf::decode(&[0xff, 0xff, 0xff]), None);
        assert_eq!(Request::decode(&[0xff, 0xff, 0xff]), None);
        assert_eq!(Request::decode(&[]), None);
    }
}
