//! Member and cluster ids as etcd derives them, and `--initial-cluster` as etcd reads it.
//!
//! etcd's `membership.computeMemberId`: the first eight bytes (big-endian) of the SHA-1 of the
//! member's peer URLs, sorted and joined, then the cluster token (`--initial-cluster-token`),
//! then, for a member added at run time, the time in seconds. Its `RaftCluster.genID`: the first
//! eight bytes of the SHA-1 of the members' ids, sorted, each eight bytes big-endian. Every
//! member of a new cluster derives every id alike from the same flags; a member added later
//! gets its id from the member that proposed it.

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use crate::codec::MemberInfo;
use crate::transport::peer_addr;

/// A cluster as a member tells a member about to join it (etcd's `GET /members` on a peer URL,
/// which `GetClusterFromRemotePeers` asks): its id and members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCluster {
    /// The cluster's id.
    pub cluster_id: u64,
    /// Its members.
    pub members: Vec<RemoteMember>,
}

/// A member of a [`RemoteCluster`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMember {
    /// Its id.
    pub id: u64,
    /// Its name (empty until it started, for a member added at run time).
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

impl RemoteCluster {
    /// The member whose peer URLs are `peer_urls` (in any order): how a joining member learns
    /// its id (etcd's `ValidateClusterAndAssignIDs`).
    pub fn member_with(&self, peer_urls: &[String]) -> Option<&RemoteMember> {
        let mut want = peer_urls.to_vec();
        want.sort_unstable();
        self.members.iter().find(|m| {
            let mut have = m.peer_urls.clone();
            have.sort_unstable();
            have == want
        })
    }
}

/// etcd's default `--initial-cluster-token`.
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";

fn first_eight(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest.first_chunk::<8>().copied().unwrap_or_default())
}

/// The id of a member with `peer_urls` in the cluster named `token` (etcd's
/// `computeMemberId`); `now` (Unix seconds) for a member added at run time, `None` for an
/// initial member.
pub fn compute_member_id(peer_urls: &[String], token: &str, now: Option<i64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut sha = Sha1::new();
    for u in urls {
        sha.update(u.as_bytes());
    }
    sha.update(token.as_bytes());
    if let Some(now) = now {
        sha.update(now.to_string().as_bytes());
    }
    first_eight(&sha.finalize())
}

/// The id of a cluster whose members are `ids` (etcd's `RaftCluster.genID`).
pub fn cluster_id(ids: &[u64]) -> u64 {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let mut sha = Sha1::new();
    for id in ids {
        sha.update(id.to_be_bytes());
    }
    first_eight(&sha.finalize())
}

/// Checks a peer URL as etcd's `types.NewURLs` does, and as snapply's transport needs it:
/// `http://IP:PORT` (or `https://`), without a path.
///
/// # Errors
/// What is wrong with it.
pub fn check_peer_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(format!("`{url}` is not http://IP:PORT: URL scheme must be http or https"));
    };
    if rest.contains('/') {
        return Err(format!("`{url}` is not http://IP:PORT: URL must not contain a path"));
    }
    if peer_addr(url).is_none() {
        return Err(format!("`{url}` is not http://IP:PORT: URL address does not have the form \"IP:port\""));
    }
    Ok(())
}

/// The members of a new cluster as `--initial-cluster` and `--initial-cluster-token` give them
/// (etcd's `NewClusterFromURLsMap`), sorted by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster {
    members: Vec<(u64, MemberInfo)>,
}

impl InitialCluster {
    /// Reads `name=URL,...` (a name given twice has two peer URLs, as etcd's `URLsMap`) and
    /// derives every member's id with `token`.
    ///
    /// # Errors
    /// What is wrong, in etcd's words where etcd has them: an entry that is not `name=URL`, a
    /// bad URL, two members with the same id (the same peer URLs).
    pub fn parse(initial_cluster: &str, token: &str) -> Result<Self, String> {
        let mut named: Vec<(String, Vec<String>)> = Vec::new();
        for part in initial_cluster.split(',').filter(|p| !p.is_empty()) {
            let Some((name, url)) = part.split_once('=') else {
                return Err(format!("--initial-cluster: `{part}` is not name=http://IP:PORT"));
            };
            check_peer_url(url).map_err(|e| format!("--initial-cluster: member {name}: {e}"))?;
            match named.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_owned()),
                None => named.push((name.to_owned(), vec![url.to_owned()])),
            }
        }
        if named.is_empty() {
            return Err("--initial-cluster is empty: give every member as name=http://IP:PORT".into());
        }
        let mut members: Vec<(u64, MemberInfo)> = Vec::new();
        for (name, mut peer_urls) in named {
            peer_urls.sort_unstable();
            let id = compute_member_id(&peer_urls, token, None);
            if id == 0 {
                return Err(format!("--initial-cluster: member {name}: cannot use 0 as member id"));
            }
            if members.iter().any(|(other, _)| *other == id) {
                return Err(format!("--initial-cluster: member exists with identical ID {id:x} ({name})"));
            }
            members.push((id, MemberInfo { name, peer_urls, client_urls: Vec::new() }));
        }
        members.sort_unstable_by_key(|(id, _)| *id);
        Ok(InitialCluster { members })
    }

    /// Every member with its id, by id.
    pub fn members(&self) -> &[(u64, MemberInfo)] {
        &self.members
    }

    /// The cluster's id.
    pub fn id(&self) -> u64 {
        cluster_id(&self.members.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    }

    /// The member named `name`, checked against the peer URLs it advertises (etcd's
    /// `ServerConfig.VerifyBootstrap`: `--initial-advertise-peer-urls` must be its URLs in
    /// `--initial-cluster`); `advertised` empty takes its URLs in `--initial-cluster`.
    ///
    /// # Errors
    /// etcd's messages: the name is not in the cluster, or the URLs differ.
    pub fn member(&self, name: &str, advertised: &[String]) -> Result<&(u64, MemberInfo), String> {
        let Some(member) = self.members.iter().find(|(_, m)| m.name == name) else {
            return Err(format!(
                "couldn't find local name {name:?} in the initial cluster configuration: --name {name} is not in --initial-cluster; add {name}=http://IP:PORT to it"
            ));
        };
        if advertised.is_empty() {
            return Ok(member);
        }
        let mut advertised = advertised.to_vec();
        advertised.sort_unstable();
        let urls = &member.1.peer_urls;
        let missing: Vec<String> =
            urls.iter().filter(|u| !advertised.contains(u)).map(|u| format!("{name}={u}")).collect();
        if !missing.is_empty() {
            return Err(format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={}",
                missing.join(","),
                advertised.join(",")
            ));
        }
        let extra: Vec<&String> = advertised.iter().filter(|u| !urls.contains(u)).collect();
        if !extra.is_empty() {
            let extra: Vec<&str> = extra.iter().map(|u| u.as_str()).collect();
            let given: Vec<String> = advertised.iter().map(|u| format!("{name}={u}")).collect();
            return Err(format!(
                "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
                extra.join(","),
                given.join(",")
            ));
        }
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_etcds() {
        // `etcd` with every flag at its default: member 8e9e05c52164694d of cluster
        // cdf818194e3a8c32, as every etcd quick start shows.
        let id = compute_member_id(&["http://localhost:2380".into()], DEFAULT_CLUSTER_TOKEN, None);
        assert_eq!(id, 0x8e9e_05c5_2164_694d);
        assert_eq!(cluster_id(&[id]), 0xcdf8_1819_4e3a_8c32);
        // The token and the time change it; the order of the URLs does not.
        assert_ne!(compute_member_id(&["http://localhost:2380".into()], "other", None), id);
        assert_ne!(compute_member_id(&["http://localhost:2380".into()], DEFAULT_CLUSTER_TOKEN, Some(1)), id);
        let two = ["http://127.0.0.1:2".to_string(), "http://127.0.0.1:1".to_string()];
        let sorted = [two[1].clone(), two[0].clone()];
        assert_eq!(compute_member_id(&two, "t", None), compute_member_id(&sorted, "t", None));
        assert_eq!(cluster_id(&[1, 2]), cluster_id(&[2, 1]));
    }

    #[test]
    fn an_initial_cluster_is_read_as_etcd_reads_it() {
        let c = InitialCluster::parse(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3",
            DEFAULT_CLUSTER_TOKEN,
        )
        .unwrap();
        assert_eq!(c.members().len(), 2);
        let (id, a) = c.member("a", &[]).unwrap();
        assert_eq!(a.peer_urls, ["http://127.0.0.1:1", "http://127.0.0.1:3"]);
        assert_eq!(*id, compute_member_id(&a.peer_urls, DEFAULT_CLUSTER_TOKEN, None));
        assert!(c.member("a", &["http://127.0.0.1:3".into(), "http://127.0.0.1:1".into()]).is_ok());
        assert_eq!(
            c.member("a", &["http://127.0.0.1:1".into()]).unwrap_err(),
            "--initial-cluster has a=http://127.0.0.1:3 but missing from --initial-advertise-peer-urls=http://127.0.0.1:1"
        );
        assert_eq!(
            c.member("b", &["http://127.0.0.1:2".into(), "http://127.0.0.1:9".into()]).unwrap_err(),
            "--initial-advertise-peer-urls has http://127.0.0.1:9 but missing from --initial-cluster=b=http://127.0.0.1:2,b=http://127.0.0.1:9"
        );
        assert!(c.member("c", &[]).unwrap_err().contains("couldn't find local name \"c\""));
        for bad in ["", "a", "a=127.0.0.1:1", "a=http://127.0.0.1:1/x", "a=http://host:1"] {
            assert!(InitialCluster::parse(bad, "t").is_err(), "{bad}");
        }
        assert!(
            InitialCluster::parse("a=http://127.0.0.1:1,b=http://127.0.0.1:1", "t")
                .unwrap_err()
                .contains("member exists with identical ID")
        );
    }
}
