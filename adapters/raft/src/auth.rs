//! Auth around a running member's store, as etcd's `authStore` serves it: simple tokens
//! (etcd's `tokenSimple`), password hashes (bcrypt, as etcd keeps them), and the permission
//! checks a client API makes before it serves or proposes a request (etcd's `authApplierV3`).
//!
//! The users, roles and permissions are the core's [`snapply_core::store::AuthStore`], changed
//! only through committed entries. A token is each member's own state, as etcd's simple tokens
//! are: every member applying an `Authenticate` entry gives the user the same token,
//! `<16 random letters>.<raft index>`, which lives in memory until it is unused for the TTL
//! (`--auth-token-ttl`, 300 s), its user is deleted or changes password, or auth is disabled.

use snapply_core::RequestBuf;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use snapply_core::store::{AUTH_FAILED, AUTH_NOT_ENABLED, PermissionType, ROOT_ROLE, StoreError};

use crate::codec::Command;
use crate::error::RaftError;
use crate::node::{Client, Control};
use crate::query::{Header, View, header};

/// etcd's `--auth-token-ttl` default: a simple token unused this long is dropped.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// etcd's `--bcrypt-cost` default.
pub const DEFAULT_BCRYPT_COST: u32 = bcrypt::DEFAULT_COST;

/// The letters of a token's random part (etcd's `genTokenPrefix`).
const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// The length of a token's random part.
const TOKEN_PREFIX_LEN: usize = 16;

/// What auth refused, with etcd's meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// Auth is enabled and the request carries no token (etcd's `ErrUserEmpty`).
    UserEmpty,
    /// The token is not one this member issued, or it expired (`ErrInvalidAuthToken`).
    InvalidToken,
    /// The user may not do this (`ErrPermissionDenied`).
    PermissionDenied,
    /// The user of an admin check is not there (`IsAdminPermitted`'s `ErrUserNotFound`).
    UserNotFound,
    /// Wrong user or password, or a user without a password (`ErrAuthFailed`).
    AuthFailed,
    /// Auth is not enabled (`ErrAuthNotEnabled`).
    NotEnabled,
    /// The auth state changed between the request's check and its apply (`ErrAuthOldRevision`):
    /// it changed nothing, and is checked and proposed again.
    OldRevision,
    /// A password could not be hashed (a `--bcrypt-cost` out of bcrypt's 4..=31, or no
    /// randomness).
    Hash(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::UserEmpty => f.write_str("user name is empty"),
            AuthError::InvalidToken => f.write_str("invalid auth token"),
            AuthError::PermissionDenied => f.write_str("permission denied"),
            AuthError::UserNotFound => f.write_str("user name not found"),
            AuthError::AuthFailed => f.write_str(AUTH_FAILED),
            AuthError::NotEnabled => f.write_str(AUTH_NOT_ENABLED),
            AuthError::OldRevision => f.write_str("revision of auth store is old"),
            AuthError::Hash(e) => write!(f, "hashing a password: {e}"),
        }
    }
}

impl From<AuthError> for RaftError {
    fn from(e: AuthError) -> Self {
        RaftError::Auth(e)
    }
}

/// What a request needs of its user (the checks of etcd's `authApplierV3`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Need {
    /// Read permission on every key of `[key, range_end)` (etcd's range conventions).
    Read {
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// Write permission on every key of `[key, range_end)`.
    Write {
        /// The key or start of the range.
        key: Vec<u8>,
        /// The end of the range.
        range_end: Vec<u8>,
    },
    /// Write permission on every key attached to the lease, or the root role (etcd's
    /// `checkLeasePuts`: who attaches a key to a lease or revokes it could delete them all).
    LeaseKeys(i64),
    /// The root role (etcd's `IsAdminPermitted`).
    Admin,
    /// The root role, or being the user named (etcd's `UserGet` of oneself).
    AdminOrUser(Vec<u8>),
    /// The root role, or holding the role named (etcd's `RoleGet` of one's own role).
    AdminOrRole(Vec<u8>),
}

/// A request's auth as [`Client::authorize`] checked it: the user, the auth revision and the
/// needs, carried with the request's entry (etcd's request header) and checked again as it is
/// applied. A [`Client::with_auth`] proposes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    user: Vec<u8>,
    revision: u64,
    needs: Vec<Need>,
}

impl Authorized {
    /// The user.
    pub fn user(&self) -> &[u8] {
        &self.user
    }

    /// The auth revision the request was checked at.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `command`, carrying this auth.
    pub(crate) fn stamp(&self, command: Command) -> Command {
        Command::Checked {
            user: self.user.clone(),
            auth_revision: self.revision,
            needs: self.needs.clone(),
            command: Box::new(command),
        }
    }
}

/// etcd's apply-time check of a request proposed with its auth ([`Command::Checked`]): with
/// auth enabled, a request checked at an older auth revision is refused (the client's member
/// checks it again and proposes it anew), and its needs are checked again; the request inside
/// is what is applied. Deterministic: every member applies it on the same auth state.
pub(crate) fn unwrap_checked(view: &View<'_>, command: Command) -> Result<Command, AuthError> {
    let Command::Checked { user, auth_revision, needs, command } = command else { return Ok(command) };
    let auth = &view.node.stores().auth;
    if auth.is_enabled() {
        if auth_revision < auth.revision() {
            return Err(AuthError::OldRevision);
        }
        needs.iter().try_for_each(|need| check(view, &user, need))?;
    }
    Ok(*command)
}

/// A user as etcd's `AuthUserGet` and `AuthUserList` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// The name.
    pub name: Vec<u8>,
    /// The roles granted, sorted.
    pub roles: Vec<Vec<u8>>,
}

/// A permission of a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionInfo {
    /// What it allows.
    pub kind: PermissionType,
    /// The key or start of the range.
    pub key: Vec<u8>,
    /// The end of the range.
    pub range_end: Vec<u8>,
}

/// A role as etcd's `AuthRoleGet` and `AuthRoleList` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    /// The name.
    pub name: Vec<u8>,
    /// The permissions, sorted by key.
    pub permissions: Vec<PermissionInfo>,
}

/// The member's simple tokens: token → user and when it expires unless used.
#[derive(Debug)]
pub(crate) struct Tokens {
    ttl: Duration,
    issued: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Tokens { ttl, issued: Mutex::new(HashMap::new()) })
    }

    fn issued(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.issued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues `token` to `user`; drops the tokens that expired, so the map holds only live ones.
    pub(crate) fn assign(&self, token: String, user: &[u8], now: Instant) {
        let mut issued = self.issued();
        issued.retain(|_, (_, expires)| *expires > now);
        issued.insert(token, (user.to_vec(), now + self.ttl));
    }

    /// The user `token` was issued to, if it is live; using it keeps it alive for another TTL.
    pub(crate) fn user(&self, token: &str, now: Instant) -> Option<Vec<u8>> {
        let mut issued = self.issued();
        match issued.get_mut(token) {
            Some((user, expires)) if *expires > now => {
                *expires = now + self.ttl;
                Some(user.clone())
            }
            Some(_) => {
                issued.remove(token);
                None
            }
            None => None,
        }
    }

    /// Keeps only the tokens of users `keep` accepts.
    pub(crate) fn retain_users(&self, keep: impl Fn(&[u8]) -> bool) {
        self.issued().retain(|_, (user, _)| keep(user));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.issued().len()
    }
}

/// What applying `command` at `index` does to the member's tokens (etcd's token provider
/// hooks): an `Authenticate` issues one, a deleted user or changed password loses theirs, and
/// disabling auth drops them all. `applied` says whether the store took the command.
pub(crate) fn applied(tokens: &Tokens, command: &Command, index: u64, applied: bool) {
    if !applied {
        return;
    }
    match command {
        Command::Authenticate { name, prefix } => tokens.assign(format!("{prefix}.{index}"), name, Instant::now()),
        Command::Apply(RequestBuf::UserDelete { name })
        | Command::Apply(RequestBuf::UserChangePassword { name, .. }) => tokens.retain_users(|u| u != name.as_slice()),
        Command::Apply(RequestBuf::AuthSetEnabled(false)) => tokens.retain_users(|_| false),
        _ => {}
    }
}

/// After a snapshot replaced the stores: tokens survive only for users still there, and none
/// when auth is now disabled (etcd's `authStore.Recover` disables its provider then).
pub(crate) fn restored(tokens: &Tokens, view: &View<'_>) {
    let auth = &view.node.stores().auth;
    let enabled = auth.is_enabled();
    tokens.retain_users(|user| enabled && auth.users().iter().any(|u| u.name.as_slice() == user));
}

/// A token's random part: 16 letters drawn from the system's random source (etcd draws them
/// from `crypto/rand` the same way).
fn token_prefix() -> Result<String, AuthError> {
    let mut prefix = String::with_capacity(TOKEN_PREFIX_LEN);
    let mut bytes = [0u8; 32];
    while prefix.len() < TOKEN_PREFIX_LEN {
        getrandom::fill(&mut bytes).map_err(|e| AuthError::Hash(format!("no randomness: {e}")))?;
        // Rejection sampling: 208 = 4 × 52, so every letter is equally likely.
        let letters = bytes.iter().filter(|b| **b < 208).filter_map(|b| LETTERS.get(usize::from(*b) % LETTERS.len()));
        prefix.extend(letters.take(TOKEN_PREFIX_LEN - prefix.len()).map(|l| char::from(*l)));
    }
    Ok(prefix)
}

/// Hashes `password` with bcrypt at `cost` (etcd's `bcrypt.GenerateFromPassword`), off the
/// async workers: a cost of 10 takes tens of milliseconds.
///
/// # Errors
/// [`AuthError::Hash`] for a cost outside 4..=31.
pub async fn hash_password(password: String, cost: u32) -> Result<Vec<u8>, RaftError> {
    let hashed = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hashed.map_err(|e| AuthError::Hash(e.to_string()))?.into_bytes())
}

/// What one auth check on the loop found.
enum Checked {
    /// The answer.
    Done(Result<Option<Authorized>, AuthError>),
    /// The token is not known here, and names an entry this member has not applied yet.
    NotYet(u64),
}

/// Checks one need of `user`'s request against the auth store.
fn check(view: &View<'_>, user: &[u8], need: &Need) -> Result<(), AuthError> {
    let auth = &view.node.stores().auth;
    let is_admin = || -> Result<(), AuthError> {
        let u = auth.users().iter().find(|u| u.name.as_slice() == user).ok_or(AuthError::UserNotFound)?;
        if u.roles.as_slice().iter().any(|r| r.as_slice() == ROOT_ROLE) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    };
    let permitted = |ok: bool| if ok { Ok(()) } else { Err(AuthError::PermissionDenied) };
    match need {
        Need::Read { key, range_end } => permitted(auth.is_range_permitted(user, key, range_end, false)),
        Need::Write { key, range_end } => permitted(auth.is_range_permitted(user, key, range_end, true)),
        Need::Admin => is_admin(),
        Need::AdminOrUser(name) if name.as_slice() == user => Ok(()),
        Need::AdminOrRole(role)
            if auth.users().iter().any(|u| {
                u.name.as_slice() == user && u.roles.as_slice().iter().any(|r| r.as_slice() == role.as_slice())
            }) =>
        {
            Ok(())
        }
        Need::AdminOrUser(_) | Need::AdminOrRole(_) => is_admin(),
        Need::LeaseKeys(id) => {
            if is_admin().is_ok() {
                return Ok(());
            }
            let lessor = &view.node.stores().lessor;
            let mut keys = lessor.items().iter().filter(|i| i.lease == *id);
            permitted(keys.all(|i| auth.is_permitted(user, i.key.as_slice(), true)))
        }
    }
}

fn store_to_auth(e: RaftError) -> RaftError {
    match e {
        RaftError::Store(StoreError::InvalidRequest(m)) if m == AUTH_FAILED => AuthError::AuthFailed.into(),
        RaftError::Store(StoreError::InvalidRequest(m)) if m == AUTH_NOT_ENABLED => AuthError::NotEnabled.into(),
        e => e,
    }
}

impl Client {
    /// Checks a request carrying `token` (etcd's `token` metadata) against `needs`, on the
    /// member's applied auth state; returns what was checked (to propose the request with,
    /// [`Client::with_auth`]), or `None` when auth is disabled (then
    /// everything is permitted and the token is not looked at, as etcd's `AuthInfoFromCtx`).
    ///
    /// A token that is not live is refused even for a request that needs nothing; a request
    /// without one is refused only when it needs something ([`AuthError::UserEmpty`]).
    ///
    /// The check is made before the request is proposed; etcd makes it again as it applies the
    /// request, against an auth revision, so that a permission revoked in between is seen.
    /// docs/etcd-differences.md says what that leaves.
    ///
    /// # Errors
    /// [`RaftError::Auth`] with what was refused; [`RaftError::Stopped`] or
    /// [`RaftError::Timeout`].
    pub async fn authorize(&self, token: Option<String>, needs: Vec<Need>) -> Result<Option<Authorized>, RaftError> {
        match self.check(token.clone(), needs.clone()).await? {
            Checked::Done(result) => Ok(result?),
            // A token names the index of the entry that issued it: a member that has not
            // applied that far yet (a follower a moment behind) waits until it has, or refuses
            // the token after the request timeout, as etcd's `isValidSimpleToken` waits.
            Checked::NotYet(index) => {
                let applied = self.ask(|tx| Control::WaitApplied(index, tx), "a token's entry to be applied").await;
                if !matches!(applied, Ok(Ok(()))) {
                    return Err(AuthError::InvalidToken.into());
                }
                match self.check(token, needs).await? {
                    Checked::Done(result) => Ok(result?),
                    Checked::NotYet(_) => Err(AuthError::InvalidToken.into()),
                }
            }
        }
    }

    /// One check on the loop (see [`Client::authorize`]).
    async fn check(&self, token: Option<String>, needs: Vec<Need>) -> Result<Checked, RaftError> {
        let tokens = self.tokens.clone();
        self.read_local(
            move |view| {
                if !view.node.stores().auth.is_enabled() {
                    return Checked::Done(Ok(None));
                }
                let user = match token {
                    Some(token) => match tokens.user(&token, Instant::now()) {
                        Some(user) => user,
                        None => {
                            let index = token.rsplit_once('.').and_then(|(_, i)| i.parse::<u64>().ok());
                            return match index {
                                Some(i) if i > view.node.progress().applied_index => Checked::NotYet(i),
                                _ => Checked::Done(Err(AuthError::InvalidToken)),
                            };
                        }
                    },
                    None if needs.is_empty() => return Checked::Done(Ok(None)),
                    None => return Checked::Done(Err(AuthError::UserEmpty)),
                };
                let revision = view.node.stores().auth.revision();
                let checked = needs.iter().try_for_each(|need| check(view, &user, need));
                Checked::Done(checked.map(|()| Some(Authorized { user, revision, needs })))
            },
            "an auth check",
        )
        .await
    }

    /// This client, proposing every request with `auth` (etcd's request header), so that it is
    /// checked again as it is applied ([`AuthError::OldRevision`] if the auth state changed
    /// since). `None`: as this client.
    pub fn with_auth(&self, auth: Option<Authorized>) -> Client {
        let mut client = self.clone();
        client.auth = auth.map(std::sync::Arc::new);
        client
    }

    /// etcd's `Authenticate`: after a linearizable read barrier, checks `password` against the
    /// user's bcrypt hash (off the async workers), then proposes the token's issue, so every
    /// member knows it; returns the header and the token.
    ///
    /// # Errors
    /// [`AuthError::NotEnabled`], [`AuthError::AuthFailed`] (no such user, a user without a
    /// password, or a wrong password), or as [`Client::propose`].
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<(Header, String), RaftError> {
        self.read_index().await?;
        let user = name.as_bytes().to_vec();
        let hash = self
            .read_local(
                move |view| {
                    let auth = &view.node.stores().auth;
                    if !auth.is_enabled() {
                        return Err(AuthError::NotEnabled);
                    }
                    let u = auth.users().iter().find(|u| u.name.as_slice() == user.as_slice());
                    match u {
                        Some(u) if !u.no_password => Ok(u.password_hash.clone()),
                        _ => Err(AuthError::AuthFailed),
                    }
                },
                "a user's password hash",
            )
            .await??;
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            std::str::from_utf8(&hash).ok().is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
        })
        .await
        .unwrap_or(false);
        if !matches {
            return Err(AuthError::AuthFailed.into());
        }
        let prefix = token_prefix()?;
        let command = Command::Authenticate { name: name.as_bytes().to_vec(), prefix: prefix.clone() };
        let (_, (header, token)) = self
            .propose_around(
                command,
                |_| (),
                move |view, ()| (header(view), format!("{prefix}.{}", view.node.progress().applied_index)),
            )
            .await
            .map_err(store_to_auth)?;
        Ok((header, token))
    }

    /// Every user, by name, as of this member's applied state.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn users(&self) -> Result<(Header, Vec<UserInfo>), RaftError> {
        self.read_local(
            |view| {
                let users = view
                    .node
                    .stores()
                    .auth
                    .users()
                    .iter()
                    .map(|u| UserInfo { name: u.name.clone(), roles: u.roles.as_slice().to_vec() });
                (header(view), users.collect())
            },
            "the users",
        )
        .await
    }

    /// Every role, by name, as of this member's applied state.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn roles(&self) -> Result<(Header, Vec<RoleInfo>), RaftError> {
        self.read_local(
            |view| {
                let roles = view.node.stores().auth.roles().iter().map(|r| RoleInfo {
                    name: r.name.clone(),
                    permissions: r
                        .permissions
                        .as_slice()
                        .iter()
                        .map(|p| PermissionInfo { kind: p.kind, key: p.key.clone(), range_end: p.range_end.clone() })
                        .collect(),
                });
                (header(view), roles.collect())
            },
            "the roles",
        )
        .await
    }

    /// Whether auth is enabled and the auth revision (etcd 3.5's `AuthStatus`).
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn auth_status(&self) -> Result<(Header, bool, u64), RaftError> {
        self.read_local(
            |view| {
                let auth = &view.node.stores().auth;
                (header(view), auth.is_enabled(), auth.revision())
            },
            "the auth status",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_while_it_is_used_and_goes_with_its_user() {
        let tokens = Tokens::new(Duration::from_secs(300));
        let t0 = Instant::now();
        tokens.assign("a.5".into(), b"alice", t0);
        tokens.assign("b.6".into(), b"bob", t0);
        assert_eq!(tokens.user("a.5", t0 + Duration::from_secs(299)), Some(b"alice".to_vec()));
        // Used at 299 s: alive until 599 s.
        assert_eq!(tokens.user("a.5", t0 + Duration::from_secs(598)), Some(b"alice".to_vec()));
        assert_eq!(tokens.user("b.6", t0 + Duration::from_secs(598)), None, "unused for longer than the TTL");
        assert_eq!(tokens.user("nope.1", t0), None);
        tokens.assign("c.7".into(), b"carol", t0 + Duration::from_secs(600));
        assert_eq!(tokens.len(), 2, "expired tokens are dropped as new ones are issued");
        applied(&tokens, &Command::Apply(RequestBuf::UserDelete { name: b"carol".to_vec() }), 8, true);
        assert_eq!(tokens.user("c.7", t0 + Duration::from_secs(600)), None);
        applied(&tokens, &Command::Apply(RequestBuf::AuthSetEnabled(false)), 9, false);
        assert_eq!(tokens.len(), 1, "a command the store refused changes no token");
        applied(&tokens, &Command::Apply(RequestBuf::AuthSetEnabled(false)), 9, true);
        assert_eq!(tokens.len(), 0);
        applied(&tokens, &Command::Authenticate { name: b"dave".to_vec(), prefix: "xyz".into() }, 10, true);
        assert_eq!(tokens.user("xyz.10", Instant::now()), Some(b"dave".to_vec()));
    }

    #[test]
    fn token_prefixes_are_sixteen_letters_and_differ() {
        let a = token_prefix().unwrap();
        let b = token_prefix().unwrap();
        assert_eq!(a.len(), TOKEN_PREFIX_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphabetic()), "{a}");
        assert_ne!(a, b);
    }
}
