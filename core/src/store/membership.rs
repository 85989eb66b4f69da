//! Cluster membership (etcd's `membership.RaftCluster`): members, removed members, cluster
//! version, downgrade info, and the capabilities the version enables.

use serde::{Deserialize, Serialize};

use super::{StoreError, codec};
use crate::backend::{Backend, Bucket, ReadTxn, WriteTxn};
use crate::collections::{Profile, Seq};

/// A member id (etcd's `types.ID`).
pub type MemberId = u64;

/// A cluster member.
#[derive(Clone, Debug, PartialEq)]
pub struct Member<P: Profile> {
    /// The id.
    pub id: MemberId,
    /// The human-readable name.
    pub name: P::Bytes,
    /// URLs peers reach it at.
    pub peer_urls: P::MemberUrls,
    /// URLs clients reach it at.
    pub client_urls: P::MemberUrls,
    /// Whether it is a learner (non-voting).
    pub is_learner: bool,
}

/// A member to add (etcd's `MemberAddRequest` as applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewMember<'a> {
    /// The id.
    pub id: MemberId,
    /// The name.
    pub name: &'a [u8],
    /// URLs peers reach it at (at most [`MAX_MEMBER_URLS`]).
    pub peer_urls: &'a [&'a [u8]],
    /// URLs clients reach it at (at most [`MAX_MEMBER_URLS`]).
    pub client_urls: &'a [&'a [u8]],
    /// Whether it joins as a learner.
    pub is_learner: bool,
}

/// A semantic version (etcd's cluster version, `major.minor.patch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Version {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
    /// Patch.
    pub patch: u16,
}

/// The downgrade in progress, if any (etcd's `DowngradeInfo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Downgrade {
    /// Whether a downgrade is in progress.
    pub enabled: bool,
    /// The version being downgraded to.
    pub target: Version,
}

/// Capabilities a cluster version enables (etcd's `api.UpdateCapability`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Capabilities {
    /// Auth (3.0+).
    pub auth: bool,
    /// The v3 API (3.0+).
    pub v3rpc: bool,
}

impl Capabilities {
    /// What `version` enables; nothing without a version.
    pub fn of(version: Option<Version>) -> Self {
        let at_least_3 = version.is_some_and(|v| v.major >= 3);
        Capabilities { auth: at_least_3, v3rpc: at_least_3 }
    }
}

#[derive(Serialize, Deserialize)]
struct MemberRecord<'a> {
    id: u64,
    #[serde(borrow)]
    name: &'a [u8],
    #[serde(borrow)]
    peer_urls: heapless::Vec<&'a [u8], MAX_MEMBER_URLS>,
    #[serde(borrow)]
    client_urls: heapless::Vec<&'a [u8], MAX_MEMBER_URLS>,
    is_learner: bool,
}

/// `cluster` key of the cluster version (etcd's `clusterVersion`).
pub const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
/// `cluster` key of the downgrade info (etcd's `downgrade`).
pub const DOWNGRADE_KEY: &[u8] = b"downgrade";

/// The key of a member in the `members` and `members_removed` buckets: its id in 16 lowercase
/// hex digits, as etcd spells `types.ID`.
pub fn member_key(id: MemberId) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        let nibble = ((id >> (60 - 4 * i)) & 0xf) as u8;
        *b = if nibble < 10 { b'0' + nibble } else { b'a' + nibble - 10 };
    }
    out
}

fn parse_member_key(k: &[u8]) -> Option<MemberId> {
    if k.len() != 16 {
        return None;
    }
    let s = core::str::from_utf8(k).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// The membership store.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Membership<P: Profile> {
    members: P::Members,
    removed: P::Removed,
    version: Option<Version>,
    downgrade: Downgrade,
    capabilities: Capabilities,
}

/// Most URLs of each kind a member record holds.
pub const MAX_MEMBER_URLS: usize = 8;

impl<P: Profile> Membership<P> {
    /// Every member, by id.
    pub fn members(&self) -> &[Member<P>] {
        self.members.as_slice()
    }
    /// Ids of removed members, ascending.
    pub fn removed(&self) -> &[MemberId] {
        self.removed.as_slice()
    }
    /// The cluster version, if set.
    pub fn version(&self) -> Option<Version> {
        self.version
    }
    /// The downgrade info.
    pub fn downgrade(&self) -> Downgrade {
        self.downgrade
    }
    /// What the cluster version enables.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    /// The member `id`, if present.
    pub fn member(&self, id: MemberId) -> Option<&Member<P>> {
        codec::find(self.members.as_slice(), &id, |m| &m.id)
    }

    /// Adds a member.
    pub(crate) fn add<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        new: &NewMember<'_>,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let NewMember { id, name, peer_urls, client_urls, is_learner } = *new;
        if id == 0 {
            return Err(StoreError::InvalidRequest("member id 0"));
        }
        if self.member(id).is_some() {
            return Err(StoreError::AlreadyExists("member"));
        }
        if codec::find(self.removed.as_slice(), &id, |r| r).is_some() {
            return Err(StoreError::InvalidRequest("member id was removed"));
        }
        let record = MemberRecord {
            id,
            name,
            peer_urls: heapless::Vec::from_slice(peer_urls)
                .map_err(|_| StoreError::InvalidRequest("more than 8 peer urls"))?,
            client_urls: heapless::Vec::from_slice(client_urls)
                .map_err(|_| StoreError::InvalidRequest("more than 8 client urls"))?,
            is_learner,
        };
        let member = Self::member_from(&record)?;
        codec::put(txn, Bucket::Members, &member_key(id), &record, scratch)?;
        codec::upsert(&mut self.members, member, |m| &m.id, "members")?;
        Ok(())
    }

    fn member_from(r: &MemberRecord<'_>) -> Result<Member<P>, StoreError> {
        let mut peer_urls = P::MemberUrls::default();
        for u in &r.peer_urls {
            codec::push(&mut peer_urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        let mut client_urls = P::MemberUrls::default();
        for u in &r.client_urls {
            codec::push(&mut client_urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        Ok(Member {
            id: r.id,
            name: codec::bytes::<P::Bytes>(r.name, "member name")?,
            peer_urls,
            client_urls,
            is_learner: r.is_learner,
        })
    }

    fn save<W: WriteTxn + ?Sized>(txn: &mut W, m: &Member<P>, scratch: &mut P::Record) -> Result<(), StoreError> {
        let mut peer_urls = heapless::Vec::<&[u8], MAX_MEMBER_URLS>::new();
        for u in m.peer_urls.as_slice() {
            peer_urls.push(u.as_slice()).map_err(|_| StoreError::InvalidRequest("more than 8 peer urls"))?;
        }
        let mut client_urls = heapless::Vec::<&[u8], MAX_MEMBER_URLS>::new();
        for u in m.client_urls.as_slice() {
            client_urls.push(u.as_slice()).map_err(|_| StoreError::InvalidRequest("more than 8 client urls"))?;
        }
        let record =
            MemberRecord { id: m.id, name: m.name.as_slice(), peer_urls, client_urls, is_learner: m.is_learner };
        codec::put(txn, Bucket::Members, &member_key(m.id), &record, scratch)
    }

    fn member_mut(&mut self, id: MemberId) -> Result<&mut Member<P>, StoreError> {
        codec::find_mut(&mut self.members, &id, |m| &m.id, "member")
    }

    /// Replaces a member's peer URLs (etcd's `MemberUpdate`).
    pub(crate) fn update_peer_urls<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        id: MemberId,
        peer_urls: &[&[u8]],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if peer_urls.len() > MAX_MEMBER_URLS {
            return Err(StoreError::InvalidRequest("more than 8 peer urls"));
        }
        let mut urls = P::MemberUrls::default();
        for u in peer_urls {
            codec::push(&mut urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        let member = self.member_mut(id)?;
        member.peer_urls = urls;
        Self::save(txn, member, scratch)
    }

    /// Promotes a learner to a voting member (etcd's `MemberPromote`).
    pub(crate) fn promote<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        id: MemberId,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let member = self.member_mut(id)?;
        if !member.is_learner {
            return Err(StoreError::InvalidRequest("can only promote a learner member"));
        }
        member.is_learner = false;
        Self::save(txn, member, scratch)
    }

    /// Removes a member and records its id as removed.
    pub(crate) fn remove<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, id: MemberId) -> Result<(), StoreError> {
        if !codec::remove(&mut self.members, &id, |m| &m.id) {
            return Err(StoreError::NotFound("member"));
        }
        txn.delete(Bucket::Members, &member_key(id))?;
        txn.put(Bucket::MembersRemoved, &member_key(id), b"removed")?;
        codec::upsert(&mut self.removed, id, |r| r, "removed members")?;
        Ok(())
    }

    /// Sets the cluster version and updates the capabilities.
    pub(crate) fn set_version<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, v: Version) -> Result<(), StoreError> {
        let mut buf = heapless::Vec::<u8, 16>::new();
        codec::put(txn, Bucket::Cluster, CLUSTER_VERSION_KEY, &v, &mut buf)?;
        self.version = Some(v);
        self.capabilities = Capabilities::of(self.version);
        Ok(())
    }

    /// Sets the downgrade info.
    pub(crate) fn set_downgrade<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, d: Downgrade) -> Result<(), StoreError> {
        let mut buf = heapless::Vec::<u8, 16>::new();
        codec::put(txn, Bucket::Cluster, DOWNGRADE_KEY, &d, &mut buf)?;
        self.downgrade = d;
        Ok(())
    }

    /// Rebuilds membership from the `members`, `members_removed` and `cluster` buckets and
    /// updates the capabilities (etcd's `RaftCluster.Recover(api.UpdateCapability)`).
    pub fn recover<B: Backend>(backend: &B) -> Result<Self, StoreError> {
        Self::load(&backend.read()?)
    }

    /// Reads the store from a read transaction.
    pub(crate) fn load<R: ReadTxn + ?Sized>(txn: &R) -> Result<Self, StoreError> {
        let mut store = Membership::<P>::default();
        codec::scan(txn, Bucket::Members, |_, v| {
            codec::decode::<MemberRecord<'_>>(Bucket::Members, v)
                .and_then(|r| Self::member_from(&r))
                .and_then(|m| codec::upsert(&mut store.members, m, |m| &m.id, "members").map_err(Into::into))
        })?;
        codec::scan(txn, Bucket::MembersRemoved, |k, _| match parse_member_key(k) {
            Some(id) => codec::upsert(&mut store.removed, id, |r| r, "removed members").map_err(Into::into),
            None => Err(StoreError::Corrupt { bucket: Bucket::MembersRemoved, what: "malformed member id" }),
        })?;
        store.version = codec::get(txn, Bucket::Cluster, CLUSTER_VERSION_KEY)?;
        store.downgrade = codec::get(txn, Bucket::Cluster, DOWNGRADE_KEY)?.unwrap_or_default();
        store.capabilities = Capabilities::of(store.version);
        Ok(store)
    }
}
