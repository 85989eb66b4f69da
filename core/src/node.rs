//! A follower (or leader) node's state: the live backend, the stores built on it, and the apply
//! progress. Requests are applied as committed Raft entries; snapshots replace it all through
//! the [`crate::pipeline`].

use crate::backend::{Backend, WriteTxn};
use crate::collections::Profile;
use crate::raft::{Progress, SnapshotMetadata};
use crate::store::{
    Alarm, AlarmStore, AuthStore, ConsistentIndex, Downgrade, KvStore, LeaseId, Lessor, MemberId, Membership,
    NewMember, PermissionType, StoreError, V2Deprecation, V2Store, Version, save_conf_state,
};

/// A node's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// This node's member id; the transport never adds a peer for it.
    pub id: MemberId,
    /// The minimum lease TTL in seconds (etcd: `3 * election timeout`, at least 1).
    pub min_lease_ttl: i64,
    /// The `--v2-deprecation` level.
    pub v2_deprecation: V2Deprecation,
}

/// The stores of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Stores<P: Profile> {
    /// The consistent index of the live backend.
    pub cindex: ConsistentIndex,
    /// Leases.
    pub lessor: Lessor<P>,
    /// The key-value store.
    pub kv: KvStore<P>,
    /// Alarms.
    pub alarms: AlarmStore<P>,
    /// Auth.
    pub auth: AuthStore<P>,
    /// Membership.
    pub membership: Membership<P>,
    /// The v2 store.
    pub v2: V2Store<P>,
}

impl<P: Profile> Stores<P> {
    /// Empty stores.
    pub fn new(min_lease_ttl: i64) -> Self {
        Stores {
            cindex: ConsistentIndex::default(),
            lessor: Lessor::new(min_lease_ttl),
            kv: KvStore::default(),
            alarms: AlarmStore::default(),
            auth: AuthStore::default(),
            membership: Membership::default(),
            v2: V2Store::default(),
        }
    }
}

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
    /// Add a member.
    MemberAdd(NewMember<'a>),
    /// Remove a member.
    MemberRemove {
        /// The id.
        id: MemberId,
    },
    /// Set the cluster version.
    ClusterVersion(Version),
    /// Set the downgrade info.
    Downgrade(Downgrade),
}

/// A node: live backend, stores and apply progress.
#[derive(Debug)]
pub struct Node<B: Backend, P: Profile> {
    pub(crate) config: Config,
    pub(crate) backend: B,
    pub(crate) stores: Stores<P>,
    pub(crate) progress: Progress,
}

impl<B: Backend, P: Profile> Node<B, P> {
    /// A node on an empty `backend`, at index 0.
    pub fn new(config: Config, backend: B) -> Self {
        Node { config, stores: Stores::new(config.min_lease_ttl), backend, progress: Progress::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The live backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The stores.
    pub fn stores(&self) -> &Stores<P> {
        &self.stores
    }
    /// The apply progress.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The metadata of a snapshot of this node's state at its applied index.
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        SnapshotMetadata {
            index: self.progress.applied_index,
            term: self.progress.applied_term,
            conf_state: self.progress.conf_state.clone(),
        }
    }

    /// Promotes the node to leader at `now_ms`: its leases start to expire.
    pub fn promote(&mut self, now_ms: u64) {
        self.stores.lessor.promote(now_ms);
    }

    /// Applies the committed entry at (`index`, `term`) carrying `request`, atomically: the
    /// backend and every store change together or not at all. An entry at or below the applied
    /// index is skipped, as etcd skips entries the backend already reflects. Returns the
    /// key-value store's revision after the entry.
    pub fn apply(&mut self, index: u64, term: u64, request: &Request<'_>) -> Result<i64, StoreError> {
        if index <= self.progress.applied_index {
            return Ok(self.stores.kv.current_revision());
        }
        // The stores change in place, as the request is written into the transaction. If
        // anything fails, the transaction is dropped, so the backend is as it was, and the stores
        // are read back from it: they always equal what recovering from the backend gives (the
        // invariant the differential tests check). The v2 store is not in the backend; the only
        // requests that touch it are member changes, which keep a copy.
        let v2_before =
            matches!(request, Request::MemberAdd(_) | Request::MemberRemove { .. }).then(|| self.stores.v2.clone());
        let mut cindex = self.stores.cindex;
        cindex.advance(index, term);
        let result = self.backend.write().map_err(StoreError::from).and_then(|mut txn| {
            let mut scratch = P::Bytes::default();
            apply_request(&mut self.stores, &mut txn, request, &mut scratch)?;
            if let Request::Compact { revision } = request {
                // etcd commits the schedule before compacting, so an interrupted compaction is
                // resumed on restore. Here both land in one transaction, which is stronger.
                self.stores.kv.compact(&mut txn, *revision)?;
            }
            save_conf_state(&mut txn, &self.progress.conf_state)?;
            cindex.commit(txn)
        });
        if let Err(e) = result {
            if let Some(v2) = v2_before {
                self.stores.v2 = v2;
            }
            // If even reading back fails, the error of the reload is the one to report: the
            // node must be reopened from its backend.
            self.reload()?;
            return Err(e);
        }
        self.stores.cindex = cindex;
        self.progress.applied_index = index;
        self.progress.applied_term = term;
        Ok(self.stores.kv.current_revision())
    }

    /// Rebuilds every store kept in the backend from it, without writing.
    fn reload(&mut self) -> Result<(), StoreError> {
        let txn = self.backend.read()?;
        let mut lessor = Lessor::load(&txn, self.config.min_lease_ttl)?;
        let (kv, _) = KvStore::load(&txn, &mut lessor)?;
        self.stores.cindex = ConsistentIndex::load(&txn)?;
        self.stores.alarms = AlarmStore::load(&txn)?;
        self.stores.auth = AuthStore::load(&txn)?;
        self.stores.membership = Membership::load(&txn)?;
        self.stores.lessor = lessor;
        self.stores.kv = kv;
        Ok(())
    }

    /// Applies a configuration change's resulting conf state (raft-rs `apply_conf_change`).
    pub fn set_conf_state(&mut self, conf_state: crate::raft::ConfState) {
        self.progress.conf_state = conf_state;
    }

    /// Writes the v2 store's snapshot data into `out`.
    pub fn v2_snapshot_data<S: crate::collections::Seq<u8>>(&self, out: &mut S) -> Result<(), StoreError> {
        self.stores.v2.save(out)
    }
}

fn apply_request<P: Profile, W: WriteTxn>(
    s: &mut Stores<P>,
    txn: &mut W,
    request: &Request<'_>,
    scratch: &mut P::Bytes,
) -> Result<(), StoreError> {
    match *request {
        Request::Put { key, value, lease } => {
            s.kv.put(txn, &mut s.lessor, key, value, lease, scratch)?;
        }
        Request::DeleteRange { key, range_end } => {
            s.kv.delete_range(txn, &mut s.lessor, key, range_end, scratch)?;
        }
        Request::Compact { revision } => s.kv.schedule_compaction(txn, revision)?,
        Request::LeaseGrant { id, ttl } => s.lessor.grant(txn, id, ttl, scratch)?,
        Request::LeaseRevoke { id } => {
            let keys = s.lessor.revoke(txn, id)?;
            for key in crate::collections::Seq::as_slice(&keys) {
                s.kv.delete_range(txn, &mut s.lessor, crate::collections::Seq::as_slice(key), &[], scratch)?;
            }
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
        Request::MemberAdd(new) => {
            s.membership.add(txn, &new, scratch)?;
            let first = new.peer_urls.first().copied().unwrap_or(&[]);
            s.v2.add_member(new.id, first)?;
        }
        Request::MemberRemove { id } => {
            s.membership.remove(txn, id)?;
            s.v2.remove_member(id)?;
        }
        Request::ClusterVersion(v) => s.membership.set_version(txn, v)?,
        Request::Downgrade(d) => s.membership.set_downgrade(txn, d)?,
    }
    Ok(())
}
