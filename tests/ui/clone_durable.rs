// Copying storage evidence: `Durable` is not `Clone`, so a snapshot store cannot keep the proof
// for one snapshot and hand it out again for another.
use snapply_core::ports::Durable;

fn duplicate<'r>(durable: &Durable<'r>) -> Durable<'r> {
    <Durable<'r> as Clone>::clone(durable)
}

fn main() {}
