//! Membership changes through raft-rs conf changes, checked as etcd's
//! `ValidateConfigurationChange` checks them before raft takes them: a refused change leaves
//! raft-rs's configuration and every member's state as they were; learners are added, caught up
//! and promoted; a removed member stops, also one that never learnt of its removal.

use std::error::Error;
use std::time::{Duration, Instant};

use snapply_core::store::StoreError;
use snapply_raft::{Cluster, MemberInfo, RaftError, member_id};
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(120);

fn info(name: &str, urls: &[String]) -> MemberInfo {
    MemberInfo { name: name.into(), peer_urls: urls.to_vec(), client_urls: vec![] }
}

/// Every running member's raft configuration (voters, learners) and membership, once they all
/// applied what the leader has.
async fn configurations(cluster: &Cluster, leader: u64) -> Result<Vec<(Vec<u64>, Vec<u64>, Vec<u64>)>> {
    cluster.settle(leader, WAIT).await?;
    let mut out = Vec::new();
    for id in cluster.ids() {
        let s = cluster.node(id)?.client().status().await?;
        let mut members = s.members.clone();
        members.sort_unstable();
        out.push((s.voters, s.learners, members));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conf_change_the_membership_refuses_changes_neither_raft_nor_any_member() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let client = cluster.node(leader)?.client();
        client.put(b"/k", b"v").await?;
        let before = configurations(&cluster, leader).await?;
        let (voters, learners, members) = before.first().cloned().ok_or("no member")?;
        assert_eq!((voters.len(), learners.len(), members.len()), (3, 0, 3));
        let taken = cluster.node(leader)?.client().status().await?;
        let in_use = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
        let in_use_url = format!("http://{}", cluster_url(&cluster, in_use).await?);

        // Nine peer URLs: more than a follower's transport takes (the core's check_peer_urls).
        let nine: Vec<String> = (0..9).map(|i| format!("http://127.0.0.1:{}", 1000 + i)).collect();
        let refused = client.add_member(member_id(7), &info("nine", &nine)).await;
        assert!(matches!(refused, Err(RaftError::Store(StoreError::Capacity(_)))), "{refused:?}");
        // A peer URL another member has (etcd's ErrPeerURLexists), as a voter and as a learner.
        let refused = client.add_member(member_id(8), &info("dup", std::slice::from_ref(&in_use_url))).await;
        assert!(matches!(refused, Err(RaftError::Store(StoreError::AlreadyExists("peer url")))), "{refused:?}");
        let refused = client.add_learner(member_id(8), &info("dup", std::slice::from_ref(&in_use_url))).await;
        assert!(matches!(refused, Err(RaftError::Store(StoreError::AlreadyExists("peer url")))), "{refused:?}");
        // A member id that exists (etcd's ErrIDExists), one that does not (ErrIDNotFound), and
        // a voter promoted (ErrMemberNotLearner).
        let refused = client.add_member(in_use, &info("again", &["http://127.0.0.1:999".into()])).await;
        assert!(matches!(refused, Err(RaftError::Store(StoreError::AlreadyExists("member")))), "{refused:?}");
        let refused = client.remove_member(member_id(42)).await;
        assert!(matches!(refused, Err(RaftError::Store(StoreError::NotFound("member")))), "{refused:?}");
        let refused = client.promote_member(in_use).await;
        assert!(
            matches!(refused, Err(RaftError::Store(StoreError::InvalidRequest("can only promote a learner member")))),
            "{refused:?}"
        );

        // Nothing changed: not raft-rs's configuration, not any member's membership; the
        // cluster goes on, and every member holds the same state.
        assert_eq!(configurations(&cluster, leader).await?, before);
        assert!(cluster.node(leader)?.client().status().await?.applied_index > taken.applied_index);
        client.put(b"/after", b"v").await?;
        let digests = cluster.settle(leader, WAIT).await?;
        let first = digests.values().next().ok_or("no digest")?;
        assert!(digests.values().all(|d| d == first), "{digests:x?}");
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}

/// The peer address of member `id`, as its peers dial it.
async fn cluster_url(cluster: &Cluster, id: u64) -> Result<String> {
    let leader = cluster.leader(WAIT).await?;
    let (_, members) = cluster.node(leader)?.client().members().await?;
    let m = members.into_iter().find(|m| m.id == id).ok_or("no such member")?;
    let url = m.peer_urls.first().ok_or("no peer URL")?;
    Ok(url.trim_start_matches("http://").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_is_added_catches_up_and_is_promoted_and_a_removed_member_stops() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let mut cluster = Cluster::start(root.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let client = cluster.node(leader)?.client().clone();
        for i in 0..50 {
            client.put(format!("/k/{i}").as_bytes(), b"v").await?;
        }

        // Added as a learner before it runs: not ready to be promoted (etcd's
        // ErrLearnerNotReady), then started, caught up, promoted.
        let learner = member_id(9);
        let joiner = cluster.spawn_joiner(learner, "learner")?;
        cluster.node(learner)?.client().isolate(true).await?;
        cluster.node(learner)?.client().status().await?;
        client.add_learner(learner, &joiner).await?;
        let refused = client.promote_member(learner).await;
        assert!(matches!(refused, Err(RaftError::LearnerNotReady { .. })), "{refused:?}");
        let status = cluster.node(leader)?.client().status().await?;
        assert!(status.learners.contains(&learner) && !status.voters.contains(&learner));
        cluster.node(learner)?.client().isolate(false).await?;
        let applied = cluster.node(leader)?.client().status().await?.applied_index;
        cluster.wait_applied(learner, applied, WAIT).await?;
        client.promote_member(learner).await?;
        let status = cluster.node(leader)?.client().status().await?;
        assert!(status.voters.contains(&learner) && status.learners.is_empty(), "{status:?}");
        let (_, members) = client.members().await?;
        assert!(members.iter().any(|m| m.id == learner && !m.is_learner));

        // A member removed while cut off never gets its own removal (the others stop sending
        // to it once they applied it): when it is heard from again, it is told, and stops.
        let removed = cluster.ids().into_iter().find(|&id| id != leader && id != learner).ok_or("no follower")?;
        cluster.node(removed)?.client().isolate(true).await?;
        // The loop takes its controls in order: once it answers, it is cut off (else the removal
        // could reach it first, and it would stop before the check below).
        cluster.node(removed)?.client().status().await?;
        client.remove_member(removed).await?;
        assert!(!cluster.node(removed)?.client().status().await?.voters.is_empty(), "it knows nothing of its removal");
        cluster.node(removed)?.client().isolate(false).await?;
        let deadline = Instant::now() + WAIT;
        while cluster.node(removed)?.client().status().await.is_ok() {
            assert!(Instant::now() < deadline, "the removed member still runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.forget(removed).await;
        client.put(b"/after", b"v").await?;
        let digests = cluster.settle(leader, WAIT).await?;
        let first = digests.values().next().ok_or("no digest")?;
        assert!(digests.values().all(|d| d == first), "{digests:x?}");
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}
