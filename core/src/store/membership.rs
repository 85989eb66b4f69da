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
    /// URLs peers reach it at (as many as the profile's `MemberUrls` holds).
    pub peer_urls: &'a [&'a [u8]],
    /// URLs clients reach it at (as many as the profile's `MemberUrls` holds).
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

// A member record is `id`, `name`, the peer URLs and the client URLs as postcard sequences,
// `is_learner`: written with `codec::List` and read with `codec::Fields`, so a member holds as
// many URLs as the profile's `MemberUrls` does (docs/records.md).

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

/// Most peer URLs the transport is handed for one member. Member records and the membership
/// store hold as many URLs as the profile's `MemberUrls` table does; this bounds only the list
/// the pipeline builds on its stack for the transport.
pub const MAX_MEMBER_URLS: usize = 8;

/// Refuses a member with more peer URLs than [`MAX_MEMBER_URLS`]: a snapshot holding one is
/// refused by every follower when its backend is opened (the transport takes at most that many),
/// so a node refuses the request that would make one too, and the leader never holds what no
/// follower can restore. The one check both places use.
pub fn check_peer_urls(count: usize) -> Result<(), StoreError> {
    if count > MAX_MEMBER_URLS {
        return Err(StoreError::Capacity(crate::collections::CapacityError {
            what: "peer URLs of one member handed to the transport (at most 8)",
        }));
    }
    Ok(())
}

/// Most learners a cluster may have (etcd's `maxLearners`).
pub const MAX_LEARNERS: usize = 1;

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

    /// Whether a member other than `except` uses one of `peer_urls` (etcd's
    /// `ValidateConfigurationChange`, `ErrPeerURLexists`).
    fn peer_url_in_use(&self, peer_urls: &[&[u8]], except: Option<MemberId>) -> bool {
        self.members
            .as_slice()
            .iter()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.as_slice().iter().any(|u| peer_urls.iter().any(|p| *p == u.as_slice())))
    }

    /// Adds a member, checked as etcd's `ValidateConfigurationChange` checks an added member:
    /// its id was not removed and is not a member's, no member uses one of its peer URLs, and a
    /// learner does not take the cluster past [`MAX_LEARNERS`].
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
        if codec::find(self.removed.as_slice(), &id, |r| r).is_some() {
            return Err(StoreError::InvalidRequest("member id was removed"));
        }
        if self.member(id).is_some() {
            return Err(StoreError::AlreadyExists("member"));
        }
        if self.peer_url_in_use(peer_urls, None) {
            return Err(StoreError::AlreadyExists("peer url"));
        }
        if is_learner && self.members.as_slice().iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
            return Err(StoreError::InvalidRequest("too many learner members in cluster"));
        }
        let mut member = Member {
            id,
            name: codec::bytes::<P::Bytes>(name, "member name")?,
            peer_urls: P::MemberUrls::default(),
            client_urls: P::MemberUrls::default(),
            is_learner,
        };
        for u in peer_urls {
            codec::push(&mut member.peer_urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        for u in client_urls {
            codec::push(&mut member.client_urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        Self::save(txn, &member, scratch)?;
        codec::upsert(&mut self.members, member, |m| &m.id, "members")?;
        Ok(())
    }

    fn decode_member(v: &[u8]) -> Result<Member<P>, StoreError> {
        let mut fields = codec::Fields::new(Bucket::Members, v);
        let id = fields.next::<u64>()?;
        let name = codec::bytes::<P::Bytes>(fields.next::<&[u8]>()?, "member name")?;
        let mut urls = [P::MemberUrls::default(), P::MemberUrls::default()];
        for list in &mut urls {
            for _ in 0..fields.list_len()? {
                codec::push(list, codec::bytes::<P::Bytes>(fields.next::<&[u8]>()?, "member url")?, "member urls")?;
            }
        }
        let [peer_urls, client_urls] = urls;
        Ok(Member { id, name, peer_urls, client_urls, is_learner: fields.next::<bool>()? })
    }

    fn save<W: WriteTxn + ?Sized>(txn: &mut W, m: &Member<P>, scratch: &mut P::Record) -> Result<(), StoreError> {
        fn url<B: Seq<u8>>(u: &B) -> &[u8] {
            u.as_slice()
        }
        let (peers, clients) = (m.peer_urls.as_slice(), m.client_urls.as_slice());
        super::records::encode_member(m.id, m.name.as_slice(), peers, clients, url, m.is_learner, scratch)?;
        txn.put(Bucket::Members, &member_key(m.id), scratch.as_slice())?;
        Ok(())
    }

    fn member_mut(&mut self, id: MemberId) -> Result<&mut Member<P>, StoreError> {
        codec::find_mut(&mut self.members, &id, |m| &m.id, "member")
    }

    /// Replaces a member's peer URLs (etcd's `MemberUpdate`); refused when another member uses
    /// one of them (`ErrPeerURLexists`).
    pub(crate) fn update_peer_urls<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        id: MemberId,
        peer_urls: &[&[u8]],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if codec::find(self.removed.as_slice(), &id, |r| r).is_some() {
            return Err(StoreError::InvalidRequest("member id was removed"));
        }
        if self.member(id).is_none() {
            return Err(StoreError::NotFound("member"));
        }
        if self.peer_url_in_use(peer_urls, Some(id)) {
            return Err(StoreError::AlreadyExists("peer url"));
        }
        let mut urls = P::MemberUrls::default();
        for u in peer_urls {
            codec::push(&mut urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        let member = self.member_mut(id)?;
        member.peer_urls = urls;
        Self::save(txn, member, scratch)
    }

    /// Sets the name and client URLs a member published (etcd's `UpdateAttributes`, from a
    /// `ClusterMemberAttrSetRequest`); a member that is not in the cluster is not found.
    pub(crate) fn set_attributes<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        id: MemberId,
        name: &[u8],
        client_urls: &[&[u8]],
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let name = codec::bytes::<P::Bytes>(name, "member name")?;
        let mut urls = P::MemberUrls::default();
        for u in client_urls {
            codec::push(&mut urls, codec::bytes::<P::Bytes>(u, "member url")?, "member urls")?;
        }
        let member = self.member_mut(id)?;
        member.name = name;
        member.client_urls = urls;
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
        txn.put(Bucket::MembersRemoved, &member_key(id), super::records::MEMBER_REMOVED)?;
        codec::upsert(&mut self.removed, id, |r| r, "removed members")?;
        Ok(())
    }

    /// Keeps `previous` capabilities when no cluster version was recovered: etcd's
    /// `UpdateCapability` returns early on a nil version, leaving the previous map in place.
    pub(crate) fn inherit_capabilities(&mut self, previous: Capabilities) {
        if self.version.is_none() {
            self.capabilities = previous;
        }
    }

    /// Sets the capabilities as they were (a restore that ended before the swap reads the old
    /// membership back with the capabilities it had).
    pub(crate) fn set_capabilities(&mut self, capabilities: Capabilities) {
        self.capabilities = capabilities;
    }

    /// Sets the cluster version and updates the capabilities.
    pub(crate) fn set_version<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, v: Version) -> Result<(), StoreError> {
        let mut buf = heapless::Vec::<u8, 16>::new();
        codec::put(txn, Bucket::Cluster, CLUSTER_VERSION_KEY, &v, &mut buf)?;
        self.version = Some(v);
        self.capabilities = Capabilities::of(self.version);
        Ok(())
    }

    /// Sets the downgrade info. Cancelling a downgrade clears its target version, as etcd's
    /// `DowngradeCancel` stores `DowngradeInfo{Enabled: false}`.
    pub(crate) fn set_downgrade<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, d: Downgrade) -> Result<(), StoreError> {
        let d = if d.enabled { d } else { Downgrade::default() };
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
        store.load_into(txn)?;
        Ok(store)
    }

    /// Empties the store in its own memory, as a fresh one: no member, no version, the
    /// capabilities of no version.
    pub(crate) fn clear(&mut self) {
        self.members.clear_all();
        self.removed.clear_all();
        self.version = None;
        self.downgrade = Downgrade::default();
        self.capabilities = Capabilities::default();
    }

    /// Reads the store from a read transaction in place (cleared first), capabilities updated
    /// from the version read.
    pub(crate) fn load_into<R: ReadTxn + ?Sized>(&mut self, txn: &R) -> Result<(), StoreError> {
        self.clear();
        let store = self;
        codec::scan(txn, Bucket::Members, |_, v| {
            Self::decode_member(v)
                .and_then(|m| codec::upsert(&mut store.members, m, |m| &m.id, "members").map_err(Into::into))
        })?;
        codec::scan(txn, Bucket::MembersRemoved, |k, _| match parse_member_key(k) {
            Some(id) => codec::upsert(&mut store.removed, id, |r| r, "removed members").map_err(Into::into),
            None => Err(StoreError::Corrupt { bucket: Bucket::MembersRemoved, what: "malformed member id" }),
        })?;
        store.version = codec::get(txn, Bucket::Cluster, CLUSTER_VERSION_KEY)?;
        store.downgrade = codec::get(txn, Bucket::Cluster, DOWNGRADE_KEY)?.unwrap_or_default();
        store.capabilities = Capabilities::of(store.version);
        Ok(())
    }
}
