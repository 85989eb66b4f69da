//! The snapshot policy of the ready loop: when the member snapshots its backend, how the image
//! is built and the raft log compacted (etcd's `triggerSnapshot`, `snapshot` and `purgeFile`).
//!
//! As etcd's, a snapshot the policy takes is not an image: every `--snapshot-count` entries the
//! member makes its backend durable and compacts its raft log behind that point (keeping the
//! catch-up entries). An image is built only when raft-rs asks for one for a lagging follower, of
//! the live backend at the applied index of that moment (etcd 3.4 sends its live bbolt file,
//! "merged" with the applied index's metadata): the follower has nothing older than it to replay,
//! and a member that no follower needs a snapshot from never writes one.

use std::time::Instant;

use super::ready::Loop;
use crate::error::RaftError;
use crate::snapshot::{Build, ImageFile, purge_images};

impl Loop {
    /// Takes the policy's snapshot if one is due, and starts building an image if raft-rs asked
    /// for one for a lagging follower and none is being built.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let applied = self.node.progress().applied_index;
        if self.policy.due(applied, self.snapshot_index) {
            log::info!(
                "member {:x} triggering snapshot: applied index {applied}, snapshot index {}, snapshot count {}",
                self.id,
                self.snapshot_index,
                self.policy.count
            );
            // Not past an image being built: the follower it is for needs the entries after it.
            let compact_to = self.policy.compact_to(applied).map(|to| self.building.map_or(to, |b| to.min(b)));
            self.snapshot_log(applied, compact_to)?;
        }
        if self.building.is_some() {
            return Ok(());
        }
        // raft-rs asks again on the follower's next heartbeat response, and is told the
        // snapshot is temporarily unavailable until the build is done.
        if !self.log.take_request() {
            return Ok(());
        }
        let build = self.start_build()?;
        log::info!("member {:x} building a snapshot image at index {} for a follower", self.id, build.metadata.index);
        self.build_started = Some(Instant::now());
        let index = build.metadata.index;
        build.spawn(self.built.clone())?;
        self.building = Some(index);
        Ok(())
    }

    /// The policy's snapshot at `applied`: the backend is made durable (the log may drop only
    /// entries the backend holds durably: after a crash it comes back at its last sync, and the
    /// log must still reach from there), then the log is compacted to `compact_to`.
    fn snapshot_log(&mut self, applied: u64, compact_to: Option<u64>) -> Result<(), RaftError> {
        self.sync_backend()?;
        self.snapshot_index = self.snapshot_index.max(applied);
        if let Some(to) = compact_to
            && to >= self.log.first_index()
        {
            self.log.compact(to)?;
            log::info!(
                "member {:x} compacted Raft logs at index {to}: log holds entries {} to {}",
                self.id,
                self.log.first_index(),
                self.log.last_index()
            );
        }
        Ok(())
    }

    /// What a snapshot at the applied index is built from. The backend is synced first: the
    /// log is compacted up to the snapshot's index at most, and may drop only entries the
    /// backend holds durably (after a crash it comes back at its last sync, and the log must
    /// still reach from there).
    fn start_build(&mut self) -> Result<Build, RaftError> {
        self.sync_backend()?;
        let metadata = self.node.snapshot_metadata()?;
        let mut v2 = Vec::new();
        self.node.v2_snapshot_data(&mut v2)?;
        let view = self.node.backend().view();
        Ok(Build { metadata, v2, view, snap_dir: self.store.dir().snap_dir().to_path_buf() })
    }

    /// A build ended: offer the image to raft-rs and purge old images.
    pub(super) fn snapshot_built(&mut self, image: Result<ImageFile, RaftError>) -> Result<(), RaftError> {
        self.building = None;
        match image {
            Ok(image) => {
                if let Some(started) = self.build_started.take() {
                    self.metrics.snap_save.observe(started.elapsed().as_secs_f64());
                }
                self.install_snapshot(&image)
            }
            Err(e) => {
                log::warn!("member {:x} failed to save snapshot: {e}", self.id);
                Ok(())
            }
        }
    }

    fn install_snapshot(&mut self, image: &ImageFile) -> Result<(), RaftError> {
        let index = image.metadata.index;
        log::info!("member {:x} saved snapshot at index {index} ({} bytes)", self.id, image.len);
        self.log.offer(image.raft_snapshot());
        for path in purge_images(self.store.dir().snap_dir(), self.policy.keep())? {
            log::info!("member {:x} purged snapshot image {}", self.id, path.display());
        }
        Ok(())
    }

    /// Takes a snapshot at once, on the loop, and compacts the whole log up to it.
    pub(super) fn compact_log(&mut self) -> Result<u64, RaftError> {
        let started = Instant::now();
        let image = self.start_build()?.run()?;
        self.metrics.snap_save.observe(started.elapsed().as_secs_f64());
        let index = image.metadata.index;
        self.install_snapshot(&image)?;
        self.snapshot_log(index, Some(index))?;
        Ok(index)
    }
}
