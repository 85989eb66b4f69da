// Making up a run identity: only the core numbers its runs, so a proof cannot be made to name
// another run's.
use snapply_core::ports::RunId;

fn main() {
    let _ = RunId(7);
}
