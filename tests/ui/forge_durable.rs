// Claiming persistence without storage evidence: `Durable` cannot be built by a struct literal.
use snapply_core::ports::Durable;

fn main() {
    let _ = Durable { metadata: Default::default(), sha256: [0; 32], _brand: std::marker::PhantomData };
}
