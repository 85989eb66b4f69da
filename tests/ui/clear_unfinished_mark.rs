// Clearing a node's unfinished-restore mark, or swapping its backend, outside the pipeline: the
// node's fields are private to it, and only the pipeline drives its lifecycle.
use snapply_core::Node;
use snapply_core::collections::Growable;
use snapply_core::mem::VecBackend;

fn clear(node: &mut Node<VecBackend, Growable>) {
    node.unfinished = None;
    node.backend = VecBackend::new();
    let _ = node.abandon_before_swap();
}

fn main() {}
