// Confirming a ticket on another thread (where the image was not written): tickets are neither
// `Send` nor `Sync`, so they stay on the thread of their run.
use snapply_core::ports::PersistTicket;

fn confirm_elsewhere(ticket: PersistTicket<'static>) {
    std::thread::spawn(move || {
        let _ = ticket.confirm([0; 32]);
    });
}

fn main() {}
