//! The pipeline's observer: a snapshot apply's phases, etcd's log lines and the member's metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use snapply_core::{Event, Observer, Phase};

use super::Trace;
use crate::metrics::Metrics;

/// Records each phase's duration and etcd's log lines, and sets the member's metrics (the
/// in-progress gauge, the apply's duration).
pub(super) struct Recorder {
    started: Instant,
    pub(super) phases: Vec<(Phase, Duration)>,
    pub(super) trace: Vec<Trace>,
    metrics: Arc<Metrics>,
    applying_since: Option<Instant>,
}

impl Recorder {
    pub(super) fn new(metrics: &Arc<Metrics>) -> Self {
        Recorder {
            started: Instant::now(),
            phases: Vec::new(),
            trace: Vec::new(),
            metrics: metrics.clone(),
            applying_since: None,
        }
    }
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event) {
        if event.is_warning() {
            log::warn!("{event}");
        } else {
            log::info!("{event}");
        }
        self.trace.push(Trace::Event(*event));
    }
    fn in_progress(&mut self, applying: bool) {
        self.trace.push(Trace::InProgress(applying));
        if applying {
            self.metrics.snapshot_apply_in_progress.inc();
            self.applying_since = Some(Instant::now());
        } else {
            self.metrics.snapshot_apply_in_progress.dec();
            if let Some(since) = self.applying_since.take() {
                self.metrics.snapshot_apply.observe(since.elapsed().as_secs_f64());
            }
        }
    }
    fn now_micros(&mut self) -> Option<u64> {
        u64::try_from(self.started.elapsed().as_micros()).ok()
    }
    fn phase_done(&mut self, phase: Phase, micros: Option<u64>) {
        let took = Duration::from_micros(micros.unwrap_or(0));
        self.phases.push((phase, took));
        self.trace.push(Trace::PhaseDone(phase, took));
    }
}
