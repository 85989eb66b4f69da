//! A cluster of nodes in one process on loopback, each with its own data directory: what the
//! cluster tests, the demo and the benchmark run.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::codec::MemberInfo;
use crate::error::RaftError;
use crate::node::{NodeConfig, NodeHandle, Status, start};
use crate::policy::SnapshotPolicy;

/// A member of a [`Cluster`]: its handle (none while stopped), directory and URL.
#[derive(Debug)]
struct Member {
    handle: Option<NodeHandle>,
    info: MemberInfo,
    dir: PathBuf,
}

/// Nodes on loopback, each in `<root>/<name>`. Dropping the cluster stops every node.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    members: BTreeMap<u64, Member>,
    initial: Vec<(u64, MemberInfo)>,
    policy: SnapshotPolicy,
}

/// A free port on loopback: bound, then handed to the node that listens on it.
fn bind() -> Result<(TcpListener, String), RaftError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| RaftError::Io { op: "binding a peer port", source })?;
    let addr = l.local_addr().map_err(|source| RaftError::Io { op: "reading a peer port", source })?;
    Ok((l, format!("http://{addr}")))
}

/// Member id of the `i`-th node (1-based): ids are spread like etcd's, never 0.
pub fn member_id(i: usize) -> u64 {
    0x8e9e_05c5_2164_0000 + i as u64
}

impl Cluster {
    /// Starts `n` nodes of a new cluster under `root`.
    ///
    /// # Errors
    /// [`RaftError`] if a port cannot be bound or a node cannot start.
    pub fn start(root: &Path, n: usize) -> Result<Self, RaftError> {
        Self::start_with(root, n, SnapshotPolicy::default())
    }

    /// [`Cluster::start`] with every member (and every member started later) on `policy`.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_with(root: &Path, n: usize, policy: SnapshotPolicy) -> Result<Self, RaftError> {
        let mut listeners = Vec::new();
        let mut initial = Vec::new();
        for i in 1..=n {
            let (l, url) = bind()?;
            listeners.push(l);
            let info = MemberInfo { name: format!("infra{i}"), peer_urls: vec![url], client_urls: vec![] };
            initial.push((member_id(i), info));
        }
        let mut cluster =
            Cluster { root: root.to_path_buf(), members: BTreeMap::new(), initial: initial.clone(), policy };
        for (l, (id, info)) in listeners.into_iter().zip(initial) {
            let dir = root.join(&info.name);
            let handle = start(cluster.config(id, dir.clone(), cluster.initial.clone()), l)?;
            cluster.members.insert(id, Member { handle: Some(handle), info, dir });
        }
        Ok(cluster)
    }

    /// The running node `id`.
    ///
    /// # Errors
    /// [`RaftError::Config`] if there is no such node or it is stopped.
    pub fn node(&self, id: u64) -> Result<&NodeHandle, RaftError> {
        self.members
            .get(&id)
            .and_then(|m| m.handle.as_ref())
            .ok_or_else(|| RaftError::Config { what: format!("member {id:x} is not running") })
    }

    /// Ids of every member, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// The data directory of `id`.
    pub fn dir(&self, id: u64) -> Option<&Path> {
        self.members.get(&id).map(|m| m.dir.as_path())
    }

    /// Waits until the running nodes agree on a leader; returns it.
    ///
    /// # Errors
    /// [`RaftError::Timeout`] if none is elected within `within`.
    pub async fn leader(&self, within: Duration) -> Result<u64, RaftError> {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for m in self.members.values() {
                if let Some(h) = &m.handle {
                    leaders.push(h.client().status().await?.leader);
                }
            }
            if let Some(&l) = leaders.first()
                && l != 0
                && leaders.iter().all(|&x| x == l)
                && self.members.get(&l).is_some_and(|m| m.handle.is_some())
            {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(RaftError::Timeout { what: "a leader to be elected" });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `id` has applied `index`; returns its status then.
    ///
    /// # Errors
    /// [`RaftError::Timeout`] if it has not within `within`.
    pub async fn wait_applied(&self, id: u64, index: u64, within: Duration) -> Result<Status, RaftError> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.node(id)?.client().status().await?;
            if s.applied_index >= index {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(RaftError::Timeout { what: "a node to catch up" });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every running node has applied what `leader` has, then returns each
    /// node's digest.
    ///
    /// # Errors
    /// [`RaftError::Timeout`] if they do not catch up within `within`.
    pub async fn settle(&self, leader: u64, within: Duration) -> Result<BTreeMap<u64, [u8; 32]>, RaftError> {
        let index = self.node(leader)?.client().status().await?.applied_index;
        let mut digests = BTreeMap::new();
        for (&id, m) in &self.members {
            if let Some(h) = &m.handle {
                self.wait_applied(id, index, within).await?;
                digests.insert(id, h.client().digest().await?);
            }
        }
        Ok(digests)
    }

    /// Stops `id` cleanly.
    ///
    /// # Errors
    /// The error its loop stopped on.
    pub async fn stop(&mut self, id: u64) -> Result<(), RaftError> {
        match self.members.get_mut(&id).and_then(|m| m.handle.take()) {
            Some(h) => h.stop().await,
            None => Ok(()),
        }
    }

    /// Stops `id` at once, as a crash would (see [`NodeHandle::kill`]).
    pub async fn kill(&mut self, id: u64) {
        if let Some(h) = self.members.get_mut(&id).and_then(|m| m.handle.take()) {
            h.kill().await;
        }
    }

    /// Starts a stopped `id` again from its data directory, on its old peer port.
    ///
    /// # Errors
    /// [`RaftError`] if the port cannot be bound again or the node cannot start.
    pub fn restart(&mut self, id: u64) -> Result<(), RaftError> {
        let initial = self.initial.clone();
        let Some(m) = self.members.get_mut(&id) else {
            return Err(RaftError::Config { what: format!("member {id:x} is not in the cluster") });
        };
        let addr = m.info.peer_urls.first().and_then(|u| crate::transport::peer_addr(u));
        let Some(addr) = addr else {
            return Err(RaftError::Config { what: format!("member {id:x} has no peer URL") });
        };
        // The old listener's port can stay busy for a moment after its task was aborted.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => return Err(RaftError::Io { op: "binding the old peer port again", source }),
            }
        };
        let config = NodeConfig { snapshot: self.policy, ..NodeConfig::new(id, m.dir.clone(), initial) };
        m.handle = Some(start(config, listener)?);
        Ok(())
    }

    /// Starts a new member `id` that joins the cluster (etcd's `--initial-cluster-state
    /// existing`: it learns the membership from the leader), and returns what to propose to
    /// add it.
    ///
    /// # Errors
    /// [`RaftError`] if a port cannot be bound or the node cannot start.
    pub fn spawn_joiner(&mut self, id: u64, name: &str) -> Result<MemberInfo, RaftError> {
        let (l, url) = bind()?;
        let info = MemberInfo { name: name.into(), peer_urls: vec![url], client_urls: vec![] };
        let dir = self.root.join(name);
        let mut members: Vec<(u64, MemberInfo)> =
            self.members.iter().filter(|(_, m)| m.handle.is_some()).map(|(&id, m)| (id, m.info.clone())).collect();
        members.push((id, info.clone()));
        let mut config = self.config(id, dir.clone(), members);
        config.join_existing = true;
        let handle = start(config, l)?;
        self.members.insert(id, Member { handle: Some(handle), info: info.clone(), dir });
        Ok(info)
    }

    /// Forgets member `id` after it was removed from the cluster, stopping it.
    pub async fn forget(&mut self, id: u64) {
        if let Some(m) = self.members.remove(&id)
            && let Some(h) = m.handle
        {
            let _ = h.stop().await;
        }
    }

    fn config(&self, id: u64, dir: PathBuf, members: Vec<(u64, MemberInfo)>) -> NodeConfig {
        NodeConfig { snapshot: self.policy, ..NodeConfig::new(id, dir, members) }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for m in self.members.values_mut() {
            if let Some(h) = m.handle.take() {
                let _ = h.stop().await;
            }
        }
    }
}
