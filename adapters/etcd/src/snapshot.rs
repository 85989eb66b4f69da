//! An etcd v3 snapshot: a bbolt database, with the SHA-256 trailer `etcdctl snapshot save`
//! appends, decoded bucket by bucket.

use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;

use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::bbolt::{BoltError, Bucket, Cursor, Db, Limits, ReadAt};
use crate::error::{Error, RecordFault};
use crate::proto::{AlarmMember, AlarmType, KeyValue, Lease, PermissionType, Role, User};
use crate::records::{Alarm, AuthState, Downgrade, Layout, Member, Meta, RevisionKey, Version, member_id};

/// The length of the trailer: a SHA-256 digest.
const TRAILER: u64 = 32;
/// Bytes hashed per read while checking the trailer.
const HASH_CHUNK: usize = 1 << 20;

/// The buckets etcd keeps in its backend, by their names in the root bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EtcdBucket {
    /// `key`: MVCC revisions.
    Key,
    /// `meta`: consistent index, term, conf state, compaction revisions, storage version.
    Meta,
    /// `lease`.
    Lease,
    /// `alarm`.
    Alarm,
    /// `auth`: the auth flag and revision.
    Auth,
    /// `authUsers`.
    AuthUsers,
    /// `authRoles`.
    AuthRoles,
    /// `members`.
    Members,
    /// `members_removed`.
    MembersRemoved,
    /// `cluster`: cluster version and downgrade info.
    Cluster,
}

impl EtcdBucket {
    /// Every bucket etcd keeps.
    pub const ALL: [EtcdBucket; 10] = [
        EtcdBucket::Key,
        EtcdBucket::Meta,
        EtcdBucket::Lease,
        EtcdBucket::Alarm,
        EtcdBucket::Auth,
        EtcdBucket::AuthUsers,
        EtcdBucket::AuthRoles,
        EtcdBucket::Members,
        EtcdBucket::MembersRemoved,
        EtcdBucket::Cluster,
    ];

    /// The bucket's name in the backend.
    pub const fn name(self) -> &'static str {
        match self {
            EtcdBucket::Key => "key",
            EtcdBucket::Meta => "meta",
            EtcdBucket::Lease => "lease",
            EtcdBucket::Alarm => "alarm",
            EtcdBucket::Auth => "auth",
            EtcdBucket::AuthUsers => "authUsers",
            EtcdBucket::AuthRoles => "authRoles",
            EtcdBucket::Members => "members",
            EtcdBucket::MembersRemoved => "members_removed",
            EtcdBucket::Cluster => "cluster",
        }
    }
}

/// What the snapshot's SHA-256 trailer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    /// There is no trailer: a member's `db` file, or a snapshot whose trailer was removed.
    Absent,
    /// The trailer matched the database bytes.
    Verified([u8; 32]),
    /// There is a trailer, and checking it was turned off ([`Options::verify_digest`]).
    Unchecked([u8; 32]),
}

/// How a snapshot is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Check the SHA-256 trailer when there is one (default `true`). This reads the whole
    /// database once more, in 1 MiB chunks.
    pub verify_digest: bool,
    /// Limits on what the bbolt reader allocates.
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options { verify_digest: true, limits: Limits::default() }
    }
}

/// An etcd snapshot opened read-only: `etcdctl snapshot save` output or a member's
/// `member/snap/db`.
///
/// Opening checks the bbolt meta pages and the SHA-256 trailer, and finds the top-level
/// buckets; everything else is read on demand, a page at a time. The `key` bucket is streamed
/// ([`EtcdSnapshot::revisions`]); the other buckets, small in any etcd, are returned whole.
/// A bucket that is missing reads as empty, as it would in an etcd that never wrote it.
#[derive(Debug)]
pub struct EtcdSnapshot<S> {
    db: Db<S>,
    digest: Digest,
    buckets: [Option<Bucket>; 10],
}

impl EtcdSnapshot<File> {
    /// Opens the snapshot file at `path` with the default [`Options`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Open { path: path.to_path_buf(), source })?;
        Self::from_source(file, Options::default())
    }
}

impl<S: ReadAt> EtcdSnapshot<S> {
    /// Opens the snapshot held by `source`.
    ///
    /// A source whose length is 32 more than a multiple of 512 ends with a SHA-256 trailer,
    /// the rule etcd's own restore uses (`hasChecksum` in `etcdutl/snapshot/v3_snapshot.go`);
    /// bbolt files are whole pages of at least 512 bytes, so no trailer-less file matches it.
    pub fn from_source(source: S, options: Options) -> Result<Self, Error> {
        let size = source.size().map_err(|source| BoltError::Io { offset: 0, len: 0, source })?;
        let has_trailer = size % 512 == TRAILER && size >= TRAILER;
        let db_len = if has_trailer { size - TRAILER } else { size };
        let db = Db::open_prefix(source, db_len, options.limits)?;
        let digest = if has_trailer {
            let mut stored = [0u8; 32];
            read(db.source(), &mut stored, db_len)?;
            if options.verify_digest {
                let computed = sha256_prefix(db.source(), db_len)?;
                if computed != stored {
                    return Err(Error::DigestMismatch { stored, computed });
                }
                Digest::Verified(stored)
            } else {
                Digest::Unchecked(stored)
            }
        } else {
            Digest::Absent
        };
        let mut buckets: [Option<Bucket>; 10] = Default::default();
        db.for_each::<Error>(&db.root(), |entry| {
            if let Some(i) = EtcdBucket::ALL.iter().position(|b| b.name().as_bytes() == entry.key()) {
                let bucket = entry.bucket()?;
                if bucket.is_none() {
                    return Err(Error::record("(root)", entry.key(), RecordFault::NotABucket));
                }
                if let Some(slot) = buckets.get_mut(i) {
                    *slot = bucket;
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(EtcdSnapshot { db, digest, buckets })
    }

    /// What the SHA-256 trailer said.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The bbolt database, for reading it directly.
    pub fn db(&self) -> &Db<S> {
        &self.db
    }

    /// The bucket `which`, or `None` if the snapshot has none.
    pub fn bucket(&self, which: EtcdBucket) -> Option<&Bucket> {
        self.buckets.get(which as usize).and_then(Option::as_ref)
    }

    /// Calls `f` with every raw `(key, value)` of `which` in key order, until it breaks. A
    /// nested bucket inside it is an error: etcd nests none.
    pub fn for_each_raw(
        &self,
        which: EtcdBucket,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, Error>,
    ) -> Result<(), Error> {
        let Some(bucket) = self.bucket(which) else { return Ok(()) };
        self.db.for_each::<Error>(bucket, |entry| {
            if entry.is_bucket() {
                return Err(Error::record(which.name(), entry.key(), RecordFault::NestedBucket));
            }
            f(entry.key(), entry.value())
        })
    }

    /// The `meta` bucket.
    pub fn meta(&self) -> Result<Meta, Error> {
        let mut meta = Meta::default();
        self.for_each_raw(EtcdBucket::Meta, |k, v| {
            meta.absorb(k, v).map_err(|fault| Error::record("meta", k, fault))?;
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(meta)
    }

    /// The etcd release whose layout the backend has (from the `meta` bucket).
    pub fn layout(&self) -> Result<Layout, Error> {
        Ok(self.meta()?.layout())
    }

    /// The `key` bucket's revisions in revision order, decoded one at a time.
    pub fn revisions(&self) -> Revisions<'_, S> {
        Revisions { cursor: self.bucket(EtcdBucket::Key).map(|b| self.db.cursor(b)) }
    }

    /// Calls `f` with every revision of the `key` bucket in order, until it breaks.
    pub fn for_each_revision(&self, mut f: impl FnMut(RevisionKey, KeyValue) -> ControlFlow<()>) -> Result<(), Error> {
        for item in self.revisions() {
            let (rev, kv) = item?;
            if f(rev, kv).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The `lease` bucket, in lease id order (keys are big-endian ids).
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        self.collect(EtcdBucket::Lease, |k, v| {
            let lease = Lease::decode(v).map_err(RecordFault::Protobuf)?;
            let key: [u8; 8] =
                k.try_into().map_err(|_| RecordFault::Length { expected: "8 (lease id)", found: k.len() })?;
            if i64::from_be_bytes(key) != lease.id {
                return Err(RecordFault::KeyMismatch);
            }
            Ok(lease)
        })
    }

    /// The `alarm` bucket: each key is a marshalled `AlarmMember`, each value empty.
    pub fn alarms(&self) -> Result<Vec<Alarm>, Error> {
        self.collect(EtcdBucket::Alarm, |k, _| {
            let member = AlarmMember::decode(k).map_err(RecordFault::Protobuf)?;
            let alarm = AlarmType::try_from(member.alarm).map_err(|_| RecordFault::UnknownEnum(member.alarm))?;
            Ok(Alarm { member_id: member.member_id, alarm })
        })
    }

    /// The `auth` bucket.
    pub fn auth(&self) -> Result<AuthState, Error> {
        let mut auth = AuthState::default();
        self.for_each_raw(EtcdBucket::Auth, |k, v| {
            auth.absorb(k, v).map_err(|fault| Error::record("auth", k, fault))?;
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(auth)
    }

    /// The `authUsers` bucket, by name.
    pub fn users(&self) -> Result<Vec<User>, Error> {
        self.collect(EtcdBucket::AuthUsers, |k, v| {
            let user = User::decode(v).map_err(RecordFault::Protobuf)?;
            if user.name != k {
                return Err(RecordFault::KeyMismatch);
            }
            Ok(user)
        })
    }

    /// The `authRoles` bucket, by name. Every permission type is checked to be one etcd
    /// defines.
    pub fn roles(&self) -> Result<Vec<Role>, Error> {
        self.collect(EtcdBucket::AuthRoles, |k, v| {
            let role = Role::decode(v).map_err(RecordFault::Protobuf)?;
            if role.name != k {
                return Err(RecordFault::KeyMismatch);
            }
            if let Some(p) = role.key_permission.iter().find(|p| PermissionType::try_from(p.perm_type).is_err()) {
                return Err(RecordFault::UnknownEnum(p.perm_type));
            }
            Ok(role)
        })
    }

    /// The `members` bucket, in key order (etcd's hexadecimal ids, which do not sort
    /// numerically).
    pub fn members(&self) -> Result<Vec<Member>, Error> {
        self.collect(EtcdBucket::Members, |k, v| {
            let id = member_id(k)?;
            let member: Member = serde_json::from_slice(v).map_err(RecordFault::Json)?;
            if member.id != id {
                return Err(RecordFault::KeyMismatch);
            }
            Ok(member)
        })
    }

    /// The ids in the `members_removed` bucket.
    pub fn removed_members(&self) -> Result<Vec<u64>, Error> {
        self.collect(EtcdBucket::MembersRemoved, |k, _| member_id(k))
    }

    /// `cluster/clusterVersion`, if set.
    pub fn cluster_version(&self) -> Result<Option<Version>, Error> {
        self.cluster_value(b"clusterVersion", |v| {
            Version::parse(core::str::from_utf8(v).map_err(|_| RecordFault::Utf8)?)
        })
    }

    /// `cluster/downgrade` (etcd 3.5+), if set.
    pub fn downgrade(&self) -> Result<Option<Downgrade>, Error> {
        self.cluster_value(b"downgrade", Downgrade::parse)
    }

    fn cluster_value<T>(
        &self,
        key: &[u8],
        parse: impl Fn(&[u8]) -> Result<T, RecordFault>,
    ) -> Result<Option<T>, Error> {
        let Some(bucket) = self.bucket(EtcdBucket::Cluster) else { return Ok(None) };
        let Some(value) = self.db.get(bucket, key)? else { return Ok(None) };
        parse(&value).map(Some).map_err(|fault| Error::record("cluster", key, fault))
    }

    fn collect<T>(
        &self,
        which: EtcdBucket,
        mut decode: impl FnMut(&[u8], &[u8]) -> Result<T, RecordFault>,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        self.for_each_raw(which, |k, v| {
            out.push(decode(k, v).map_err(|fault| Error::record(which.name(), k, fault))?);
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }
}

/// The revisions of the `key` bucket, in order, each decoded when reached: an iterator of
/// `(RevisionKey, KeyValue)`. After an error it ends.
#[derive(Debug)]
pub struct Revisions<'a, S> {
    cursor: Option<Cursor<'a, S>>,
}

impl<S: ReadAt> Iterator for Revisions<'_, S> {
    type Item = Result<(RevisionKey, KeyValue), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let cursor = self.cursor.as_mut()?;
        let item = match cursor.next() {
            Ok(None) => None,
            Ok(Some(entry)) if entry.is_bucket() => {
                Some(Err(Error::record("key", entry.key(), RecordFault::NestedBucket)))
            }
            Ok(Some(entry)) => Some(
                RevisionKey::parse(entry.key())
                    .and_then(|rev| KeyValue::decode(entry.value()).map(|kv| (rev, kv)).map_err(RecordFault::Protobuf))
                    .map_err(|fault| Error::record("key", entry.key(), fault)),
            ),
            Err(e) => Some(Err(e.into())),
        };
        if !matches!(item, Some(Ok(_))) {
            self.cursor = None;
        }
        item
    }
}

fn read<S: ReadAt>(source: &S, buf: &mut [u8], offset: u64) -> Result<(), BoltError> {
    source.read_exact_at(buf, offset).map_err(|source| BoltError::Io { offset, len: buf.len() as u64, source })
}

/// SHA-256 of the first `len` bytes of `source`, read in chunks.
fn sha256_prefix<S: ReadAt>(source: &S, len: u64) -> Result<[u8; 32], BoltError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from(len - offset).map_or(HASH_CHUNK, |rest| rest.min(HASH_CHUNK));
        let chunk = buf.get_mut(..n).unwrap_or_default();
        read(source, chunk, offset)?;
        hasher.update(&*chunk);
        offset += n as u64;
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::bbolt::testdb::{Layout as PageLayout, Node, bucket, build, value};
    use crate::proto::{Permission, UserAddOptions};
    use crate::records::{ConfState, Revision};

    fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        if tombstone {
            k.push(b't');
        }
        k
    }

    fn kv(key: &str, rev: i64, value: &str, lease: i64) -> KeyValue {
        KeyValue { key: key.into(), create_revision: rev, mod_revision: rev, version: 1, value: value.into(), lease }
    }

    fn entry(k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) -> (Vec<u8>, Node) {
        (k.into(), value(v))
    }

    /// A backend as etcd 3.6 lays it out, with every bucket populated.
    fn etcd36() -> Vec<(Vec<u8>, Node)> {
        let keys: Vec<(Vec<u8>, Node)> = (1..=200)
            .map(|i| entry(rev_key(i, 0, false), kv(&format!("k{i}"), i, "v", 0).encode_to_vec()))
            .chain([entry(
                rev_key(201, 0, true),
                KeyValue { key: b"k1".to_vec(), ..KeyValue::default() }.encode_to_vec(),
            )])
            .collect();
        let lease = Lease { id: 0x10, ttl: 30, remaining_ttl: 0 };
        let alarm = AlarmMember { member_id: 7, alarm: AlarmType::Nospace as i32 };
        let user = User {
            name: b"alice".to_vec(),
            password: b"$2a$10$x".to_vec(),
            roles: vec!["r".into()],
            options: Some(UserAddOptions { no_password: false }),
        };
        let role = Role {
            name: b"r".to_vec(),
            key_permission: vec![Permission { perm_type: 1, key: b"a".to_vec(), range_end: vec![0] }],
        };
        vec![
            (b"key".to_vec(), bucket(keys)),
            (
                b"meta".to_vec(),
                bucket(vec![
                    entry("consistent_index", 42u64.to_be_bytes()),
                    entry("term", 3u64.to_be_bytes()),
                    entry("confState", r#"{"voters":[7],"auto_leave":false}"#),
                    entry("scheduledCompactRev", rev_key(5, 0, false)),
                    entry("finishedCompactRev", rev_key(4, 0, false)),
                    entry("storageVersion", "3.6.0"),
                ]),
            ),
            (b"lease".to_vec(), bucket(vec![entry(0x10i64.to_be_bytes(), lease.encode_to_vec())])),
            (b"alarm".to_vec(), bucket(vec![entry(alarm.encode_to_vec(), "")])),
            (b"auth".to_vec(), bucket(vec![entry("authEnabled", [1]), entry("authRevision", 9u64.to_be_bytes())])),
            (b"authUsers".to_vec(), bucket(vec![entry("alice", user.encode_to_vec())])),
            (b"authRoles".to_vec(), bucket(vec![entry("r", role.encode_to_vec())])),
            (
                b"members".to_vec(),
                bucket(vec![entry("7", r#"{"id":7,"peerURLs":["http://p"],"name":"m","clientURLs":["http://c"]}"#)]),
            ),
            (b"members_removed".to_vec(), bucket(vec![entry("ff", "removed")])),
            (
                b"cluster".to_vec(),
                bucket(vec![
                    entry("clusterVersion", "3.6.0"),
                    entry("downgrade", r#"{"target-version":"3.5.0","enabled":true}"#),
                ]),
            ),
        ]
    }

    fn file(root: Vec<(Vec<u8>, Node)>) -> Vec<u8> {
        build(&bucket(root), PageLayout { page_size: 4096, fanout: 16, inline: true })
    }

    fn with_trailer(mut db: Vec<u8>) -> Vec<u8> {
        let digest: [u8; 32] = Sha256::digest(&db).into();
        db.extend_from_slice(&digest);
        db
    }

    fn open(bytes: Vec<u8>) -> Result<EtcdSnapshot<Vec<u8>>, Error> {
        EtcdSnapshot::from_source(bytes, Options::default())
    }

    #[test]
    fn every_bucket_of_an_etcd_3_6_backend_decodes() {
        let snap = open(with_trailer(file(etcd36()))).unwrap();
        assert!(matches!(snap.digest(), Digest::Verified(_)));
        let meta = snap.meta().unwrap();
        assert_eq!(
            meta,
            Meta {
                consistent_index: Some(42),
                term: Some(3),
                conf_state: Some(ConfState { voters: vec![7], ..ConfState::default() }),
                scheduled_compact_revision: Some(5),
                finished_compact_revision: Some(4),
                storage_version: Some("3.6.0".into()),
            }
        );
        assert_eq!(snap.layout().unwrap(), Layout::V3_6);

        let revs: Vec<(RevisionKey, KeyValue)> = snap.revisions().collect::<Result<_, _>>().unwrap();
        assert_eq!(revs.len(), 201);
        assert_eq!(
            revs[0],
            (RevisionKey { revision: Revision { main: 1, sub: 0 }, tombstone: false }, kv("k1", 1, "v", 0))
        );
        assert!(revs[200].0.tombstone && revs[200].1.key == b"k1");
        assert!(revs.windows(2).all(|w| w[0].0 < w[1].0));
        let mut seen = 0;
        snap.for_each_revision(|_, _| {
            seen += 1;
            if seen == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
        assert_eq!(seen, 3);

        assert_eq!(snap.leases().unwrap(), vec![Lease { id: 0x10, ttl: 30, remaining_ttl: 0 }]);
        assert_eq!(snap.alarms().unwrap(), vec![Alarm { member_id: 7, alarm: AlarmType::Nospace }]);
        assert_eq!(snap.auth().unwrap(), AuthState { enabled: true, revision: 9 });
        assert_eq!(snap.users().unwrap()[0].roles, vec!["r".to_string()]);
        assert_eq!(snap.roles().unwrap()[0].key_permission[0].range_end, vec![0]);
        assert_eq!(
            snap.members().unwrap(),
            vec![Member {
                id: 7,
                name: "m".into(),
                peer_urls: vec!["http://p".into()],
                client_urls: vec!["http://c".into()],
                is_learner: false
            }]
        );
        assert_eq!(snap.removed_members().unwrap(), vec![0xff]);
        assert_eq!(snap.cluster_version().unwrap(), Some(Version { major: 3, minor: 6, patch: 0 }));
        assert_eq!(
            snap.downgrade().unwrap(),
            Some(Downgrade { enabled: true, target: Some(Version { major: 3, minor: 5, patch: 0 }) })
        );
    }

    #[test]
    fn an_etcd_3_5_backend_and_one_with_missing_buckets_decode() {
        let mut root = etcd36();
        if let (_, Node::Bucket(meta)) = &mut root[1] {
            meta.retain(|(k, _)| k != b"storageVersion");
        }
        let snap = open(file(root)).unwrap();
        assert_eq!(snap.digest(), Digest::Absent);
        assert_eq!(snap.layout().unwrap(), Layout::V3_5);

        // Only `key` and a 3.4 `meta`: everything else reads as empty.
        let root = vec![
            (b"key".to_vec(), bucket(vec![])),
            (b"meta".to_vec(), bucket(vec![entry("consistent_index", 1u64.to_be_bytes())])),
            (b"unrelated".to_vec(), bucket(vec![entry("x", "y")])),
        ];
        let snap = open(with_trailer(file(root))).unwrap();
        assert_eq!(snap.layout().unwrap(), Layout::V3_4);
        assert_eq!(snap.revisions().count(), 0);
        assert_eq!(snap.leases().unwrap(), vec![]);
        assert_eq!(snap.auth().unwrap(), AuthState::default());
        assert_eq!(snap.members().unwrap(), vec![]);
        assert_eq!(snap.cluster_version().unwrap(), None);
        assert_eq!(snap.downgrade().unwrap(), None);
        assert!(snap.bucket(EtcdBucket::Lease).is_none());
    }

    #[test]
    fn the_trailer_is_checked_unless_told_not_to() {
        let mut bytes = with_trailer(file(etcd36()));
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        let err = open(bytes.clone()).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let snap = EtcdSnapshot::from_source(bytes, Options { verify_digest: false, ..Options::default() }).unwrap();
        assert!(matches!(snap.digest(), Digest::Unchecked(_)));
    }

    fn replace(root: &mut [(Vec<u8>, Node)], name: &str, entries: Vec<(Vec<u8>, Node)>) {
        for (k, node) in root.iter_mut() {
            if k == name.as_bytes() {
                *node = bucket(entries.clone());
            }
        }
    }

    fn record_fault(root: Vec<(Vec<u8>, Node)>, read: impl Fn(&EtcdSnapshot<Vec<u8>>) -> Result<(), Error>) -> Error {
        let snap = open(file(root)).unwrap();
        read(&snap).unwrap_err()
    }

    #[test]
    fn malformed_records_are_refused_with_their_bucket_and_key() {
        type Read = fn(&EtcdSnapshot<Vec<u8>>) -> Result<(), Error>;
        type Entries = Vec<(Vec<u8>, Node)>;
        let cases: Vec<(&str, Entries, Read, &str)> = vec![
            (
                "key",
                vec![entry(vec![0u8; 9], "")],
                |s| s.for_each_revision(|_, _| ControlFlow::Continue(())),
                "revision",
            ),
            (
                "key",
                vec![entry(rev_key(1, 0, false), [0xff, 0xff])],
                |s| s.revisions().try_for_each(|r| r.map(drop)),
                "protobuf",
            ),
            (
                "key",
                vec![(rev_key(1, 0, false), bucket(vec![entry("a", "b")]))],
                |s| s.revisions().try_for_each(|r| r.map(drop)),
                "nested",
            ),
            ("meta", vec![entry("consistent_index", [1, 2])], |s| s.meta().map(drop), "big-endian"),
            (
                "lease",
                vec![entry(1i64.to_be_bytes(), Lease { id: 2, ttl: 1, remaining_ttl: 0 }.encode_to_vec())],
                |s| s.leases().map(drop),
                "match",
            ),
            ("lease", vec![entry("short", "")], |s| s.leases().map(drop), "lease id"),
            (
                "alarm",
                vec![entry(AlarmMember { member_id: 1, alarm: 9 }.encode_to_vec(), "")],
                |s| s.alarms().map(drop),
                "enumeration",
            ),
            (
                "authUsers",
                vec![entry("bob", User { name: b"alice".to_vec(), ..User::default() }.encode_to_vec())],
                |s| s.users().map(drop),
                "match",
            ),
            (
                "authRoles",
                vec![entry(
                    "r",
                    Role {
                        name: b"r".to_vec(),
                        key_permission: vec![Permission { perm_type: 5, ..Permission::default() }],
                    }
                    .encode_to_vec(),
                )],
                |s| s.roles().map(drop),
                "enumeration",
            ),
            ("members", vec![entry("zz", "{}")], |s| s.members().map(drop), "member id"),
            ("members", vec![entry("8", r#"{"id":7}"#)], |s| s.members().map(drop), "match"),
            ("members", vec![entry("7", "not json")], |s| s.members().map(drop), "JSON"),
            ("cluster", vec![entry("clusterVersion", "3.x")], |s| s.cluster_version().map(drop), "version"),
            ("cluster", vec![entry("downgrade", "{")], |s| s.downgrade().map(drop), "JSON"),
        ];
        for (name, entries, read, words) in cases {
            let mut root = etcd36();
            replace(&mut root, name, entries);
            let err = record_fault(root, read);
            assert!(matches!(&err, Error::Record { bucket, .. } if *bucket == name), "{name}: {err}");
            assert!(err.to_string().contains(words), "{name}: `{err}` should mention {words}");
        }
    }

    #[test]
    fn a_top_level_name_holding_a_value_is_refused() {
        let mut root = etcd36();
        root[0] = entry("key", "not a bucket");
        let err = open(file(root)).unwrap_err();
        assert!(matches!(err, Error::Record { fault: RecordFault::NotABucket, .. }), "{err}");
    }

    #[test]
    fn revisions_end_after_an_error() {
        let mut root = etcd36();
        replace(
            &mut root,
            "key",
            vec![
                entry(rev_key(1, 0, false), kv("a", 1, "v", 0).encode_to_vec()),
                entry(rev_key(2, 0, false), [0xff]),
                entry(rev_key(3, 0, false), kv("c", 3, "v", 0).encode_to_vec()),
            ],
        );
        let snap = open(file(root)).unwrap();
        let results: Vec<bool> = snap.revisions().map(|r| r.is_ok()).collect();
        assert_eq!(results, [true, false]);
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = EtcdSnapshot::open("/nonexistent/snapshot.db").unwrap_err();
        assert!(matches!(err, Error::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/snapshot.db"), "{err}");
    }

    /// A source that records the largest single read, to show nothing reads the whole file.
    #[derive(Debug)]
    struct Counting {
        bytes: Vec<u8>,
        largest: std::cell::Cell<usize>,
        total: std::cell::Cell<u64>,
    }

    impl ReadAt for Counting {
        fn size(&self) -> std::io::Result<u64> {
            self.bytes.size()
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.largest.set(self.largest.get().max(buf.len()));
            self.total.set(self.total.get() + buf.len() as u64);
            self.bytes.read_exact_at(buf, offset)
        }
    }

    #[test]
    fn the_file_is_streamed_never_read_whole() {
        // About 3 MiB: 3000 revisions with 1 KiB values, so the file is larger than the hash chunk.
        let mut root = etcd36();
        let keys: Vec<(Vec<u8>, Node)> =
            (1..=3000).map(|i| entry(rev_key(i, 0, false), kv("k", i, &"x".repeat(1024), 0).encode_to_vec())).collect();
        replace(&mut root, "key", keys);
        let bytes = with_trailer(file(root));
        assert!(bytes.len() > 2 * HASH_CHUNK, "{}", bytes.len());
        let source = Counting { bytes, largest: 0.into(), total: 0.into() };
        let snap = EtcdSnapshot::from_source(source, Options::default()).unwrap();
        assert_eq!(snap.db().source().largest.get(), HASH_CHUNK, "the trailer check reads 1 MiB at a time");
        let hashed = snap.db().source().total.get();

        snap.db().source().largest.set(0);
        assert_eq!(snap.revisions().count(), 3000);
        let largest = snap.db().source().largest.get();
        // Leaves of 16 one-KiB values span 5 pages: one run is the most ever read at once.
        assert!(largest <= 5 * 4096, "the walk reads one page run at a time, not {largest} bytes");
        // Each page is read once (header, then the run): at most about twice the file.
        assert!(snap.db().source().total.get() - hashed <= 2 * snap.db().len() + 4096);
    }
}
