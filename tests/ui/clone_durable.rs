// Copying storage evidence: `Durable` is not `Clone`, so a snapshot store cannot keep the proof
// for one snapshot and hand it out again for another.
use snapply_core::ports::Durable;

fn duplicate(durable: &Durable) -> Durable {
    <Durable as Clone>::clone(durable)
}

fn main() {}
