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

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Recorder, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(1, std::path::PathBuf::from("unused/db")).unwrap());
        (Recorder::new(&metrics), metrics)
    }

    #[test]
    fn the_gauge_is_up_while_applying_and_the_apply_is_timed_once() {
        let (mut r, metrics) = recorder();
        r.in_progress(true);
        assert_eq!(metrics.snapshot_apply_in_progress(), 1);
        assert_eq!(metrics.snapshot_apply.get_sample_count(), 0);
        r.in_progress(false);
        assert_eq!(metrics.snapshot_apply_in_progress(), 0);
        assert_eq!(metrics.snapshot_apply.get_sample_count(), 1);
        assert_eq!(r.trace, vec![Trace::InProgress(true), Trace::InProgress(false)]);
    }

    #[test]
    fn phases_and_events_are_kept_in_order() {
        let (mut r, _) = recorder();
        r.event(&Event::RestoringLeaseStore);
        r.phase_done(Phase::Validate, Some(1500));
        r.event(&Event::RestoredLeaseStore);
        // A pipeline without a clock reports no duration: counted as none.
        r.phase_done(Phase::Persist, None);
        assert_eq!(r.phases, vec![(Phase::Validate, Duration::from_micros(1500)), (Phase::Persist, Duration::ZERO)]);
        assert_eq!(
            r.trace,
            vec![
                Trace::Event(Event::RestoringLeaseStore),
                Trace::PhaseDone(Phase::Validate, Duration::from_micros(1500)),
                Trace::Event(Event::RestoredLeaseStore),
                Trace::PhaseDone(Phase::Persist, Duration::ZERO),
            ]
        );
    }

    #[test]
    fn the_clock_never_goes_back() {
        let (mut r, _) = recorder();
        let mut last = 0;
        for _ in 0..100 {
            let now = r.now_micros().unwrap();
            assert!(now >= last, "{last} then {now}");
            last = now;
        }
    }
}
