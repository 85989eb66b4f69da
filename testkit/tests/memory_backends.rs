//! The in-memory backends against the reference model of the backend port
//! (`snapply-testkit`), the same check the redb and flash backends run: random transaction
//! sequences where every read and every range equals the model's.

use proptest::prelude::*;
use snapply_core::mem::{MemBackend, VecBackend};
use snapply_testkit::{InMemory, Shape, check, steps};

/// Within the fixed backend's capacities: 64 entries of 3-byte keys and 48-byte values.
const SHAPE: Shape = Shape { steps: 96, buckets: 10, max_key: 3, max_value: 48, reopen: false };

proptest! {
    #[test]
    fn vec_backend_matches_the_model(steps in steps(SHAPE)) {
        check(InMemory(VecBackend::new()), &steps)?;
    }

    #[test]
    fn mem_backend_matches_the_model(steps in steps(SHAPE)) {
        check(InMemory(MemBackend::<128, 4, 48>::default()), &steps)?;
    }
}
