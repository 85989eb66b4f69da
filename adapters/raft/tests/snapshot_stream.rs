//! A member's snapshot image streamed to a client (etcd's `Maintenance.Snapshot`): encoded from a
//! read transaction at the applied index as it is read, in chunks, and a valid image of exactly
//! that state, whatever is written while it is read.

use std::error::Error;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use snapply_core::image::{Decoder, Item};
use snapply_raft::Cluster;
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(120);

/// The digest `Client::digest` computes, over the records of an image.
fn digest_of_image(image: &[u8]) -> Result<([u8; 32], u64)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut decoder = Decoder::new(image, &mut buf).map_err(|e| format!("{e:?}"))?;
    let index = decoder.metadata().index;
    let mut sha = Sha256::new();
    while let Some(item) = decoder.next().map_err(|e| format!("{e:?}"))? {
        if let Item::Record { bucket, key, value } = item {
            sha.update([bucket as u8]);
            sha.update((key.len() as u64).to_be_bytes());
            sha.update(key);
            sha.update((value.len() as u64).to_be_bytes());
            sha.update(value);
        }
    }
    Ok((sha.finalize().into(), index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_snapshot_is_the_members_state_when_it_was_asked_for_in_chunks() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 1)?;
        let leader = cluster.leader(WAIT).await?;
        let client = cluster.node(leader)?.client();
        for i in 0..200 {
            client.put(format!("/k/{i:03}").as_bytes(), "v".repeat(i).as_bytes()).await?;
        }
        let before = client.digest().await?;
        let applied = client.status().await?.applied_index;

        let (header, mut stream) = client.snapshot(1000).await?;
        assert_eq!(header.member_id, leader);
        assert_eq!(header.revision, 201, "the header is of the state the image holds");
        // Written while the image is read: not in it.
        for i in 0..50 {
            client.put(format!("/later/{i}").as_bytes(), b"x").await?;
        }
        let mut image = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            assert!(!chunk.is_empty() && chunk.len() <= 1000, "a chunk of {} bytes", chunk.len());
            image.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks > 10, "the image came in {chunks} chunks");
        let (digest, index) = digest_of_image(&image)?;
        assert_eq!(index, applied, "the image is at the applied index it was asked at");
        assert_eq!(digest, before, "the image holds exactly the member's records when it was asked for");
        assert_ne!(client.digest().await?, before, "the writes made while it was read were applied");
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_stream_dropped_early_leaves_the_member_serving() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 1)?;
        let leader = cluster.leader(WAIT).await?;
        let client = cluster.node(leader)?.client();
        for i in 0..100 {
            client.put(format!("/k/{i:03}").as_bytes(), &[b'v'; 200]).await?;
        }
        let (_, mut stream) = client.snapshot(512).await?;
        let first = stream.next().await.ok_or("no chunk")??;
        assert_eq!(first.len(), 512);
        drop(stream);
        // The encoder stopped and its read transaction ended: the member goes on writing and
        // can stream again.
        client.put(b"/after", b"x").await?;
        let (_, mut again) = client.snapshot(1 << 20).await?;
        let mut image = Vec::new();
        while let Some(chunk) = again.next().await {
            image.extend_from_slice(&chunk?);
        }
        assert_eq!(digest_of_image(&image)?.0, client.digest().await?);
        Ok(())
    })
    .await?
}
