//! Every way to misuse the restore pipeline fails to compile, for the reason its case names
//! (DESIGN.md section 7), and the one right order compiles.
//!
//! The `.stderr` files were written by the toolchain pinned in `rust-toolchain.toml`;
//! regenerate them with `TRYBUILD=overwrite cargo test -p snapply-tests --test compile_fail`
//! and read each one: it must show the error its case is about, not an incidental one.

#[test]
fn pipeline_misuse_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
    t.pass("ui/pass/*.rs");
}
