// Handing a proof of durability to another thread: `Durable` is neither `Send` nor `Sync`.
use snapply_core::ports::Durable;

fn assert_send<T: Send>(_: T) {}

fn leak(durable: Durable<'static>) {
    assert_send(durable);
}

fn main() {}
