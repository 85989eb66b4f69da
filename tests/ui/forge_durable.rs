// Claiming persistence without storage evidence: `Durable` cannot be built by a struct literal.
use snapply_core::ports::Durable;

fn main() {
    let _ = Durable { index: 7, term: 2 };
}
