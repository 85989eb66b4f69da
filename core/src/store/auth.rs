//! Authentication and authorisation (etcd's `auth.authStore`): the enabled flag, the auth
//! revision, users, roles with key permissions, the permission cache derived from them, and the
//! token provider's state.

use serde::{Deserialize, Serialize};

use super::kv::in_range;
use super::records::{self, PermissionRecord};
use super::{StoreError, codec};
use crate::backend::{Backend, Bucket, ReadTxn, WriteTxn};
use crate::collections::{Profile, Seq};

/// `auth` key of the enabled flag (etcd's `authEnabled`).
pub const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
/// `auth` key of the auth revision (etcd's `authRevision`).
pub const AUTH_REVISION_KEY: &[u8] = b"authRevision";
/// Why a token is refused: the user is not there or has no password (etcd's `ErrAuthFailed`).
pub const AUTH_FAILED: &str = "authentication failed, invalid user ID or password";
/// Why a token is refused: auth is disabled (etcd's `ErrAuthNotEnabled`).
pub const AUTH_NOT_ENABLED: &str = "authentication is not enabled";
/// The role that may do everything (etcd's `root`).
pub const ROOT_ROLE: &[u8] = b"root";

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PermissionType {
    /// Reading.
    Read,
    /// Writing.
    Write,
    /// Both.
    ReadWrite,
}

impl PermissionType {
    fn allows(self, write: bool) -> bool {
        matches!(
            (self, write),
            (PermissionType::ReadWrite, _) | (PermissionType::Read, false) | (PermissionType::Write, true)
        )
    }
}

/// A permission on a key or a range of keys (etcd's `authpb.Permission`).
#[derive(Clone, Debug, PartialEq)]
pub struct Permission<P: Profile> {
    /// What it allows.
    pub kind: PermissionType,
    /// The key, or the start of the range.
    pub key: P::Bytes,
    /// The end of the range (etcd's conventions: empty = just `key`, `[0]` = from `key` on).
    pub range_end: P::Bytes,
}

/// A role.
#[derive(Clone, Debug, PartialEq)]
pub struct Role<P: Profile> {
    /// The name.
    pub name: P::Bytes,
    /// The permissions, sorted by key as etcd keeps them (`permSlice`).
    pub permissions: P::Permissions,
}

/// A user.
#[derive(Clone, Debug, PartialEq)]
pub struct User<P: Profile> {
    /// The name.
    pub name: P::Bytes,
    /// The password hash, as the leader computed it (etcd stores bcrypt).
    pub password_hash: P::Bytes,
    /// Names of the roles granted, sorted.
    pub roles: P::UserRoles,
    /// Whether the user authenticates without a password (etcd's `NoPassword`).
    pub no_password: bool,
}

/// One entry of the permission cache: a user may do `kind` on a range.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedPermission<P: Profile> {
    /// The user.
    pub user: P::Bytes,
    /// The permission, from one of the user's roles.
    pub permission: Permission<P>,
}

/// State of the token provider: etcd enables it with auth and disables it without (bug #13205
/// was a provider left disabled after a restore that enabled auth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenProvider {
    /// Issues and checks tokens.
    Enabled,
    /// Refuses every token.
    Disabled,
}

// Role and user records are written by `records::encode_role` and `encode_user` and read with
// `codec::Fields`, so a role holds as many permissions, and a user as many roles, as the
// profile's tables do (docs/records.md).

/// A point of the key space: a key, or (`.1`) the key right after it (`key + "\0"`), compared
/// without building it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos<'a>(&'a [u8], bool);

impl Ord for Pos<'_> {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        let bytes = |p: &Self| p.0.iter().copied().chain(p.1.then_some(0u8));
        bytes(self).cmp(bytes(other))
    }
}

impl PartialOrd for Pos<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The auth store.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthStore<P: Profile> {
    enabled: bool,
    revision: u64,
    users: P::Users,
    roles: P::Roles,
    cache: P::PermissionCache,
    token: TokenProvider,
}

impl<P: Profile> Default for AuthStore<P> {
    fn default() -> Self {
        AuthStore {
            enabled: false,
            // etcd's `NewAuthStore` commits revision 1 when it finds none.
            revision: 1,
            users: Default::default(),
            roles: Default::default(),
            cache: Default::default(),
            token: TokenProvider::Disabled,
        }
    }
}

impl<P: Profile> AuthStore<P> {
    /// Whether auth is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }
    /// The auth revision: 1 in a fresh store (etcd's `NewAuthStore` commits revision 1), bumped
    /// by every change that writes users or roles, and by disabling auth.
    pub fn revision(&self) -> u64 {
        self.revision
    }
    /// Every user, by name.
    pub fn users(&self) -> &[User<P>] {
        self.users.as_slice()
    }
    /// Every role, by name.
    pub fn roles(&self) -> &[Role<P>] {
        self.roles.as_slice()
    }
    /// The permission cache, by user.
    pub fn permission_cache(&self) -> &[CachedPermission<P>] {
        self.cache.as_slice()
    }
    /// The token provider's state.
    pub fn token_provider(&self) -> TokenProvider {
        self.token
    }

    /// What is decided about `user` before any permission is looked at: everything is permitted
    /// with auth disabled, and to the root role; nothing to a user who is not there.
    fn decided(&self, user: &[u8]) -> Option<bool> {
        if !self.enabled {
            return Some(true);
        }
        let Some(u) = codec::find(self.users.as_slice(), user, |u| u.name.as_slice()) else {
            return Some(false);
        };
        codec::find(u.roles.as_slice(), ROOT_ROLE, |r| r.as_slice()).is_some().then_some(true)
    }

    /// Whether `user` may read (or write) `key`, by the permission cache. With auth disabled
    /// everything is permitted; the root role may do everything.
    pub fn is_permitted(&self, user: &[u8], key: &[u8], write: bool) -> bool {
        if let Some(decided) = self.decided(user) {
            return decided;
        }
        self.cache.as_slice().iter().filter(|c| c.user.as_slice() == user).any(|c| {
            c.permission.kind.allows(write)
                && in_range(key, c.permission.key.as_slice(), c.permission.range_end.as_slice())
        })
    }

    /// Whether `user` may read (or write) every key of `[key, range_end)` (etcd's
    /// `isOpPermitted`): with auth disabled everything is; a user who is not there may do
    /// nothing; the root role may do everything; otherwise the user's permissions of that kind,
    /// taken together, must cover the whole range (etcd's `checkKeyInterval`: the union of the
    /// intervals, so two adjacent permissions cover a range neither covers alone). An empty
    /// `range_end` is the one key; `[0]` is every key from `key` on.
    pub fn is_range_permitted(&self, user: &[u8], key: &[u8], range_end: &[u8], write: bool) -> bool {
        if range_end.is_empty() {
            return self.is_permitted(user, key, write);
        }
        if let Some(decided) = self.decided(user) {
            return decided;
        }
        // Walk the covered part of the range forward: each step takes, of the permissions that
        // start at or before the first uncovered key and reach past it, the one that reaches
        // furthest. No allocation (the core is heap-free); at most one step per permission.
        let goal = if range_end == [0] { None } else { Some(Pos(range_end, false)) };
        let mut from = Pos(key, false);
        for _ in 0..=self.cache.as_slice().len() {
            // None: nothing covers `from`; Some(None): covered to the end of the key space.
            let mut reach: Option<Option<Pos<'_>>> = None;
            for c in self.cache.as_slice() {
                let p = &c.permission;
                if c.user.as_slice() != user || !p.kind.allows(write) || Pos(p.key.as_slice(), false) > from {
                    continue;
                }
                // A one-key permission is the interval [key, key + "\0").
                let end = match p.range_end.as_slice() {
                    [0] => None,
                    [] => Some(Pos(p.key.as_slice(), true)),
                    end => Some(Pos(end, false)),
                };
                if end.is_some_and(|e| e <= from) {
                    continue;
                }
                reach = Some(match (reach, end) {
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(r)), Some(e)) => Some(if r >= e { r } else { e }),
                    (None, Some(e)) => Some(e),
                });
            }
            match (reach, goal) {
                (None, _) => return false,
                (Some(None), _) => return true,
                (Some(Some(r)), Some(g)) if r >= g => return true,
                (Some(Some(r)), _) => from = r,
            }
        }
        false
    }

    fn bump<W: WriteTxn + ?Sized>(&mut self, txn: &mut W) -> Result<(), StoreError> {
        self.revision =
            self.revision.checked_add(1).ok_or(StoreError::InvalidRequest("auth revision space exhausted"))?;
        txn.put(Bucket::Auth, AUTH_REVISION_KEY, &self.revision.to_be_bytes())?;
        Ok(())
    }

    /// Enables or disables auth, as etcd 3.5's `AuthEnable` and `AuthDisable`: a no-op when auth is
    /// already in that state; enabling needs a user `root` with the role `root` and does not
    /// bump the revision; disabling bumps it.
    pub(crate) fn set_enabled<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, enabled: bool) -> Result<(), StoreError> {
        if enabled == self.enabled {
            return Ok(());
        }
        if enabled {
            let root = codec::find(self.users.as_slice(), b"root".as_slice(), |u| u.name.as_slice())
                .ok_or(StoreError::NotFound("root user"))?;
            if codec::find(root.roles.as_slice(), ROOT_ROLE, |r| r.as_slice()).is_none() {
                return Err(StoreError::InvalidRequest("root user does not have the root role"));
            }
        }
        txn.put(Bucket::Auth, AUTH_ENABLED_KEY, &[enabled as u8])?;
        if !enabled {
            self.bump(txn)?;
        }
        self.enabled = enabled;
        self.token = if enabled { TokenProvider::Enabled } else { TokenProvider::Disabled };
        Ok(())
    }

    fn save_user<W: WriteTxn + ?Sized>(txn: &mut W, user: &User<P>, scratch: &mut P::Record) -> Result<(), StoreError> {
        let roles = user.roles.as_slice();
        records::encode_user(
            user.name.as_slice(),
            user.password_hash.as_slice(),
            roles,
            |r: &P::Bytes| r.as_slice(),
            user.no_password,
            scratch,
        )?;
        txn.put(Bucket::AuthUsers, user.name.as_slice(), scratch.as_slice())?;
        Ok(())
    }

    fn save_role<W: WriteTxn + ?Sized>(txn: &mut W, role: &Role<P>, scratch: &mut P::Record) -> Result<(), StoreError> {
        records::encode_role(
            role.name.as_slice(),
            role.permissions.as_slice(),
            |p: &Permission<P>| (p.kind, p.key.as_slice(), p.range_end.as_slice()),
            scratch,
        )?;
        txn.put(Bucket::AuthRoles, role.name.as_slice(), scratch.as_slice())?;
        Ok(())
    }

    /// Adds a user.
    pub(crate) fn add_user<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        name: &[u8],
        password_hash: &[u8],
        no_password: bool,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidRequest("empty user name"));
        }
        if codec::find(self.users.as_slice(), name, |u| u.name.as_slice()).is_some() {
            return Err(StoreError::AlreadyExists("user"));
        }
        let user = User {
            name: codec::bytes::<P::Bytes>(name, "user name")?,
            password_hash: codec::bytes::<P::Bytes>(password_hash, "password hash")?,
            roles: Default::default(),
            no_password,
        };
        Self::save_user(txn, &user, scratch)?;
        codec::upsert(&mut self.users, user, |u| u.name.as_slice(), "users")?;
        self.bump(txn)
    }

    /// Adds a role.
    pub(crate) fn add_role<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        name: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidRequest("empty role name"));
        }
        if codec::find(self.roles.as_slice(), name, |r| r.name.as_slice()).is_some() {
            return Err(StoreError::AlreadyExists("role"));
        }
        let role = Role { name: codec::bytes::<P::Bytes>(name, "role name")?, permissions: Default::default() };
        Self::save_role(txn, &role, scratch)?;
        codec::upsert(&mut self.roles, role, |r| r.name.as_slice(), "roles")?;
        self.bump(txn)
    }

    /// Grants `role` a permission and refreshes the permission cache, as etcd's
    /// `RoleGrantPermission`: the range must be valid (`isValidPermissionRange`); the role's
    /// permissions stay sorted by key; the existing permission looked at is the first one whose
    /// key is not below `key` (`sort.Search`), and only when it has the same key and range end
    /// is its type updated. Otherwise the new permission is appended and the list sorted by key
    /// (`permSlice`, `Less` is `bytes.Compare(..) < 0`): it lands after every permission with a
    /// key not above its own, where Go's insertion sort leaves it. So a second permission with
    /// the key of the first but another range end is added, and granting it again adds it again
    /// (the lookup only sees the first one with the key), as in etcd.
    pub(crate) fn grant_permission<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        role: &[u8],
        kind: PermissionType,
        key: &[u8],
        range_end: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if !is_valid_permission_range(key, range_end) {
            return Err(StoreError::InvalidRequest("invalid permission range"));
        }
        let r = codec::find_mut(&mut self.roles, role, |r| r.name.as_slice(), "role")?;
        let idx = r.permissions.as_slice().partition_point(|p| p.key.as_slice() < key);
        let same = r
            .permissions
            .as_mut_slice()
            .get_mut(idx)
            .filter(|p| p.key.as_slice() == key && p.range_end.as_slice() == range_end);
        match same {
            Some(p) => p.kind = kind,
            None => {
                let permission = Permission {
                    kind,
                    key: codec::bytes::<P::Bytes>(key, "permission key")?,
                    range_end: codec::bytes::<P::Bytes>(range_end, "permission range end")?,
                };
                let after_equal_keys = r.permissions.as_slice().partition_point(|p| p.key.as_slice() <= key);
                r.permissions
                    .try_insert(after_equal_keys, permission)
                    .map_err(|_| crate::collections::CapacityError { what: "role permissions" })?;
            }
        }
        Self::save_role(txn, r, scratch)?;
        self.rebuild_cache()?;
        self.bump(txn)
    }

    /// Grants `role` to `user` and refreshes the permission cache (etcd's `UserGrantRole`): a
    /// role the user has already is ignored, with nothing written and no revision bump.
    pub(crate) fn grant_role<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        user: &[u8],
        role: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if role != ROOT_ROLE && codec::find(self.roles.as_slice(), role, |r| r.name.as_slice()).is_none() {
            return Err(StoreError::NotFound("role"));
        }
        let u = codec::find_mut(&mut self.users, user, |u| u.name.as_slice(), "user")?;
        if codec::find(u.roles.as_slice(), role, |r| r.as_slice()).is_some() {
            return Ok(());
        }
        let role_name = codec::bytes::<P::Bytes>(role, "role name")?;
        codec::upsert(&mut u.roles, role_name, |r| r.as_slice(), "user roles")?;
        Self::save_user(txn, u, scratch)?;
        self.rebuild_cache()?;
        self.bump(txn)
    }

    /// Whether `name` may be issued a token (etcd's `authStore.Authenticate`): auth is enabled,
    /// and the user is there and has a password.
    pub(crate) fn check_authenticate(&self, name: &[u8]) -> Result<(), StoreError> {
        if !self.enabled {
            return Err(StoreError::InvalidRequest(AUTH_NOT_ENABLED));
        }
        match codec::find(self.users.as_slice(), name, |u| u.name.as_slice()) {
            Some(u) if !u.no_password => Ok(()),
            _ => Err(StoreError::InvalidRequest(AUTH_FAILED)),
        }
    }

    /// Replaces a user's password hash (etcd's `UserChangePassword`).
    pub(crate) fn change_password<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        name: &[u8],
        password_hash: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let u = codec::find_mut(&mut self.users, name, |u| u.name.as_slice(), "user")?;
        u.password_hash = codec::bytes::<P::Bytes>(password_hash, "password hash")?;
        Self::save_user(txn, u, scratch)?;
        self.bump(txn)
    }

    /// Deletes a user (etcd's `UserDelete`). The root user cannot go while auth is enabled.
    pub(crate) fn delete_user<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, name: &[u8]) -> Result<(), StoreError> {
        if self.enabled && name == b"root" {
            return Err(StoreError::InvalidRequest("cannot delete root user while auth is enabled"));
        }
        if !codec::remove(&mut self.users, name, |u| u.name.as_slice()) {
            return Err(StoreError::NotFound("user"));
        }
        txn.delete(Bucket::AuthUsers, name)?;
        self.rebuild_cache()?;
        self.bump(txn)
    }

    /// Deletes a role and revokes it from every user who had it (etcd's `RoleDelete`). The root
    /// role cannot go while auth is enabled.
    pub(crate) fn delete_role<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        name: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(StoreError::InvalidRequest("cannot delete root role while auth is enabled"));
        }
        if !codec::remove(&mut self.roles, name, |r| r.name.as_slice()) {
            return Err(StoreError::NotFound("role"));
        }
        txn.delete(Bucket::AuthRoles, name)?;
        for user in self.users.as_mut_slice() {
            if codec::remove(&mut user.roles, name, |r| r.as_slice()) {
                Self::save_user(txn, user, scratch)?;
            }
        }
        self.rebuild_cache()?;
        self.bump(txn)
    }

    /// Revokes a role's permission on exactly `[key, range_end)` (etcd's `RoleRevokePermission`).
    pub(crate) fn revoke_permission<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        role: &[u8],
        key: &[u8],
        range_end: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let r = codec::find_mut(&mut self.roles, role, |r| r.name.as_slice(), "role")?;
        // Every permission on exactly this range goes, as etcd's `RoleRevokePermission` keeps
        // only the others (a role can hold two: see `grant_permission`).
        let before = r.permissions.len();
        r.permissions.retain_by(|p| p.key.as_slice() != key || p.range_end.as_slice() != range_end);
        if r.permissions.len() == before {
            return Err(StoreError::NotFound("permission"));
        }
        Self::save_role(txn, r, scratch)?;
        self.rebuild_cache()?;
        self.bump(txn)
    }

    /// Revokes `role` from `user` (etcd's `UserRevokeRole`).
    pub(crate) fn revoke_role<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        user: &[u8],
        role: &[u8],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let u = codec::find_mut(&mut self.users, user, |u| u.name.as_slice(), "user")?;
        if self.enabled && user == b"root" && role == ROOT_ROLE {
            return Err(StoreError::InvalidRequest("cannot revoke root role from root user while auth is enabled"));
        }
        if !codec::remove(&mut u.roles, role, |r| r.as_slice()) {
            return Err(StoreError::NotFound("role of the user"));
        }
        Self::save_user(txn, u, scratch)?;
        self.rebuild_cache()?;
        self.bump(txn)
    }

    /// Rebuilds the permission cache from users and roles (etcd's `refreshRangePermCache`).
    fn rebuild_cache(&mut self) -> Result<(), StoreError> {
        let mut cache = P::PermissionCache::default();
        for user in self.users.as_slice() {
            for role_name in user.roles.as_slice() {
                let Some(role) = codec::find(self.roles.as_slice(), role_name.as_slice(), |r| r.name.as_slice()) else {
                    continue;
                };
                for p in role.permissions.as_slice() {
                    let entry = CachedPermission { user: user.name.clone(), permission: p.clone() };
                    codec::push(&mut cache, entry, "permission cache")?;
                }
            }
        }
        self.cache = cache;
        Ok(())
    }

    /// Rebuilds the auth store from the `auth`, `authUsers` and `authRoles` buckets (etcd's
    /// `authStore.Recover`): flag, revision, users, roles, the permission cache (bug #14571 was
    /// an empty cache after recover), and the token provider enabled **or disabled** to match.
    pub fn recover<B: Backend>(backend: &B) -> Result<Self, StoreError> {
        Self::load(&backend.read()?)
    }

    /// Reads the store from a read transaction.
    pub(crate) fn load<R: ReadTxn + ?Sized>(txn: &R) -> Result<Self, StoreError> {
        let mut store = AuthStore::<P>::default();
        store.load_into(txn)?;
        Ok(store)
    }

    /// Reads the store from a read transaction in place: cleared to a fresh store first, then
    /// filled, so no second store exists.
    pub(crate) fn load_into<R: ReadTxn + ?Sized>(&mut self, txn: &R) -> Result<(), StoreError> {
        self.enabled = false;
        self.revision = 1;
        self.users.clear_all();
        self.roles.clear_all();
        self.cache.clear_all();
        self.token = TokenProvider::Disabled;
        let store = self;
        let mut enabled = None;
        txn.get(Bucket::Auth, AUTH_ENABLED_KEY, &mut |v| enabled = Some(v == [1]))?;
        store.enabled = enabled.unwrap_or(false);
        // etcd's `NewAuthStore` commits revision 1 over a missing or zero revision.
        store.revision = codec::get_u64(txn, Bucket::Auth, AUTH_REVISION_KEY)?.unwrap_or(0).max(1);
        codec::scan(txn, Bucket::AuthUsers, |_, v| {
            let mut fields = codec::Fields::new(Bucket::AuthUsers, v);
            let name = codec::bytes::<P::Bytes>(fields.next::<&[u8]>()?, "user name")?;
            let password_hash = codec::bytes::<P::Bytes>(fields.next::<&[u8]>()?, "password hash")?;
            let mut roles = P::UserRoles::default();
            for _ in 0..fields.list_len()? {
                let role = codec::bytes::<P::Bytes>(fields.next::<&[u8]>()?, "role name")?;
                codec::upsert(&mut roles, role, |r| r.as_slice(), "user roles")?;
            }
            let user = User { name, password_hash, roles, no_password: fields.next::<bool>()? };
            codec::upsert(&mut store.users, user, |u| u.name.as_slice(), "users").map_err(Into::into)
        })?;
        codec::scan(txn, Bucket::AuthRoles, |_, v| {
            let mut fields = codec::Fields::new(Bucket::AuthRoles, v);
            let name = codec::bytes::<P::Bytes>(fields.next::<&[u8]>()?, "role name")?;
            let mut permissions = P::Permissions::default();
            for _ in 0..fields.list_len()? {
                let p = fields.next::<PermissionRecord<'_>>()?;
                let permission = Permission {
                    kind: p.kind,
                    key: codec::bytes::<P::Bytes>(p.key, "permission key")?,
                    range_end: codec::bytes::<P::Bytes>(p.range_end, "permission range end")?,
                };
                codec::push(&mut permissions, permission, "role permissions")?;
            }
            codec::upsert(&mut store.roles, Role { name, permissions }, |r| r.name.as_slice(), "roles")
                .map_err(Into::into)
        })?;
        store.rebuild_cache()?;
        store.token = if store.enabled { TokenProvider::Enabled } else { TokenProvider::Disabled };
        Ok(())
    }
}

/// Whether `[key, range_end)` is a range a permission may name (etcd 3.5's
/// `isValidPermissionRange`): a non-empty key, and a range end that is empty (just the key),
/// above the key, or starting with a zero byte (`[0]`: every key from `key` on).
fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || key < range_end || range_end.first() == Some(&0)
}

#[cfg(test)]
#[cfg(feature = "alloc")]
mod tests {
    use super::PermissionType::{Read, ReadWrite, Write};
    use crate::Request;
    use crate::node::tests::{apply, node};
    use crate::store::StoreError;

    fn grant(n: &mut crate::node::tests::TestNode, kind: super::PermissionType, key: &[u8], range_end: &[u8]) {
        apply(n, &Request::RoleGrantPermission { role: b"r", kind, key, range_end }).unwrap();
    }

    /// etcd's `checkKeyInterval`: a range is permitted when the user's permissions of that kind,
    /// taken together, cover all of it; a one-key permission covers that key only.
    #[test]
    fn a_range_is_permitted_when_the_users_permissions_together_cover_it() {
        let mut n = node();
        for (name, hash) in [(b"root".as_slice(), b"h".as_slice()), (b"alice", b"h")] {
            apply(&mut n, &Request::UserAdd { name, password_hash: hash, no_password: false }).unwrap();
        }
        apply(&mut n, &Request::RoleAdd { name: b"r" }).unwrap();
        apply(&mut n, &Request::UserGrantRole { user: b"root", role: b"root" }).unwrap();
        apply(&mut n, &Request::UserGrantRole { user: b"alice", role: b"r" }).unwrap();
        grant(&mut n, Read, b"a", b"c");
        grant(&mut n, ReadWrite, b"c", b"e");
        grant(&mut n, Read, b"x", b"");
        grant(&mut n, Write, b"m", b"\0");
        let auth = &n.stores().auth;
        // Disabled: everything is permitted, to anyone.
        assert!(auth.is_range_permitted(b"nobody", b"a", b"z", true));
        apply(&mut n, &Request::AuthSetEnabled(true)).unwrap();
        let auth = &n.stores().auth;
        let read = |k: &[u8], e: &[u8]| auth.is_range_permitted(b"alice", k, e, false);
        let write = |k: &[u8], e: &[u8]| auth.is_range_permitted(b"alice", k, e, true);
        assert!(read(b"a", b"e"), "two adjacent permissions cover the range together");
        assert!(read(b"b", b"d"));
        assert!(!read(b"a", b"f"), "[e, f) is not covered");
        assert!(!read(b"0", b"b"), "[0, a) is not covered");
        assert!(read(b"x", b""), "the one key");
        assert!(read(b"x", b"x\0"), "the range holding only that key");
        assert!(!read(b"x", b"y"), "a one-key permission covers no other key");
        assert!(!read(b"a", b"\0"), "from a on is not covered for reading");
        assert!(write(b"m", b"\0") && write(b"n", b"z") && write(b"c", b"e"));
        assert!(!write(b"a", b"c"), "read only");
        assert!(!write(b"d", b"n"), "[e, m) is not writable");
        assert!(auth.is_range_permitted(b"root", b"", b"\0", true), "the root role may do everything");
        assert!(!auth.is_range_permitted(b"mallory", b"a", b"b", false), "no such user");
    }

    #[test]
    fn a_password_change_replaces_the_hash_and_bumps_the_auth_revision() {
        let mut n = node();
        apply(&mut n, &Request::UserAdd { name: b"u", password_hash: b"old", no_password: false }).unwrap();
        let before = n.stores().auth.revision();
        apply(&mut n, &Request::UserChangePassword { name: b"u", password_hash: b"new" }).unwrap();
        let auth = &n.stores().auth;
        assert_eq!(auth.users()[0].password_hash.as_slice(), b"new");
        assert_eq!(auth.revision(), before + 1);
        let unknown = apply(&mut n, &Request::UserChangePassword { name: b"v", password_hash: b"x" });
        assert_eq!(unknown, Err(StoreError::NotFound("user")));
        assert_eq!(n.stores().auth.revision(), before + 1, "a refused change bumps nothing");
    }

    /// etcd's `Authenticate` as applied: auth enabled, the user there, with a password.
    #[test]
    fn a_token_is_issued_only_to_a_user_with_a_password_while_auth_is_enabled() {
        let mut n = node();
        let not_enabled = apply(&mut n, &Request::Authenticate { name: b"root" });
        assert_eq!(not_enabled, Err(StoreError::InvalidRequest(super::AUTH_NOT_ENABLED)));
        apply(&mut n, &Request::UserAdd { name: b"root", password_hash: b"h", no_password: false }).unwrap();
        apply(&mut n, &Request::UserAdd { name: b"svc", password_hash: b"", no_password: true }).unwrap();
        apply(&mut n, &Request::UserGrantRole { user: b"root", role: b"root" }).unwrap();
        apply(&mut n, &Request::AuthSetEnabled(true)).unwrap();
        let revision = n.stores().auth.revision();
        apply(&mut n, &Request::Authenticate { name: b"root" }).unwrap();
        for name in [b"svc".as_slice(), b"nobody"] {
            let refused = apply(&mut n, &Request::Authenticate { name });
            assert_eq!(refused, Err(StoreError::InvalidRequest(super::AUTH_FAILED)), "{name:?}");
        }
        assert_eq!(n.stores().auth.revision(), revision, "authenticating changes no auth state");
    }
}
