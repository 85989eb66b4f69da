//! The CLI's observer: prints etcd's log lines and each phase with its duration.

use std::time::Instant;

use snapply_core::{Event, Observer, Phase};

/// Prints events and phase timings to standard output.
pub struct Printer {
    start: Instant,
    /// Phases done with their durations in microseconds.
    pub phases: Vec<(Phase, u64)>,
    /// The in-progress gauge.
    pub gauge: i64,
}

impl Printer {
    pub fn new() -> Self {
        Printer { start: Instant::now(), phases: Vec::new(), gauge: 0 }
    }
}

impl Observer for Printer {
    fn event(&mut self, event: &Event) {
        println!("  log  {event}");
    }

    fn in_progress(&mut self, applying: bool) {
        self.gauge = i64::from(applying);
        println!("  gauge etcd_server_snapshot_apply_in_progress_total={}", self.gauge);
    }

    fn now_micros(&mut self) -> Option<u64> {
        u64::try_from(self.start.elapsed().as_micros()).ok()
    }

    fn phase_done(&mut self, phase: Phase, micros: Option<u64>) {
        let micros = micros.unwrap_or(0);
        self.phases.push((phase, micros));
        println!("  ok   {:<16} {:>10.3} ms", phase.state(), micros as f64 / 1000.0);
    }
}
