//! Conversion of an etcd snapshot into a snapply image (`docs/format.md`), record by record.
//!
//! The image is written by the core's own encoder ([`snapply_core::image::encode`]), which
//! reads a backend through the [`ReadTxn`] port: [`EtcdView`] is that port over an etcd
//! snapshot, translating each etcd record into the snapply record of the same bucket
//! (`docs/records.md`) as the encoder asks for it. The `key` bucket, the only one that grows
//! with the data, is streamed from the bbolt file one revision at a time; the other buckets
//! (leases, alarms, auth, members, cluster), small in any etcd, are translated up front so
//! they can be handed over in the image's key order.

use core::cell::{Cell, RefCell};
use core::fmt;
use core::ops::ControlFlow;
use std::io;

use serde::Serialize;
use snapply_core::backend::{BackendError, BackendErrorKind, Bucket, ReadTxn, Visit};
use snapply_core::collections::Growable;
use snapply_core::image::{self, EncodeError, Sink, Summary};
use snapply_core::store::{
    self, AUTH_ENABLED_KEY, AUTH_REVISION_KEY, CLUSTER_VERSION_KEY, DOWNGRADE_KEY, META_CONF_STATE,
    META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT, META_TERM, V2Store, member_key, records,
};
use snapply_core::{ConfState, IdList, SnapshotMetadata};

use crate::bbolt::ReadAt;
use crate::error::Error;
use crate::proto::{AlarmType, PermissionType};
use crate::records::Version;
use crate::snapshot::{EtcdBucket, EtcdSnapshot};

/// Most URLs of each kind a member record of an image holds.
const MAX_MEMBER_URLS: usize = store::MAX_MEMBER_URLS;

/// What the conversion needs besides the snapshot: the Raft position etcd 3.4 does not store.
///
/// etcd 3.5 and later keep the term and the conf state of the consistent index in the `meta`
/// bucket, and those are used. etcd 3.4 keeps only the consistent index: the term and the conf
/// state are then taken from here, or, when not given, derived the way `etcdutl snapshot
/// restore` derives them (term 1; voters and learners from the `members` bucket).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The term of the consistent index, for a backend that does not store one.
    pub term: Option<u64>,
    /// The conf state, for a backend that does not store one.
    pub conf_state: Option<ConfState>,
}

/// Where a part of the snapshot metadata came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The backend's `meta` bucket (etcd 3.5+).
    Backend,
    /// [`ImportOptions`].
    Given,
    /// Derived as `etcdutl snapshot restore` does: term 1, the conf state from the members.
    Derived,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Backend => "backend",
            Origin::Given => "given",
            Origin::Derived => "derived",
        })
    }
}

/// The snapshot metadata of an imported etcd snapshot, and where its parts came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportMetadata {
    /// Index (the consistent index), term and conf state.
    pub metadata: SnapshotMetadata,
    /// Where the term came from.
    pub term: Origin,
    /// Where the conf state came from.
    pub conf_state: Origin,
}

/// What an import wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The image's snapshot metadata.
    pub metadata: ImportMetadata,
    /// The image's trailer: record count, v2 length, SHA-256.
    pub summary: Summary,
    /// Records written per bucket, in [`Bucket::ALL`] order.
    pub records: [u64; 10],
    /// Revisions of the `key` bucket that are tombstones (deletions).
    pub tombstones: u64,
    /// Bytes of image written.
    pub bytes: u64,
}

/// An etcd snapshot could not be converted.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportError {
    /// The snapshot could not be read or one of its records does not decode.
    Etcd(Error),
    /// The `meta` bucket has no consistent index: the file is not an etcd v3 backend that
    /// applied anything.
    NoConsistentIndex,
    /// A record holds something the snapply image cannot carry.
    Unsupported {
        /// The bucket.
        bucket: &'static str,
        /// The record's key (its id or name).
        key: Vec<u8>,
        /// What does not fit.
        what: &'static str,
    },
    /// Writing the image failed.
    Write(io::Error),
    /// The image encoder refused a record (a key or value longer than an image carries).
    Encode(EncodeError<io::Error>),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Etcd(e) => write!(f, "{e}"),
            ImportError::NoConsistentIndex => {
                f.write_str("the snapshot's `meta` bucket has no consistent index: not an etcd v3 backend")
            }
            ImportError::Unsupported { bucket, key, what } => {
                write!(f, "record in bucket `{bucket}` at key {} cannot be imported: {what}", key.escape_ascii())
            }
            ImportError::Write(e) => write!(f, "writing the image failed: {e}"),
            ImportError::Encode(e) => write!(f, "encoding the image failed: {e}"),
        }
    }
}

impl core::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ImportError::Etcd(e) => Some(e),
            ImportError::Write(e) => Some(e),
            ImportError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for ImportError {
    fn from(e: Error) -> Self {
        ImportError::Etcd(e)
    }
}

fn unsupported(bucket: EtcdBucket, key: &[u8], what: &'static str) -> ImportError {
    ImportError::Unsupported { bucket: bucket.name(), key: key.to_vec(), what }
}

/// The snapshot metadata an import of `snap` writes: the consistent index as the index, and
/// the term and conf state from the backend, else from `options`, else derived (see
/// [`ImportOptions`]).
///
/// # Errors
/// [`ImportError::NoConsistentIndex`], [`ImportError::Etcd`] if `meta` or `members` does not
/// decode, [`ImportError::Unsupported`] for a conf state of more than 16 ids in a list.
pub fn import_metadata<S: ReadAt>(
    snap: &EtcdSnapshot<S>,
    options: &ImportOptions,
) -> Result<ImportMetadata, ImportError> {
    let meta = snap.meta()?;
    let index = meta.consistent_index.ok_or(ImportError::NoConsistentIndex)?;
    let (term, term_origin) = match (meta.term, options.term) {
        (Some(t), _) => (t, Origin::Backend),
        (None, Some(t)) => (t, Origin::Given),
        // etcdutl's restore starts the new cluster's log at term 1.
        (None, None) => (1, Origin::Derived),
    };
    let ids = |list: &[u64]| -> Result<IdList, ImportError> {
        IdList::from_slice(list)
            .map_err(|_| unsupported(EtcdBucket::Meta, META_CONF_STATE, "more than 16 ids in a list"))
    };
    let (conf_state, conf_origin) = match (&meta.conf_state, &options.conf_state) {
        (Some(c), _) => (
            ConfState {
                voters: ids(&c.voters)?,
                learners: ids(&c.learners)?,
                voters_outgoing: ids(&c.voters_outgoing)?,
                learners_next: ids(&c.learners_next)?,
                auto_leave: c.auto_leave,
            },
            Origin::Backend,
        ),
        (None, Some(c)) => (c.clone(), Origin::Given),
        (None, None) => {
            // etcdutl's restore makes every member of the cluster a voter of the first conf
            // state; a learner stays a learner, as its `members` record says.
            let mut members = snap.members()?;
            members.sort_by_key(|m| m.id);
            let voters: Vec<u64> = members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
            let learners: Vec<u64> = members.iter().filter(|m| m.is_learner).map(|m| m.id).collect();
            let conf = ConfState { voters: ids(&voters)?, learners: ids(&learners)?, ..ConfState::default() };
            (conf, Origin::Derived)
        }
    };
    Ok(ImportMetadata {
        metadata: SnapshotMetadata { index, term, conf_state },
        term: term_origin,
        conf_state: conf_origin,
    })
}

/// Converts `snap` into a snapply image written to `out`, streamed: the `key` bucket one
/// revision at a time, so memory does not grow with the snapshot. `progress` is called every
/// 1 024 revisions with the number converted so far.
///
/// Every record is mapped as etcd serves it (`docs/records.md`): a revision keeps its key,
/// create and mod revision, version, value and lease; a tombstone (which etcd stores as the
/// key alone) gets its revision as mod revision, as etcd's watch reports a deletion; the
/// compaction revisions, leases with their TTLs, alarms, the auth flag and revision, users
/// with their roles, roles with their permissions, members, removed members, the cluster
/// version and downgrade info each become the snapply record of their bucket. The v2 data is
/// the membership tree etcd keeps in its v2 store, rebuilt from the members as
/// `etcdutl snapshot restore` rebuilds it.
///
/// `out` should be buffered; on error, what was written is not an image (it has no trailer)
/// and the caller removes it.
///
/// # Errors
/// [`ImportError`]: a record that does not decode or does not fit an image, a write failure.
pub fn import<S: ReadAt, W: io::Write>(
    snap: &EtcdSnapshot<S>,
    options: &ImportOptions,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ImportError> {
    let metadata = import_metadata(snap, options)?;
    let view = EtcdView::new(snap, &metadata.metadata, progress)?;
    let v2 = view.v2_data()?;
    let mut sink = IoSink { out, written: 0 };
    let result = image::encode(&metadata.metadata, &view, &v2, &mut sink);
    let failed = view.failed.borrow_mut().take();
    let summary = match (result, failed) {
        (_, Some(e)) => return Err(e),
        (Ok(summary), None) => summary,
        (Err(EncodeError::Sink(e)), None) => return Err(ImportError::Write(e)),
        (Err(e), None) => return Err(ImportError::Encode(e)),
    };
    sink.out.flush().map_err(ImportError::Write)?;
    let mut records = view.counts();
    records[0] = view.revisions.get();
    Ok(Imported { metadata, summary, records, tombstones: view.tombstones.get(), bytes: sink.written })
}

/// A [`Sink`] over any [`io::Write`], counting what it wrote.
struct IoSink<W> {
    out: W,
    written: u64,
}

impl<W: io::Write> Sink for IoSink<W> {
    type Error = io::Error;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        self.out.write_all(bytes)?;
        self.written = self.written.saturating_add(bytes.len() as u64);
        Ok(())
    }
}

fn postcard<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising into a growable vector fails only when the allocator does.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn core_version(bucket: EtcdBucket, key: &[u8], v: Version) -> Result<store::Version, ImportError> {
    let part = |n: u64| u16::try_from(n).map_err(|_| unsupported(bucket, key, "version part above 65535"));
    Ok(store::Version { major: part(v.major)?, minor: part(v.minor)?, patch: part(v.patch)? })
}

type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Sets the records of one of the small buckets (one slot per bucket id).
fn set_small(small: &mut [Records; 10], bucket: Bucket, records: Records) {
    if let Some(slot) = small.get_mut(usize::from(bucket.id())) {
        *slot = records;
    }
}

/// The [`ReadTxn`] port over an etcd snapshot, yielding snapply records.
///
/// The port's errors are static context strings; the full error (bucket, key, what) is kept
/// in `failed` and returned by [`import`] instead.
struct EtcdView<'a, S> {
    snap: &'a EtcdSnapshot<S>,
    /// Every bucket but `key`, translated, sorted by key.
    small: [Records; 10],
    failed: RefCell<Option<ImportError>>,
    revisions: Cell<u64>,
    tombstones: Cell<u64>,
    progress: RefCell<&'a mut dyn FnMut(u64)>,
    members: Vec<crate::records::Member>,
    removed: Vec<u64>,
}

impl<'a, S: ReadAt> EtcdView<'a, S> {
    fn new(
        snap: &'a EtcdSnapshot<S>,
        metadata: &SnapshotMetadata,
        progress: &'a mut dyn FnMut(u64),
    ) -> Result<Self, ImportError> {
        let mut small: [Records; 10] = Default::default();
        let meta = snap.meta()?;

        let mut m = vec![
            (META_CONSISTENT_INDEX.to_vec(), metadata.index.to_be_bytes().to_vec()),
            (META_TERM.to_vec(), metadata.term.to_be_bytes().to_vec()),
            (META_CONF_STATE.to_vec(), postcard(&metadata.conf_state)),
        ];
        if let Some(rev) = meta.scheduled_compact_revision {
            m.push((META_SCHEDULED_COMPACT.to_vec(), rev.to_be_bytes().to_vec()));
        }
        if let Some(rev) = meta.finished_compact_revision {
            m.push((META_FINISHED_COMPACT.to_vec(), rev.to_be_bytes().to_vec()));
        }
        set_small(&mut small, Bucket::Meta, m);

        set_small(
            &mut small,
            Bucket::Lease,
            snap.leases()?
                .iter()
                .map(|l| {
                    let mut value = Vec::new();
                    records::encode_lease(l.id, l.ttl, l.remaining_ttl, &mut value)
                        .map(|()| (records::lease_key(l.id).to_vec(), value))
                })
                .collect::<Result<_, _>>()
                .map_err(|_| unsupported(EtcdBucket::Lease, b"", "a lease record does not encode"))?,
        );

        let mut alarms = Vec::new();
        for alarm in snap.alarms()? {
            let kind = match alarm.alarm {
                AlarmType::Nospace => store::AlarmType::Nospace,
                AlarmType::Corrupt => store::AlarmType::Corrupt,
                AlarmType::None => {
                    return Err(unsupported(EtcdBucket::Alarm, &alarm.member_id.to_be_bytes(), "alarm type NONE"));
                }
            };
            let key = records::alarm_key(&store::Alarm { member: alarm.member_id, kind });
            alarms.push((key.to_vec(), Vec::new()));
        }
        set_small(&mut small, Bucket::Alarm, alarms);

        if snap.bucket(EtcdBucket::Auth).is_some() {
            let auth = snap.auth()?;
            set_small(
                &mut small,
                Bucket::Auth,
                vec![
                    (AUTH_ENABLED_KEY.to_vec(), vec![u8::from(auth.enabled)]),
                    (AUTH_REVISION_KEY.to_vec(), auth.revision.to_be_bytes().to_vec()),
                ],
            );
        }

        let mut users = Vec::new();
        for u in snap.users()? {
            let mut roles: Vec<&[u8]> = u.roles.iter().map(|r| r.as_bytes()).collect();
            // etcd keeps a user's roles sorted (`sort.Strings` in `UserGrantRole`); the image
            // requires it.
            roles.sort_unstable();
            roles.dedup();
            let no_password = u.options.is_some_and(|o| o.no_password);
            let mut value = Vec::new();
            records::encode_user(&u.name, &u.password, &roles, |r| r, no_password, &mut value)
                .map_err(|_| unsupported(EtcdBucket::AuthUsers, &u.name, "the user record does not encode"))?;
            users.push((u.name.clone(), value));
        }
        set_small(&mut small, Bucket::AuthUsers, users);

        let mut roles = Vec::new();
        for r in snap.roles()? {
            let mut permissions = Vec::new();
            for p in &r.key_permission {
                // `roles()` has checked every type is one etcd defines.
                let kind = match PermissionType::try_from(p.perm_type) {
                    Ok(PermissionType::Read) => store::PermissionType::Read,
                    Ok(PermissionType::Write) => store::PermissionType::Write,
                    Ok(PermissionType::Readwrite) => store::PermissionType::ReadWrite,
                    Err(_) => return Err(unsupported(EtcdBucket::AuthRoles, &r.name, "unknown permission type")),
                };
                permissions.push((kind, p.key.as_slice(), p.range_end.as_slice()));
            }
            let mut value = Vec::new();
            records::encode_role(&r.name, &permissions, |p| *p, &mut value)
                .map_err(|_| unsupported(EtcdBucket::AuthRoles, &r.name, "the role record does not encode"))?;
            roles.push((r.name.clone(), value));
        }
        set_small(&mut small, Bucket::AuthRoles, roles);

        let members = snap.members()?;
        let mut member_records = Vec::new();
        for m in &members {
            if m.peer_urls.len() > MAX_MEMBER_URLS || m.client_urls.len() > MAX_MEMBER_URLS {
                return Err(unsupported(EtcdBucket::Members, format!("{:x}", m.id).as_bytes(), "more than 8 URLs"));
            }
            let mut value = Vec::new();
            records::encode_member(
                m.id,
                m.name.as_bytes(),
                &m.peer_urls,
                &m.client_urls,
                String::as_bytes,
                m.is_learner,
                &mut value,
            )
            .map_err(|_| {
                unsupported(EtcdBucket::Members, format!("{:x}", m.id).as_bytes(), "the member record does not encode")
            })?;
            member_records.push((member_key(m.id).to_vec(), value));
        }
        set_small(&mut small, Bucket::Members, member_records);

        let removed = snap.removed_members()?;
        set_small(
            &mut small,
            Bucket::MembersRemoved,
            removed.iter().map(|id| (member_key(*id).to_vec(), records::MEMBER_REMOVED.to_vec())).collect(),
        );

        let mut cluster = Vec::new();
        if let Some(v) = snap.cluster_version()? {
            let v = core_version(EtcdBucket::Cluster, CLUSTER_VERSION_KEY, v)?;
            cluster.push((CLUSTER_VERSION_KEY.to_vec(), postcard(&v)));
        }
        if let Some(d) = snap.downgrade()? {
            let target = match d.target {
                Some(t) => core_version(EtcdBucket::Cluster, DOWNGRADE_KEY, t)?,
                None => store::Version::default(),
            };
            cluster.push((DOWNGRADE_KEY.to_vec(), postcard(&store::Downgrade { enabled: d.enabled, target })));
        }
        set_small(&mut small, Bucket::Cluster, cluster);

        for records in &mut small {
            records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(EtcdView {
            snap,
            small,
            failed: RefCell::new(None),
            revisions: Cell::new(0),
            tombstones: Cell::new(0),
            progress: RefCell::new(progress),
            members,
            removed,
        })
    }

    /// The v2 data: the membership tree of etcd's v2 store, as the core's v2 store writes it
    /// (`/0/members/<id>/raftAttributes` holding the first peer URL, `/0/removed_members/<id>`).
    fn v2_data(&self) -> Result<Vec<u8>, ImportError> {
        let v2_error = |_| unsupported(EtcdBucket::Members, b"", "the v2 membership tree does not encode");
        let mut tree = V2Store::<Growable>::default();
        for m in &self.members {
            let first = m.peer_urls.first().map(String::as_bytes).unwrap_or_default();
            tree.add_member(m.id, first).map_err(v2_error)?;
        }
        for id in &self.removed {
            tree.remove_member(*id).map_err(v2_error)?;
        }
        let mut out = Vec::new();
        tree.save(&mut out).map_err(v2_error)?;
        Ok(out)
    }

    fn counts(&self) -> [u64; 10] {
        let mut out = [0u64; 10];
        for (n, records) in out.iter_mut().zip(&self.small) {
            *n = records.len() as u64;
        }
        out
    }

    fn fail(&self, e: ImportError) -> BackendError {
        let kind = match &e {
            ImportError::Etcd(Error::Bolt(crate::bbolt::BoltError::Io { .. })) => BackendErrorKind::Io,
            _ => BackendErrorKind::Corrupt,
        };
        *self.failed.borrow_mut() = Some(e);
        BackendError::new(kind, "reading the etcd snapshot")
    }

    /// The snapply record of one revision: its key (the same bytes etcd uses) and value.
    fn revision_record(&self, rev: crate::RevisionKey, kv: &crate::proto::KeyValue) -> (Vec<u8>, Vec<u8>) {
        let key =
            store::revision_key(store::Revision { main: rev.revision.main, sub: rev.revision.sub }, rev.tombstone);
        let record = if rev.tombstone {
            // etcd writes a tombstone as `KeyValue{Key: key}` and reports the deletion with the
            // tombstone's revision as mod revision (`kvsToEvents` in `watchable_store.go`).
            store::KeyValue {
                key: &kv.key,
                create_revision: 0,
                mod_revision: rev.revision.main,
                version: 0,
                value: &[],
                lease: 0,
            }
        } else {
            store::KeyValue {
                key: &kv.key,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                value: &kv.value,
                lease: kv.lease,
            }
        };
        (key.to_vec(), postcard(&record))
    }
}

impl<S: ReadAt> ReadTxn for EtcdView<'_, S> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        if bucket != Bucket::Key {
            let records = self.small.get(bucket as usize).map_or(&[][..], Vec::as_slice);
            return Ok(match records.binary_search_by(|r| r.0.as_slice().cmp(key)) {
                Ok(i) => {
                    records.get(i).inspect(|r| f(&r.1));
                    true
                }
                Err(_) => false,
            });
        }
        let Some(b) = self.snap.bucket(EtcdBucket::Key) else { return Ok(false) };
        let Some(raw) = self.snap.db().get(b, key).map_err(|e| self.fail(Error::Bolt(e).into()))? else {
            return Ok(false);
        };
        let rev = crate::RevisionKey::parse(key).map_err(|fault| self.fail(Error::record("key", key, fault).into()))?;
        let kv = <crate::proto::KeyValue as prost::Message>::decode(raw.as_slice())
            .map_err(|e| self.fail(Error::record("key", key, crate::RecordFault::Protobuf(e)).into()))?;
        f(&self.revision_record(rev, &kv).1);
        Ok(true)
    }

    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        if bucket != Bucket::Key {
            let records = self.small.get(bucket as usize).map_or(&[][..], Vec::as_slice);
            for (k, v) in records.iter().filter(|r| r.0.as_slice() >= from) {
                if f(k, v).is_break() {
                    break;
                }
            }
            return Ok(());
        }
        for item in self.snap.revisions() {
            let (rev, kv) = item.map_err(|e| self.fail(e.into()))?;
            let (key, value) = self.revision_record(rev, &kv);
            if key.as_slice() < from {
                continue;
            }
            let n = self.revisions.get().saturating_add(1);
            self.revisions.set(n);
            if rev.tombstone {
                self.tombstones.set(self.tombstones.get().saturating_add(1));
            }
            if n.is_multiple_of(1024) {
                (self.progress.borrow_mut())(n);
            }
            if f(&key, &value) == ControlFlow::Break(()) {
                break;
            }
        }
        (self.progress.borrow_mut())(self.revisions.get());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use snapply_core::backend::Backend;
    use snapply_core::mem::VecBackend;
    use snapply_core::store::{AlarmType as CoreAlarm, PermissionType as CorePermission, V2Deprecation};
    use snapply_core::{Config, Node};

    use super::*;
    use crate::bbolt::testdb::{Node as Tree, bucket};
    use crate::snapshot::Options;
    use crate::snapshot::tests::{entry, etcd36, file, replace, rev_key, with_trailer};

    fn open(bytes: Vec<u8>) -> EtcdSnapshot<Vec<u8>> {
        EtcdSnapshot::from_source(bytes, Options::default()).unwrap()
    }

    fn convert(snap: &EtcdSnapshot<Vec<u8>>, options: &ImportOptions) -> (Imported, Vec<u8>) {
        let mut out = Vec::new();
        let mut calls = 0;
        let imported = import(snap, options, &mut out, &mut |_| calls += 1).unwrap();
        assert!(calls > 0, "progress is reported");
        (imported, out)
    }

    /// Materialises an image as a follower does and reads every store back with the core.
    fn restore(image: &[u8]) -> (SnapshotMetadata, Node<VecBackend, Growable>, Vec<u8>) {
        let mut backend = VecBackend::new();
        let mut buf = vec![0u8; image::buffer_for(1024, 1 << 20)];
        let mut v2 = Vec::new();
        let mut txn = backend.write().unwrap();
        let (metadata, _) = image::materialize(image, &mut buf, &mut txn, &mut |c| {
            v2.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        snapply_core::backend::WriteTxn::commit(txn).unwrap();
        let config = Config { id: 7, min_lease_ttl: 1, v2_deprecation: V2Deprecation::WriteOnly };
        let node = Node::open(config, backend, &v2).unwrap();
        (metadata, node, v2)
    }

    #[test]
    fn every_bucket_of_an_etcd_3_6_backend_restores_through_the_core() {
        let snap = open(with_trailer(file(etcd36())));
        let (imported, bytes) = convert(&snap, &ImportOptions::default());
        assert_eq!(imported.bytes, bytes.len() as u64);
        assert_eq!((imported.metadata.term, imported.metadata.conf_state), (Origin::Backend, Origin::Backend));
        assert_eq!(imported.records[0], 201);
        assert_eq!(imported.tombstones, 1);
        let (metadata, node, v2) = restore(&bytes);
        assert_eq!(metadata, imported.metadata.metadata);
        assert_eq!((metadata.index, metadata.term, metadata.conf_state.voters.as_slice()), (42, 3, &[7][..]));

        let s = node.stores();
        assert_eq!(s.cindex.index(), 42);
        assert_eq!(s.cindex.term(), 3);
        assert_eq!(s.kv.current_revision(), 201);
        let txn = node.backend().read().unwrap();
        let mut live = Vec::new();
        s.kv.range(&txn, b"k", b"l", 0, &mut |kv| live.push((kv.key.to_vec(), kv.create_revision, kv.mod_revision)))
            .unwrap();
        assert_eq!(live.len(), 199, "k1 was deleted at 201");
        assert!(live.contains(&(b"k200".to_vec(), 200, 200)));
        assert!(!live.iter().any(|l| l.0 == b"k1"));
        let mut at_100 = Vec::new();
        s.kv.range(&txn, b"k1", b"", 100, &mut |kv| at_100.push(kv.value.to_vec())).unwrap();
        assert_eq!(at_100, vec![b"v".to_vec()], "k1 is still there at revision 100");

        let lease = s.lessor.lease(0x10).unwrap();
        assert_eq!((lease.ttl, lease.remaining_ttl), (30, 0));
        assert_eq!(s.alarms.alarms().len(), 1);
        assert_eq!((s.alarms.alarms()[0].member, s.alarms.alarms()[0].kind), (7, CoreAlarm::Nospace));
        assert!(s.auth.is_enabled());
        assert_eq!(s.auth.revision(), 9);
        let alice = &s.auth.users()[0];
        assert_eq!((alice.name.as_slice(), alice.password_hash.as_slice()), (&b"alice"[..], &b"$2a$10$x"[..]));
        assert_eq!(alice.roles.iter().map(|r| r.as_slice()).collect::<Vec<_>>(), [b"r"]);
        let role = &s.auth.roles()[0];
        let p = &role.permissions[0];
        assert_eq!((p.kind, p.key.as_slice(), p.range_end.as_slice()), (CorePermission::Write, &b"a"[..], &[0][..]));
        let m = s.membership.member(7).unwrap();
        assert_eq!(m.name.as_slice(), b"m");
        assert_eq!(m.peer_urls[0].as_slice(), b"http://p");
        assert_eq!(m.client_urls[0].as_slice(), b"http://c");
        assert_eq!(s.membership.removed(), [0xff]);
        assert_eq!(s.membership.version(), Some(store::Version { major: 3, minor: 6, patch: 0 }));
        let d = s.membership.downgrade();
        assert!(d.enabled && d.target == store::Version { major: 3, minor: 5, patch: 0 });
        let nodes: Vec<(&[u8], &[u8])> = s.v2.nodes().iter().map(|n| (n.path.as_slice(), n.value.as_slice())).collect();
        assert_eq!(
            nodes,
            [
                (&b"/0/members/0000000000000007/raftAttributes"[..], &b"http://p"[..]),
                (b"/0/removed_members/00000000000000ff", b"removed")
            ]
        );
        assert!(!v2.is_empty());

        // The image is canonical: the core's encoder, reading back the restored backend, writes
        // the same bytes.
        let mut again = Vec::new();
        image::encode(&metadata, &txn, &v2, &mut again).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn an_etcd_3_4_backend_takes_term_and_conf_state_from_the_options_or_the_members() {
        let mut root = etcd36();
        replace(
            &mut root,
            "meta",
            vec![entry("consistent_index", 9u64.to_be_bytes()), entry("finishedCompactRev", rev_key(4, 0, false))],
        );
        replace(
            &mut root,
            "members",
            vec![
                entry("7", r#"{"id":7,"peerURLs":["http://p"]}"#),
                entry("3", r#"{"id":3,"peerURLs":["http://q"],"isLearner":true}"#),
            ],
        );
        let snap = open(file(root));
        let derived = import_metadata(&snap, &ImportOptions::default()).unwrap();
        assert_eq!((derived.term, derived.conf_state), (Origin::Derived, Origin::Derived));
        let m = &derived.metadata;
        assert_eq!(
            (m.index, m.term, m.conf_state.voters.as_slice(), m.conf_state.learners.as_slice()),
            (9, 1, &[7][..], &[3][..])
        );

        let conf = ConfState { voters: IdList::from_slice(&[1, 2]).unwrap(), ..ConfState::default() };
        let options = ImportOptions { term: Some(5), conf_state: Some(conf.clone()) };
        let (imported, bytes) = convert(&snap, &options);
        assert_eq!((imported.metadata.term, imported.metadata.conf_state), (Origin::Given, Origin::Given));
        let (metadata, node, _) = restore(&bytes);
        assert_eq!(metadata, SnapshotMetadata { index: 9, term: 5, conf_state: conf });
        assert_eq!(node.stores().kv.compact_revision(), 4);
        assert_eq!(node.stores().cindex.term(), 5);
    }

    #[test]
    fn what_does_not_convert_is_refused_with_its_bucket_and_key() {
        // A revision that does not decode.
        let mut root = etcd36();
        replace(&mut root, "key", vec![entry(rev_key(1, 0, false), [0xff, 0xff])]);
        let err = import(&open(file(root)), &ImportOptions::default(), Vec::new(), &mut |_| ()).unwrap_err();
        assert!(matches!(&err, ImportError::Etcd(Error::Record { bucket: "key", .. })), "{err}");
        assert!(err.to_string().contains("bucket `key`"), "{err}");

        // No consistent index.
        let mut root = etcd36();
        replace(&mut root, "meta", vec![]);
        let err = import(&open(file(root)), &ImportOptions::default(), Vec::new(), &mut |_| ()).unwrap_err();
        assert!(matches!(err, ImportError::NoConsistentIndex), "{err}");

        // A member with more peer URLs than a follower's transport takes.
        let mut root = etcd36();
        let urls: Vec<String> = (0..9).map(|i| format!("\"http://10.0.0.{i}:2380\"")).collect();
        let member = format!(r#"{{"id":7,"peerURLs":[{}]}}"#, urls.join(","));
        replace(&mut root, "members", vec![entry("7", member)]);
        let err = import(&open(file(root)), &ImportOptions::default(), Vec::new(), &mut |_| ()).unwrap_err();
        assert!(matches!(&err, ImportError::Unsupported { bucket: "members", .. }), "{err}");
        assert!(err.to_string().contains("more than 8 URLs"), "{err}");

        // A nested bucket where revisions are.
        let mut root = etcd36();
        replace(&mut root, "key", vec![(rev_key(1, 0, false), bucket(vec![entry("a", "b")]))]);
        let err = import(&open(file(root)), &ImportOptions::default(), Vec::new(), &mut |_| ()).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
    }

    #[test]
    fn the_view_answers_point_reads_as_the_image_holds_them() {
        let snap = open(file(etcd36()));
        let (_, bytes) = convert(&snap, &ImportOptions::default());
        let (_, node, _) = restore(&bytes);
        let restored = node.backend().read().unwrap();
        let metadata = import_metadata(&snap, &ImportOptions::default()).unwrap().metadata;
        let mut progress = |_| ();
        let view = EtcdView::new(&snap, &metadata, &mut progress).unwrap();
        let cases: [(Bucket, Vec<u8>); 6] = [
            (Bucket::Key, rev_key(7, 0, false)),
            (Bucket::Key, rev_key(201, 0, true)),
            (Bucket::Key, rev_key(999, 0, false)),
            (Bucket::Lease, 0x10i64.to_be_bytes().to_vec()),
            (Bucket::Meta, META_TERM.to_vec()),
            (Bucket::Members, b"nope".to_vec()),
        ];
        for (bucket, key) in cases {
            let (mut a, mut b) = (None, None);
            let found = view.get(bucket, &key, &mut |v| a = Some(v.to_vec())).unwrap();
            let expected = restored.get(bucket, &key, &mut |v| b = Some(v.to_vec())).unwrap();
            assert_eq!((found, a), (expected, b), "{bucket:?} {key:?}");
        }
    }

    struct Failing;
    impl io::Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_writer_is_an_error_not_a_panic() {
        let err = import(&open(file(etcd36())), &ImportOptions::default(), Failing, &mut |_| ()).unwrap_err();
        assert!(matches!(err, ImportError::Write(_)), "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }

    /// A writer that remembers only how much it was given, and the largest single write.
    #[derive(Default)]
    struct Measure {
        total: u64,
        largest: usize,
    }
    impl io::Write for &mut Measure {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.total += b.len() as u64;
            self.largest = self.largest.max(b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_image_is_written_record_by_record() {
        let mut root = etcd36();
        let keys: Vec<(Vec<u8>, Tree)> = (1..=2000)
            .map(|i| {
                let kv = crate::snapshot::tests::kv("k", i, &"x".repeat(1024), 0);
                entry(rev_key(i, 0, false), prost::Message::encode_to_vec(&kv))
            })
            .collect();
        replace(&mut root, "key", keys);
        let snap = open(file(root));
        let mut measure = Measure::default();
        let imported = import(&snap, &ImportOptions::default(), &mut measure, &mut |_| ()).unwrap();
        assert!(measure.total > 2000 * 1024);
        assert_eq!(measure.total, imported.bytes);
        assert!(measure.largest <= 2 * 1024, "no write larger than a record: {}", measure.largest);
    }
}
