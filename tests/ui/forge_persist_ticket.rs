// Claiming persistence without storage evidence: `PersistTicket` cannot be built by a struct
// literal, so no `Durable` can be confirmed from a ticket the pipeline did not hand out.
use snapply_core::ports::PersistTicket;

fn main() {
    let _ = PersistTicket { metadata: Default::default(), _brand: std::marker::PhantomData }.confirm([0; 32]);
}
