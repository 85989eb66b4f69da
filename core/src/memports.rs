//! In-memory implementations of the snapshot-store and transport ports, for tests, benches, examples,
//! fuzz targets and devices that keep received snapshots in RAM.
//!
//! "Durable" here means "held by this process": a [`MemSnapshotStore`] survives no power cut.
//! The flash and filesystem adapters implement the same port on real media.

use crate::backend::{Backend, BackendError, BackendErrorKind, WriteTxn};
use crate::collections::{Profile, Seq};
use crate::image;
use crate::ports::{Durable, PersistTicket, PortError, PortErrorKind, ReleaseTicket, RunId, SnapshotStore, Transport};
use crate::raft::SnapshotMetadata;
use crate::snapshot::ImageData;
use crate::store::MemberId;

/// A persisted snapshot: its materialised backend and its v2 data.
#[derive(Debug)]
struct Pinned<B, V> {
    metadata: SnapshotMetadata,
    sha256: [u8; 32],
    /// The last run whose ticket was confirmed for it: only that run's release ticket releases.
    run: RunId,
    backend: B,
    v2: V,
}

/// A snapshot store in memory holding at most `K` snapshots.
///
/// `persist` checks the image (every frame's CRC, the trailer's SHA-256, the metadata) and
/// materialises its backend, so a bad image is refused before the pipeline opens anything.
/// Snapshots stay pinned until a newer one is applied: one that is persisted but not yet
/// applied is never evicted to make room (etcd #18055, #20133); persisting into a store full of
/// pinned snapshots is an error instead.
#[derive(Debug)]
pub struct MemSnapshotStore<'b, B, V, const K: usize = 2> {
    buf: &'b mut [u8],
    pinned: heapless::Vec<Pinned<B, V>, K>,
    applied: u64,
}

impl<'b, B: Backend + Default + Clone, V: Seq<u8>, const K: usize> MemSnapshotStore<'b, B, V, K> {
    /// An empty store decoding images with `buf` (at least [`image::MIN_BUFFER`] bytes).
    pub fn new(buf: &'b mut [u8]) -> Self {
        MemSnapshotStore { buf, pinned: heapless::Vec::new(), applied: 0 }
    }

    /// Indexes of the snapshots held, in the order they were persisted.
    pub fn pinned(&self) -> impl Iterator<Item = u64> + '_ {
        self.pinned.iter().map(|p| p.metadata.index)
    }

    fn find(&self, d: &Durable<'_>) -> Result<&Pinned<B, V>, PortError> {
        self.pinned
            .iter()
            // The digest covers the image's header, so with the index and term it names the
            // whole metadata.
            .find(|p| p.metadata.index == d.index() && p.metadata.term == d.term() && p.sha256 == *d.sha256())
            .ok_or(PortError::new(PortErrorKind::NotFound, "looking up a persisted snapshot"))
    }

    /// The digest of an image handed in again for a snapshot already held: it must be checked
    /// whole (its trailer's digest is only proved by decoding), so a retry with another image
    /// under the same index and term is told apart.
    fn digest_of(&mut self, image: ImageData<'_>) -> Result<[u8; 32], PortError> {
        let corrupt = PortError::new(PortErrorKind::Corrupt, "checking the snapshot image");
        match image {
            ImageData::Bytes(bytes) => image::verify(bytes, self.buf).map(|(_, s)| s.sha256).map_err(|_| corrupt),
            ImageData::Stream(source) => image::verify(source, self.buf).map(|(_, s)| s.sha256).map_err(|e| match e {
                image::DecodeError::Source(e) => e,
                _ => corrupt,
            }),
            ImageData::Persisted { sha256 } => Ok(sha256),
        }
    }
}

fn image_error<E>(e: &image::MaterializeError<E>) -> PortError {
    if e.corruption().is_some() {
        PortError::new(PortErrorKind::Corrupt, "checking the snapshot image")
    } else {
        PortError::new(PortErrorKind::Io, "materialising the snapshot image")
    }
}

fn backend_error(e: BackendError) -> PortError {
    let kind = match e.kind {
        BackendErrorKind::Full => PortErrorKind::Full,
        BackendErrorKind::Corrupt => PortErrorKind::Corrupt,
        BackendErrorKind::Misuse => PortErrorKind::Misuse,
        _ => PortErrorKind::Io,
    };
    PortError::new(kind, e.context)
}

impl<B: Backend + Default + Clone, V: Seq<u8>, const K: usize> SnapshotStore for MemSnapshotStore<'_, B, V, K> {
    type Backend = B;

    fn persist<'r>(&mut self, image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError> {
        let metadata = ticket.metadata();
        let held =
            self.pinned.iter().position(|p| p.metadata.index == metadata.index && p.metadata.term == metadata.term);
        if let Some(i) = held {
            // Already persisted (a retry, or completing an unfinished restore): the pinned copy is
            // the snapshot, if it is this very snapshot: the same metadata and image.
            let digest = self.digest_of(image)?;
            return match self.pinned.get_mut(i) {
                Some(p) if p.metadata == *metadata && p.sha256 == digest => {
                    p.run = ticket.run();
                    Ok(ticket.confirm(digest))
                }
                _ => Err(PortError::new(
                    PortErrorKind::Corrupt,
                    "persisting a snapshot whose index and term are held with another metadata or image",
                )),
            };
        }
        let mut backend = B::default();
        let mut v2 = V::default();
        let sha256;
        {
            let mut txn = backend.write().map_err(backend_error)?;
            let mut keep_v2 = |chunk: &[u8]| {
                for b in chunk {
                    v2.try_push(*b).map_err(|_| BackendError::new(BackendErrorKind::Full, "holding the v2 data"))?;
                }
                Ok(())
            };
            let decoded = match image {
                ImageData::Bytes(bytes) => {
                    image::materialize(bytes, self.buf, &mut txn, &mut keep_v2).map_err(|e| image_error(&e))
                }
                ImageData::Stream(source) => {
                    image::materialize(source, self.buf, &mut txn, &mut keep_v2).map_err(|e| match e {
                        // The stream's own failure (a dropped connection) is reported as it is.
                        image::MaterializeError::Decode(image::DecodeError::Source(e)) => e,
                        e => image_error(&e),
                    })
                }
                ImageData::Persisted { .. } => {
                    return Err(PortError::new(PortErrorKind::NotFound, "looking up a persisted snapshot"));
                }
            };
            let (decoded, summary) = decoded?;
            sha256 = summary.sha256;
            if decoded != *ticket.metadata() {
                return Err(PortError::new(
                    PortErrorKind::Corrupt,
                    "comparing the image's metadata with the snapshot's",
                ));
            }
            txn.commit().map_err(backend_error)?;
        }
        if self.pinned.is_full() {
            // Evict the oldest snapshot that a newer applied one superseded, never a pending one.
            let victim = self.pinned.iter().position(|p| p.metadata.index < self.applied);
            match victim {
                Some(i) => {
                    self.pinned.remove(i);
                }
                None => {
                    return Err(PortError::new(PortErrorKind::Full, "pinning a snapshot: all slots await apply"));
                }
            }
        }
        self.pinned
            .push(Pinned { metadata: ticket.metadata().clone(), sha256, run: ticket.run(), backend, v2 })
            .map_err(|_| PortError::new(PortErrorKind::Full, "pinning a snapshot"))?;
        Ok(ticket.confirm(sha256))
    }

    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<B, PortError> {
        Ok(self.find(snapshot)?.backend.clone())
    }

    fn v2_data(&mut self, snapshot: &Durable<'_>) -> Result<&[u8], PortError> {
        Ok(self.find(snapshot)?.v2.as_slice())
    }

    /// Releases only for a snapshot this store holds and confirmed for the very run that
    /// applied it: a release ticket of a run whose persist this store never confirmed (another
    /// store's run, its ticket handed on) unpins nothing here and is refused.
    fn release_before(&mut self, applied: ReleaseTicket<'_>) -> Result<(), PortError> {
        let ours = self.pinned.iter().any(|p| {
            p.metadata.index == applied.index()
                && p.metadata.term == applied.term()
                && p.sha256 == *applied.sha256()
                && p.run == applied.run()
        });
        if !ours {
            return Err(PortError::new(
                PortErrorKind::Misuse,
                "releasing snapshots for a run whose snapshot this store did not persist",
            ));
        }
        self.applied = self.applied.max(applied.index());
        let floor = self.applied;
        self.pinned.retain(|p| p.metadata.index >= floor);
        Ok(())
    }
}

/// A peer table in memory: the transport port for a node whose network layer reads its peers
/// from here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerTable<P: Profile> {
    peers: P::Peers,
}

impl<P: Profile> PeerTable<P> {
    /// Every peer with its URLs, in the order added.
    pub fn peers(&self) -> &[(MemberId, P::MemberUrls)] {
        self.peers.as_slice()
    }
}

impl<P: Profile> Transport for PeerTable<P> {
    fn remove_all_peers(&mut self) {
        self.peers.clear_all();
    }

    fn add_peer(&mut self, id: MemberId, peer_urls: &[&[u8]]) -> Result<(), PortError> {
        let full = PortError::new(PortErrorKind::Full, "adding a peer to the peer table");
        let mut urls = P::MemberUrls::default();
        for u in peer_urls {
            let url = crate::store::codec::bytes::<P::Bytes>(u, "peer url").map_err(|_| full)?;
            urls.try_push(url).map_err(|_| full)?;
        }
        self.peers.try_push((id, urls)).map_err(|_| full)
    }
}
