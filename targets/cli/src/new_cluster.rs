//! `snapply restore --initial-cluster`: an image rewritten for the first member of a new cluster,
//! as `etcdutl snapshot restore` makes one.
//!
//! etcdutl keeps the key space, leases, auth, alarms and cluster version of the snapshot and
//! starts a new cluster: the members are the ones `--initial-cluster` and
//! `--initial-cluster-token` give (with etcd's ids), no member is removed, the consistent index is
//! the number of members, and the raft log holds one `AddNode` per member at term 1, committed,
//! with a snapshot at that index. Here the image is rewritten so: its records pass through as
//! they are decoded (the image is never whole in memory), but for the `members` and
//! `members_removed` buckets and the consistent index, term and conf state in `meta`, which, with
//! the v2 store, are those of a node of the core that applied the new members' additions (one
//! owner for their records); the image's metadata is at that index and term. `restore` then
//! applies the rewritten image as any other, and writes the raft log.

use std::cell::RefCell;
use std::io;
use std::ops::ControlFlow;
use std::path::Path;

use snapply_core::backend::{Backend as _, BackendError, Bucket, ReadTxn, Visit};
use snapply_core::collections::Growable;
use snapply_core::image::{self, DecodeError, Decoder, Item, Sink};
use snapply_core::mem::VecBackend;
use snapply_core::ports::{PortError, PortErrorKind};
use snapply_core::store::{NewMember, V2Deprecation};
use snapply_core::{ConfState, IdList, SnapshotMetadata};
use snapply_core::{Config, Node, Request};
use snapply_raft::InitialCluster;

use crate::common::{Failure, ImageFile, create_private_file, exit, image_failure};

type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// What a new cluster replaces in an image: the records of a core node that applied the
/// members' additions, its v2 data and its snapshot metadata.
struct Replacement {
    members: Records,
    meta: Records,
    v2: Vec<u8>,
    metadata: SnapshotMetadata,
}

fn records(node: &Node<VecBackend, Growable>, bucket: Bucket) -> Result<Records, Failure> {
    let txn = node.backend().read().map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    let mut out = Vec::new();
    txn.scan(bucket, &[], &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })
    .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    Ok(out)
}

/// The members of `cluster` added, one entry each at term 1, to a node whose conf state has
/// them all as voters (etcd's `saveWALAndSnap`, then its consistent index at the last).
fn replacement(cluster: &InitialCluster, config: Config) -> Result<Replacement, Failure> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure::new(exit::USAGE, format!("{what}: {e}"));
    let ids: Vec<u64> = cluster.members().iter().map(|(id, _)| *id).collect();
    let voters = IdList::from_slice(&ids)
        .map_err(|_| Failure::new(exit::USAGE, format!("--initial-cluster has {} members: at most 16", ids.len())))?;
    let mut node = Node::<VecBackend, Growable>::new(config, VecBackend::new());
    node.set_conf_state(ConfState { voters, ..ConfState::default() });
    for (index, (id, info)) in (1u64..).zip(cluster.members()) {
        let peers: Vec<&[u8]> = info.peer_urls.iter().map(|u| u.as_bytes()).collect();
        let member =
            NewMember { id: *id, name: info.name.as_bytes(), peer_urls: &peers, client_urls: &[], is_learner: false };
        node.apply(index, 1, &Request::MemberAdd(member))
            .map_err(|e| failed(&format!("--initial-cluster: member {}", info.name), &e))?;
    }
    let mut v2 = Vec::new();
    node.v2_snapshot_data(&mut v2).map_err(|e| failed("the new cluster's v2 store", &e))?;
    let metadata = node.snapshot_metadata().map_err(|e| failed("the new cluster's metadata", &e))?;
    Ok(Replacement { members: records(&node, Bucket::Members)?, meta: records(&node, Bucket::Meta)?, v2, metadata })
}

/// What the decoder has read past the bucket being scanned.
enum Ahead {
    Record(Bucket, Vec<u8>, Vec<u8>),
    /// The records ended (v2 data or the trailer follow).
    End,
}

/// The input image's records as a read transaction, for the core's encoder: it scans the
/// buckets once each, in image order, so one pass of the decoder serves every scan. The
/// replaced buckets and `meta` keys come from the [`Replacement`].
struct Rewrite<'b, S: image::Source> {
    decoder: RefCell<Decoder<'b, S>>,
    ahead: RefCell<Option<Ahead>>,
    failed: RefCell<Option<DecodeError<S::Error>>>,
    new: Replacement,
}

const DECODE_FAILED: BackendError = PortError::new(PortErrorKind::Corrupt, "decoding the snapshot being rewritten");

impl<S: image::Source> Rewrite<'_, S> {
    /// Calls `f` with each input record of `bucket`, skipping those of buckets before it.
    fn each(&self, bucket: Bucket, f: &mut Visit<'_>) -> Result<(), BackendError> {
        loop {
            let taken = self.ahead.borrow_mut().take();
            let next = match taken {
                Some(Ahead::End) => {
                    *self.ahead.borrow_mut() = Some(Ahead::End);
                    return Ok(());
                }
                Some(record) => record,
                None => {
                    let mut decoder = self.decoder.borrow_mut();
                    match decoder.next() {
                        Ok(Some(Item::Record { bucket, key, value })) => {
                            Ahead::Record(bucket, key.to_vec(), value.to_vec())
                        }
                        Ok(Some(Item::V2(_)) | None) => Ahead::End,
                        Err(e) => {
                            *self.failed.borrow_mut() = Some(e);
                            return Err(DECODE_FAILED);
                        }
                    }
                }
            };
            match next {
                Ahead::Record(b, k, v) if b == bucket => {
                    if f(&k, &v).is_break() {
                        return Ok(());
                    }
                }
                Ahead::Record(b, ..) if b < bucket => {}
                later => {
                    *self.ahead.borrow_mut() = Some(later);
                    return Ok(());
                }
            }
        }
    }

    /// Reads the input to its end, so its trailer and digest are checked.
    fn finish(self) -> Result<(), DecodeError<S::Error>> {
        let mut decoder = self.decoder.into_inner();
        while decoder.next()?.is_some() {}
        Ok(())
    }
}

impl<S: image::Source> ReadTxn for Rewrite<'_, S> {
    fn get(&self, _: Bucket, _: &[u8], _: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        // The encoder only scans.
        Err(PortError::new(PortErrorKind::Misuse, "a rewritten image is only scanned"))
    }

    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        let mut from_on = |k: &[u8], v: &[u8]| if k < from { ControlFlow::Continue(()) } else { f(k, v) };
        match bucket {
            Bucket::Members | Bucket::MembersRemoved => {
                self.each(bucket, &mut |_, _| ControlFlow::Continue(()))?;
                let new: &[(Vec<u8>, Vec<u8>)] = if bucket == Bucket::Members { &self.new.members } else { &[] };
                for (k, v) in new {
                    if from_on(k, v).is_break() {
                        break;
                    }
                }
                Ok(())
            }
            Bucket::Meta => {
                let mut meta = self.new.meta.clone();
                self.each(bucket, &mut |k, v| {
                    if !meta.iter().any(|(nk, _)| nk.as_slice() == k) {
                        meta.push((k.to_vec(), v.to_vec()));
                    }
                    ControlFlow::Continue(())
                })?;
                meta.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (k, v) in &meta {
                    if from_on(k, v).is_break() {
                        break;
                    }
                }
                Ok(())
            }
            _ => self.each(bucket, &mut from_on),
        }
    }
}

/// An image file being written.
struct FileSink(io::BufWriter<std::fs::File>);

impl Sink for FileSink {
    type Error = io::Error;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        io::Write::write_all(&mut self.0, bytes)
    }
}

/// Writes `input` (checked whole already, decoded with a buffer of `buffer` bytes) rewritten
/// for the new cluster `cluster` into `output`; returns the rewritten image's metadata.
pub fn rewrite(
    input: &Path,
    buffer: usize,
    output: &Path,
    cluster: &InitialCluster,
    config: Config,
) -> Result<SnapshotMetadata, Failure> {
    let new = replacement(cluster, Config { v2_deprecation: V2Deprecation::WriteOnly, ..config })?;
    let metadata = new.metadata.clone();
    let v2 = new.v2.clone();
    let (file, _) = ImageFile::open(input, None)?;
    let mut buf = vec![0u8; buffer];
    let decoder = Decoder::new(file, &mut buf).map_err(|e| image_failure(input, &e))?;
    let txn = Rewrite { decoder: RefCell::new(decoder), ahead: RefCell::new(None), failed: RefCell::new(None), new };
    let out = create_private_file(output)?;
    let mut sink = FileSink(io::BufWriter::with_capacity(1 << 20, out));
    let encoded = image::encode(&metadata, &txn, &v2, &mut sink);
    if let Some(e) = txn.failed.borrow_mut().take() {
        return Err(image_failure(input, &e));
    }
    encoded.map_err(|e| match e {
        image::EncodeError::Sink(e) => Failure::io("writing", output, &e),
        e => Failure::new(exit::BAD_INPUT, format!("{}: cannot be rewritten: {e}", input.display())),
    })?;
    txn.finish().map_err(|e| image_failure(input, &e))?;
    let out = sink.0.into_inner().map_err(|e| Failure::io("writing", output, e.error()))?;
    out.sync_all().map_err(|e| Failure::io("syncing", output, &e))?;
    Ok(metadata)
}
