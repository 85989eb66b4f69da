// Claiming persistence without storage evidence: `PersistTicket::new` is private to the core.
use snapply_core::ports::PersistTicket;

fn main() {
    let _ = PersistTicket::new(7, 2).confirm();
}
