// Claiming persistence without storage evidence: `Durable` cannot be built by a struct literal.
use snapply_core::ports::Durable;

fn main() {
    let _ = Durable { index: 1, term: 1, sha256: [0; 32], _brand: std::marker::PhantomData };
}
