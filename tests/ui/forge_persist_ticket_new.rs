// Claiming persistence without storage evidence: `PersistTicket::new` is private to the core.
use snapply_core::ports::PersistTicket;

fn main() {
    let _ = PersistTicket::new(&Default::default()).confirm([0; 32]);
}
