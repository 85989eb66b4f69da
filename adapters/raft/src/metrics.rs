//! A member's metrics under etcd's names, help texts, types and buckets (etcd's
//! `etcdserver/metrics.go`, `mvcc/metrics.go`, `etcdserver/api/snap/metrics.go`,
//! `etcdserver/api/rafthttp/metrics.go`), so a dashboard made for etcd reads a snapply member
//! unchanged; in Prometheus' text format (what etcd's `/metrics` serves).
//!
//! Each member has its own registry (several run in one process in the cluster tests). What
//! snapply measures and etcd does not has a `snapply_` name.

use std::path::PathBuf;
use std::time::Duration;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

use crate::error::RaftError;

/// The metrics of one member.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `etcd_server_has_leader`.
    pub(crate) has_leader: IntGauge,
    /// `etcd_server_is_leader`.
    pub(crate) is_leader: IntGauge,
    /// `etcd_server_is_learner`.
    pub(crate) is_learner: IntGauge,
    /// `etcd_server_leader_changes_seen_total`.
    pub(crate) leader_changes: IntCounter,
    /// `etcd_server_proposals_committed_total` (a gauge in etcd: the commit index).
    pub(crate) proposals_committed: IntGauge,
    /// `etcd_server_proposals_applied_total` (a gauge in etcd: the applied index).
    pub(crate) proposals_applied: IntGauge,
    /// `etcd_server_proposals_pending`.
    pub(crate) proposals_pending: IntGauge,
    /// `etcd_server_proposals_failed_total`.
    pub(crate) proposals_failed: IntCounter,
    /// `etcd_server_snapshot_apply_in_progress_total`.
    pub(crate) snapshot_apply_in_progress: IntGauge,
    /// `etcd_server_health_success` and `etcd_server_health_failures`.
    health_success: IntCounter,
    health_failures: IntCounter,
    /// `etcd_mvcc_db_total_size_in_bytes`, read from the backend file when scraped.
    db_total_size: IntGauge,
    db_path: PathBuf,
    /// `etcd_debugging_snap_save_total_duration_seconds`: the member's own snapshots saved.
    pub(crate) snap_save: Histogram,
    /// `etcd_snap_db_save_total_duration_seconds`: snapshots received from a leader and saved.
    pub(crate) snap_db_save: Histogram,
    /// `snapply_snapshot_apply_duration_seconds`: a received snapshot applied, from `Validated`
    /// to `Applied` (etcd has no such metric).
    pub(crate) snapshot_apply: Histogram,
    /// `etcd_network_snapshot_send_*` by `To`.
    send_success: IntCounterVec,
    send_failures: IntCounterVec,
    send_seconds: HistogramVec,
    send_inflights: IntGaugeVec,
    /// `etcd_network_snapshot_receive_*` by `From`.
    receive_success: IntCounterVec,
    receive_failures: IntCounterVec,
    receive_seconds: HistogramVec,
    receive_inflights: IntGaugeVec,
}

fn failed(e: prometheus::Error) -> RaftError {
    RaftError::Config { what: format!("registering a metric: {e}") }
}

impl Metrics {
    /// The metrics of member `id`, whose backend is the file `db_path`.
    ///
    /// # Errors
    /// [`RaftError::Config`] if a metric cannot be made (a bug: the names are fixed).
    pub(crate) fn new(id: u64, db_path: PathBuf) -> Result<Self, RaftError> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, RaftError> {
            let g = IntGauge::new(name, help).map_err(failed)?;
            registry.register(Box::new(g.clone())).map_err(failed)?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, RaftError> {
            let c = IntCounter::new(name, help).map_err(failed)?;
            registry.register(Box::new(c.clone())).map_err(failed)?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str, start: f64, count: usize| -> Result<Histogram, RaftError> {
            let buckets = exponential_buckets(start, 2.0, count).map_err(failed)?;
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).map_err(failed)?;
            registry.register(Box::new(h.clone())).map_err(failed)?;
            Ok(h)
        };
        let counter_vec = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, RaftError> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).map_err(failed)?;
            registry.register(Box::new(c.clone())).map_err(failed)?;
            Ok(c)
        };
        let gauge_vec = |name: &str, help: &str, label: &str| -> Result<IntGaugeVec, RaftError> {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).map_err(failed)?;
            registry.register(Box::new(g.clone())).map_err(failed)?;
            Ok(g)
        };
        let histogram_vec = |name: &str, help: &str, label: &str| -> Result<HistogramVec, RaftError> {
            // etcd: from 0.1 s, doubling, ten buckets (up to 51.2 s).
            let buckets = exponential_buckets(0.1, 2.0, 10).map_err(failed)?;
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label]).map_err(failed)?;
            registry.register(Box::new(h.clone())).map_err(failed)?;
            Ok(h)
        };
        let server_id = gauge_vec(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            "server_id",
        )?;
        server_id.with_label_values(&[&format!("{id:x}")]).set(1);
        Ok(Metrics {
            has_leader: gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.")?,
            is_leader: gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.")?,
            is_learner: gauge(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            )?,
            leader_changes: counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen.")?,
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            )?,
            proposals_applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            )?,
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            )?,
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            )?,
            snapshot_apply_in_progress: gauge(
                "etcd_server_snapshot_apply_in_progress_total",
                "1 if the server is applying the incoming snapshot. 0 if none.",
            )?,
            health_success: counter("etcd_server_health_success", "The total number of successful health checks")?,
            health_failures: counter("etcd_server_health_failures", "The total number of failed health checks")?,
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_path,
            snap_save: histogram(
                "etcd_debugging_snap_save_total_duration_seconds",
                "The total latency distributions of save called by snapshot.",
                0.001,
                14,
            )?,
            snap_db_save: histogram(
                "etcd_snap_db_save_total_duration_seconds",
                "The total latency distributions of v3 snapshot save",
                0.1,
                10,
            )?,
            snapshot_apply: histogram(
                "snapply_snapshot_apply_duration_seconds",
                "The latency distributions of applying a received snapshot, from its validation to its last phase.",
                0.001,
                14,
            )?,
            send_success: counter_vec(
                "etcd_network_snapshot_send_success",
                "Total number of successful snapshot sends",
                "To",
            )?,
            send_failures: counter_vec(
                "etcd_network_snapshot_send_failures",
                "Total number of snapshot send failures",
                "To",
            )?,
            send_seconds: histogram_vec(
                "etcd_network_snapshot_send_total_duration_seconds",
                "Total latency distributions of v3 snapshot sends",
                "To",
            )?,
            send_inflights: gauge_vec(
                "etcd_network_snapshot_send_inflights_total",
                "Total number of inflight snapshot sends",
                "To",
            )?,
            receive_success: counter_vec(
                "etcd_network_snapshot_receive_success",
                "Total number of successful snapshot receives",
                "From",
            )?,
            receive_failures: counter_vec(
                "etcd_network_snapshot_receive_failures",
                "Total number of snapshot receive failures",
                "From",
            )?,
            receive_seconds: histogram_vec(
                "etcd_network_snapshot_receive_total_duration_seconds",
                "Total latency distributions of v3 snapshot receives",
                "From",
            )?,
            receive_inflights: gauge_vec(
                "etcd_network_snapshot_receive_inflights_total",
                "Total number of inflight snapshot receives",
                "From",
            )?,
            registry,
        })
    }

    /// Every metric in Prometheus' text format, with the backend's size as of now.
    pub fn text(&self) -> String {
        if let Ok(m) = std::fs::metadata(&self.db_path) {
            self.db_total_size.set(i64::try_from(m.len()).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        // Encoding into a vector does not fail for these metric types.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts a health check (etcd's `/health`).
    pub fn health_checked(&self, healthy: bool) {
        if healthy { self.health_success.inc() } else { self.health_failures.inc() }
    }

    /// The value of the snapshot-apply gauge.
    pub fn snapshot_apply_in_progress(&self) -> i64 {
        self.snapshot_apply_in_progress.get()
    }

    /// A snapshot transfer to `to` started: counted in flight until `sent` reports its end.
    pub(crate) fn sending(&self, to: u64) {
        self.send_inflights.with_label_values(&[&format!("{to:x}")]).inc();
    }

    /// A snapshot transfer to `to` ended after `took`.
    pub(crate) fn sent(&self, to: u64, delivered: bool, took: Duration) {
        let to = format!("{to:x}");
        self.send_inflights.with_label_values(&[&to]).dec();
        if delivered {
            self.send_success.with_label_values(&[&to]).inc();
            self.send_seconds.with_label_values(&[&to]).observe(took.as_secs_f64());
        } else {
            self.send_failures.with_label_values(&[&to]).inc();
        }
    }

    /// A snapshot transfer from `from` started.
    pub(crate) fn receiving(&self, from: u64) {
        self.receive_inflights.with_label_values(&[&format!("{from:x}")]).inc();
    }

    /// A snapshot transfer from `from` ended after `took`.
    pub(crate) fn received(&self, from: u64, persisted: bool, took: Duration) {
        let from = format!("{from:x}");
        self.receive_inflights.with_label_values(&[&from]).dec();
        if persisted {
            self.receive_success.with_label_values(&[&from]).inc();
            self.receive_seconds.with_label_values(&[&from]).observe(took.as_secs_f64());
            self.snap_db_save.observe(took.as_secs_f64());
        } else {
            self.receive_failures.with_label_values(&[&from]).inc();
        }
    }
}
