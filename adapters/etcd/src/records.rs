//! etcd's bucket records: the typed values and how each is decoded from its bytes.
//!
//! Layouts follow etcd's `server/storage/schema` (3.6) and the code that wrote the same keys
//! in 3.4 and 3.5 (`mvcc/kvstore.go`, `etcdserver/cindex`, `auth/store.go`,
//! `etcdserver/api/membership/store.go`).

use core::fmt;

use serde::Deserialize;

use crate::error::RecordFault;

pub use snapply_core::store::Revision;

/// A key of the `key` bucket: a revision and whether it marks a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionKey {
    /// The revision.
    pub revision: Revision,
    /// The key was deleted at this revision (the key ends with `t`).
    pub tombstone: bool,
}

impl RevisionKey {
    /// Parses etcd's 17-byte revision key, with a trailing `t` (18 bytes) for a tombstone, by
    /// the core's own parser ([`snapply_core::store::parse_revision_key`]): etcd itself panics
    /// on anything else; here it is a fault, and so is a negative revision.
    pub fn parse(key: &[u8]) -> Result<RevisionKey, RecordFault> {
        snapply_core::store::parse_revision_key(key)
            .map(|(revision, tombstone)| RevisionKey { revision, tombstone })
            .ok_or(RecordFault::RevisionKey)
    }
}

/// `raftpb.ConfState` as etcd 3.5+ stores it in `meta/confState` (Go's JSON of the generated
/// struct: lists omitted when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ConfState {
    /// Voters.
    #[serde(default)]
    pub voters: Vec<u64>,
    /// Learners.
    #[serde(default)]
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (joint consensus).
    #[serde(default)]
    pub voters_outgoing: Vec<u64>,
    /// Learners once the outgoing configuration is left.
    #[serde(default)]
    pub learners_next: Vec<u64>,
    /// Leave the joint configuration automatically.
    #[serde(default)]
    pub auto_leave: bool,
}

/// Which etcd release laid out the backend, as far as the `meta` bucket tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// etcd 3.4 (or older): `meta` has `consistent_index` but no `term` or `confState`.
    V3_4,
    /// etcd 3.5: `meta` also has `term` and `confState`.
    V3_5,
    /// etcd 3.6 on: `meta` also has `storageVersion`.
    V3_6,
}

/// The `meta` bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `consistent_index`: the Raft index the backend reflects.
    pub consistent_index: Option<u64>,
    /// `term` (3.5+): the term of that entry.
    pub term: Option<u64>,
    /// `confState` (3.5+).
    pub conf_state: Option<ConfState>,
    /// `scheduledCompactRev`: the main revision of the last compaction scheduled.
    pub scheduled_compact_revision: Option<i64>,
    /// `finishedCompactRev`: the main revision of the last compaction finished.
    pub finished_compact_revision: Option<i64>,
    /// `storageVersion` (3.6+), e.g. `3.6.0`.
    pub storage_version: Option<String>,
}

impl Meta {
    /// The layout these keys belong to.
    pub fn layout(&self) -> Layout {
        if self.storage_version.is_some() {
            Layout::V3_6
        } else if self.term.is_some() || self.conf_state.is_some() {
            Layout::V3_5
        } else {
            Layout::V3_4
        }
    }

    /// Takes one `meta` entry; unknown keys are ignored (a newer etcd may add some).
    pub(crate) fn absorb(&mut self, key: &[u8], value: &[u8]) -> Result<(), RecordFault> {
        match key {
            b"consistent_index" => self.consistent_index = Some(u64_be(value)?),
            b"term" => self.term = Some(u64_be(value)?),
            b"confState" => self.conf_state = Some(serde_json::from_slice(value).map_err(RecordFault::Json)?),
            // Written as revision bytes with sub 0 (etcd `UnsafeSetScheduledCompact`); read as
            // `BytesToRev(..).Main`.
            b"scheduledCompactRev" => self.scheduled_compact_revision = Some(compact_rev(value)?),
            b"finishedCompactRev" => self.finished_compact_revision = Some(compact_rev(value)?),
            b"storageVersion" => {
                self.storage_version = Some(String::from_utf8(value.to_vec()).map_err(|_| RecordFault::Utf8)?)
            }
            _ => {}
        }
        Ok(())
    }
}

fn compact_rev(value: &[u8]) -> Result<i64, RecordFault> {
    if value.len() != 17 {
        return Err(RecordFault::Length { expected: "17 (a revision)", found: value.len() });
    }
    Ok(RevisionKey::parse(value)?.revision.main)
}

pub(crate) fn u64_be(value: &[u8]) -> Result<u64, RecordFault> {
    let bytes: [u8; 8] =
        value.try_into().map_err(|_| RecordFault::Length { expected: "8 (big-endian u64)", found: value.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The `auth` bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    /// `authEnabled` is the single byte 1 (etcd compares it with `[]byte{1}`; anything else,
    /// or nothing, is disabled).
    pub enabled: bool,
    /// `authRevision`, 0 when absent.
    pub revision: u64,
}

impl AuthState {
    pub(crate) fn absorb(&mut self, key: &[u8], value: &[u8]) -> Result<(), RecordFault> {
        match key {
            b"authEnabled" => self.enabled = value == [1],
            b"authRevision" => self.revision = u64_be(value)?,
            _ => {}
        }
        Ok(())
    }
}

/// An alarm: a key of the `alarm` bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    /// The member that raised it.
    pub member_id: u64,
    /// What it is.
    pub alarm: crate::proto::AlarmType,
}

/// A cluster member (`membership.Member` as JSON in the `members` bucket).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// The member id.
    pub id: u64,
    /// The name (empty until the member has published its attributes).
    #[serde(default)]
    pub name: String,
    /// The peer URLs.
    #[serde(default, rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    /// The client URLs (empty until published).
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
    /// Whether it is a learner (non-voting).
    #[serde(default, rename = "isLearner")]
    pub is_learner: bool,
}

/// Parses a member id key: etcd's `types.ID.String()`, lowercase hexadecimal without padding.
pub(crate) fn member_id(key: &[u8]) -> Result<u64, RecordFault> {
    if key.is_empty() || key.len() > 16 || !key.iter().all(u8::is_ascii_hexdigit) {
        return Err(RecordFault::MemberKey);
    }
    let text = core::str::from_utf8(key).map_err(|_| RecordFault::MemberKey)?;
    u64::from_str_radix(text, 16).map_err(|_| RecordFault::MemberKey)
}

/// A `major.minor.patch` version, as `cluster/clusterVersion` and the downgrade target hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
}

impl Version {
    /// Parses `3.5.0`. etcd writes `semver.Version.String()` of a version it cut to
    /// major.minor, so pre-release and build suffixes do not occur; they are refused.
    pub fn parse(text: &str) -> Result<Version, RecordFault> {
        let mut parts = text.split('.').map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RecordFault::Version);
            }
            p.parse::<u64>().map_err(|_| RecordFault::Version)
        });
        let (Some(major), Some(minor), Some(patch), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RecordFault::Version);
        };
        Ok(Version { major: major?, minor: minor?, patch: patch? })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `cluster/downgrade` (3.5+): `{"target-version": "3.5.0", "enabled": true}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downgrade {
    /// Whether a downgrade is in progress.
    pub enabled: bool,
    /// The target version; `None` when etcd stored an empty string (no downgrade).
    pub target: Option<Version>,
}

impl Downgrade {
    pub(crate) fn parse(value: &[u8]) -> Result<Downgrade, RecordFault> {
        #[derive(Deserialize)]
        struct Json {
            #[serde(default, rename = "target-version")]
            target: String,
            #[serde(default)]
            enabled: bool,
        }
        let json: Json = serde_json::from_slice(value).map_err(RecordFault::Json)?;
        let target = if json.target.is_empty() { None } else { Some(Version::parse(&json.target)?) };
        Ok(Downgrade { enabled: json.enabled, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev_key(main: i64, sub: i64, mark: Option<u8>) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        k.extend(mark);
        k
    }

    #[test]
    fn revision_keys_parse_as_etcd_writes_them() {
        assert_eq!(
            RevisionKey::parse(&rev_key(5, 1, None)).unwrap(),
            RevisionKey { revision: Revision { main: 5, sub: 1 }, tombstone: false }
        );
        assert_eq!(
            RevisionKey::parse(&rev_key(7, 0, Some(b't'))).unwrap(),
            RevisionKey { revision: Revision { main: 7, sub: 0 }, tombstone: true }
        );
        for bad in [
            rev_key(7, 0, Some(b'x')),
            rev_key(1, 1, None)[..16].to_vec(),
            vec![0; 17],
            rev_key(-1, 0, None),
            rev_key(1, -5, Some(b't')),
            {
                let mut k = rev_key(1, 1, Some(b't'));
                k.push(b't');
                k
            },
        ] {
            assert!(matches!(RevisionKey::parse(&bad), Err(RecordFault::RevisionKey)), "{bad:?}");
        }
    }

    #[test]
    fn meta_keys_of_each_layout_decode() {
        let mut meta = Meta::default();
        meta.absorb(b"consistent_index", &11u64.to_be_bytes()).unwrap();
        meta.absorb(b"scheduledCompactRev", &rev_key(3, 0, None)).unwrap();
        meta.absorb(b"finishedCompactRev", &rev_key(3, 0, None)).unwrap();
        assert_eq!(meta.layout(), Layout::V3_4);
        assert_eq!((meta.scheduled_compact_revision, meta.finished_compact_revision), (Some(3), Some(3)));
        meta.absorb(b"term", &2u64.to_be_bytes()).unwrap();
        meta.absorb(b"confState", br#"{"voters":[1,2],"learners":[3],"auto_leave":false}"#).unwrap();
        assert_eq!(meta.layout(), Layout::V3_5);
        assert_eq!(meta.conf_state, Some(ConfState { voters: vec![1, 2], learners: vec![3], ..ConfState::default() }));
        meta.absorb(b"storageVersion", b"3.6.0").unwrap();
        assert_eq!(meta.layout(), Layout::V3_6);
        meta.absorb(b"somethingNew", b"ignored").unwrap();

        assert!(matches!(meta.absorb(b"term", &[0; 4]), Err(RecordFault::Length { found: 4, .. })));
        assert!(matches!(meta.absorb(b"scheduledCompactRev", &[0; 8]), Err(RecordFault::Length { found: 8, .. })));
        assert!(matches!(meta.absorb(b"confState", b"{"), Err(RecordFault::Json(_))));
        assert!(matches!(meta.absorb(b"storageVersion", &[0xff]), Err(RecordFault::Utf8)));
    }

    #[test]
    fn members_decode_from_etcds_json() {
        let json = br#"{"id":12345678901234567890,"peerURLs":["http://127.0.0.1:2380"],"isLearner":true}"#;
        let m: Member = serde_json::from_slice(json).unwrap();
        assert_eq!(
            m,
            Member {
                id: 12_345_678_901_234_567_890,
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                is_learner: true,
                ..Member::default()
            }
        );
        let json = br#"{"id":1,"peerURLs":["p"],"name":"n","clientURLs":["c"]}"#;
        let m: Member = serde_json::from_slice(json).unwrap();
        assert_eq!((m.name.as_str(), m.client_urls.len(), m.is_learner), ("n", 1, false));
        assert_eq!(member_id(b"2e12e6cd0ad8a6d0").unwrap(), 0x2e12_e6cd_0ad8_a6d0);
        assert_eq!(member_id(b"1").unwrap(), 1);
        for bad in [&b""[..], b"xyz", b"11111111111111111", b"+1"] {
            assert!(matches!(member_id(bad), Err(RecordFault::MemberKey)), "{bad:?}");
        }
    }

    #[test]
    fn versions_and_downgrades_decode() {
        assert_eq!(Version::parse("3.4.0").unwrap(), Version { major: 3, minor: 4, patch: 0 });
        assert_eq!(Version::parse("3.4.0").unwrap().to_string(), "3.4.0");
        for bad in ["3.4", "3.4.0.1", "3.4.x", "", "3..0", "3.4.0-alpha", "+3.4.0"] {
            assert!(matches!(Version::parse(bad), Err(RecordFault::Version)), "{bad}");
        }
        assert_eq!(
            Downgrade::parse(br#"{"target-version":"3.5.0","enabled":true}"#).unwrap(),
            Downgrade { enabled: true, target: Some(Version { major: 3, minor: 5, patch: 0 }) }
        );
        assert_eq!(
            Downgrade::parse(br#"{"target-version":"","enabled":false}"#).unwrap(),
            Downgrade { enabled: false, target: None }
        );
        assert!(matches!(Downgrade::parse(b"{\"enabled\": 3}"), Err(RecordFault::Json(_))));
    }

    #[test]
    fn auth_flag_and_revision_decode() {
        let mut auth = AuthState::default();
        auth.absorb(b"authEnabled", &[1]).unwrap();
        auth.absorb(b"authRevision", &9u64.to_be_bytes()).unwrap();
        assert_eq!(auth, AuthState { enabled: true, revision: 9 });
        auth.absorb(b"authEnabled", &[0]).unwrap();
        assert!(!auth.enabled);
        auth.absorb(b"authEnabled", &[1, 1]).unwrap();
        assert!(!auth.enabled, "only the single byte 1 enables auth, as in etcd");
        assert!(matches!(auth.absorb(b"authRevision", &[1]), Err(RecordFault::Length { found: 1, .. })));
    }
}
