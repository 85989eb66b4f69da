//! The snapshot store's persist, open and commit are the pipeline's alone: called beside it,
//! without its tickets, they do not compile.
//!
//! The `.stderr` files were written by the toolchain pinned in `rust-toolchain.toml`;
//! regenerate them with `TRYBUILD=overwrite cargo test -p snapply-flash --test compile_fail`
//! and read each one: it must show the error its case is about, not an incidental one.

#[test]
fn the_store_is_driven_by_the_pipeline_alone() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
