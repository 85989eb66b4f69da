//! In-memory implementations of the snapshot-store and transport ports, for tests, the demo,
//! and devices that keep received snapshots in RAM.
//!
//! "Durable" here means "held by this process": a [`MemSnapshotStore`] survives no power cut.
//! The flash and filesystem adapters implement the same port on real media.

use crate::backend::{Backend, BackendError, BackendErrorKind, WriteTxn};
use crate::collections::{Profile, Seq};
use crate::image;
use crate::ports::{Durable, PersistTicket, PortError, PortErrorKind, SnapshotStore, Transport};
use crate::raft::{ImageData, SnapshotMetadata};
use crate::store::MemberId;

/// A persisted snapshot: its materialised backend and its v2 data.
#[derive(Debug)]
struct Pinned<B, V> {
    index: u64,
    term: u64,
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
        self.pinned.iter().map(|p| p.index)
    }

    fn find(&self, d: &Durable) -> Result<&Pinned<B, V>, PortError> {
        self.pinned
            .iter()
            .find(|p| p.index == d.index() && p.term == d.term())
            .ok_or(PortError::new(PortErrorKind::NotFound, "looking up a persisted snapshot"))
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

    fn persist(
        &mut self,
        metadata: &SnapshotMetadata,
        image: ImageData<'_>,
        ticket: PersistTicket,
    ) -> Result<Durable, PortError> {
        let (index, term) = (ticket.index(), ticket.term());
        if self.pinned.iter().any(|p| p.index == index && p.term == term) {
            // Already persisted (a retry after a failed apply): the pinned copy is the snapshot.
            return Ok(ticket.confirm());
        }
        let mut backend = B::default();
        let mut v2 = V::default();
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
            };
            let (decoded, _) = decoded?;
            if decoded != *metadata {
                return Err(PortError::new(
                    PortErrorKind::Corrupt,
                    "comparing the image's metadata with the snapshot's",
                ));
            }
            txn.commit().map_err(backend_error)?;
        }
        if self.pinned.is_full() {
            // Evict the oldest snapshot that a newer applied one superseded, never a pending one.
            let victim = self.pinned.iter().position(|p| p.index < self.applied);
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
            .push(Pinned { index, term, backend, v2 })
            .map_err(|_| PortError::new(PortErrorKind::Full, "pinning a snapshot"))?;
        Ok(ticket.confirm())
    }

    fn open_backend(&mut self, snapshot: &Durable) -> Result<B, PortError> {
        Ok(self.find(snapshot)?.backend.clone())
    }

    fn v2_data(&mut self, snapshot: &Durable) -> Result<&[u8], PortError> {
        Ok(self.find(snapshot)?.v2.as_slice())
    }

    fn release_before(&mut self, applied: &Durable) -> Result<(), PortError> {
        self.applied = self.applied.max(applied.index());
        let floor = self.applied;
        self.pinned.retain(|p| p.index >= floor);
        Ok(())
    }
}

/// A peer table in memory: the transport port for a node whose network layer reads its peers
/// from here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerTable<P: Profile> {
    peers: P::Vec<(MemberId, P::Vec<P::Bytes>)>,
}

impl<P: Profile> PeerTable<P> {
    /// Every peer with its URLs, in the order added.
    pub fn peers(&self) -> &[(MemberId, P::Vec<P::Bytes>)] {
        self.peers.as_slice()
    }
}

impl<P: Profile> Transport for PeerTable<P> {
    fn remove_all_peers(&mut self) {
        self.peers.clear_all();
    }

    fn add_peer(&mut self, id: MemberId, peer_urls: &[&[u8]]) -> Result<(), PortError> {
        let full = PortError::new(PortErrorKind::Full, "adding a peer to the peer table");
        let mut urls = P::Vec::<P::Bytes>::default();
        for u in peer_urls {
            let url = crate::store::codec::bytes::<P::Bytes>(u, "peer url").map_err(|_| full)?;
            urls.try_push(url).map_err(|_| full)?;
        }
        self.peers.try_push((id, urls)).map_err(|_| full)
    }
}
