//! What committed entries carry: the core's requests (their owned form, [`RequestBuf`], and its
//! encoding are the core's) and the members of conf changes, encoded with postcard (the records'
//! encoding; see docs/records.md).

use serde::{Deserialize, Serialize};
use snapply_core::{Request, RequestBuf};

/// What a committed normal entry carries: a request every member applies as it is, or one of
/// the two whose application is each member's own (a token issued, a request checked again
/// against the auth state it was proposed at).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// A request, applied by every member as the core applies it.
    Apply(RequestBuf),
    /// Issue a token to a user whose password the proposer checked (etcd's
    /// `InternalAuthenticateRequest`): every member applying it gives the user the same token,
    /// `<prefix>.<raft index>`, as etcd's simple tokens are.
    Authenticate {
        /// The user.
        name: Vec<u8>,
        /// The token's random part.
        prefix: String,
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
}

impl From<RequestBuf> for Command {
    fn from(request: RequestBuf) -> Self {
        Command::Apply(request)
    }
}

impl Command {
    /// Calls `f` with the core's request for this command.
    pub fn with_request<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        match self {
            Command::Apply(request) => request.with_request(f),
            Command::Authenticate { name, .. } => f(&Request::Authenticate { name }),
            Command::Checked { command, .. } => command.with_request(f),
        }
    }

    /// The request every member applies, for a command that is one.
    pub fn request(&self) -> Option<&RequestBuf> {
        match self {
            Command::Apply(request) => Some(request),
            Command::Checked { command, .. } => command.request(),
            Command::Authenticate { .. } => None,
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
        let put = RequestBuf::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 3 };
        let checked = Command::Checked {
            user: b"u".to_vec(),
            auth_revision: 4,
            needs: vec![],
            command: Box::new(Command::Apply(put.clone())),
        };
        assert_eq!(Command::decode(&checked.encode()), Some(checked.clone()));
        checked.with_request(|r| assert_eq!(*r, Request::Put { key: b"k", value: b"v", lease: 3 }));
        assert_eq!(checked.request(), Some(&put));
        let token = Command::Authenticate { name: b"u".to_vec(), prefix: "abc".into() };
        assert_eq!(Command::decode(&token.encode()), Some(token.clone()));
        token.with_request(|r| assert_eq!(*r, Request::Authenticate { name: b"u" }));
        assert_eq!(token.request(), None);
        let m = MemberInfo { name: "a".into(), peer_urls: vec!["http://127.0.0.1:1".into()], client_urls: vec![] };
        assert_eq!(MemberInfo::decode(&m.encode()), Some(m));
        assert_eq!(Command::decode(&[0xff, 0xff, 0xff]), None);
    }
}
