//! Shared helpers of snapply's cross-crate tests.
