//! Makes, on the host, what the firmware restores: the leader's snapshot image (format version
//! 2, through the core's encoder) and the digests of the state a follower reaches by applying it
//! (through the same pipeline, on the host). The firmware includes both from `OUT_DIR`.
//!
//! It also puts `memory.x` where the linker finds it, as cortex-m-rt expects.

#[path = "build/leader.rs"]
mod leader;
#[path = "src/shared.rs"]
#[allow(dead_code)]
mod shared;

use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;

fn hex_array(bytes: &[u8]) -> String {
    let mut s = String::from("[");
    for b in bytes {
        let _ = write!(s, "0x{b:02x},");
    }
    s.push(']');
    s
}

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);
    for input in ["build.rs", "build/leader.rs", "src/shared.rs", "memory.x", "../../core/src"] {
        println!("cargo::rerun-if-changed={input}");
    }

    std::fs::copy("memory.x", out.join("memory.x"))?;
    println!("cargo::rustc-link-search={}", out.display());

    let snapshots = leader::generate()?;
    let mut expected = String::from(
        "/// The snapshots the firmware restores, in order, and the state each leads to.\nconst SNAPSHOTS: [Expected; 2] = [\n",
    );
    for (n, g) in snapshots.iter().enumerate() {
        std::fs::write(out.join(format!("snapshot-{}.img", n + 1)), &g.image)?;
        let _ = writeln!(
            expected,
            "    Expected {{ index: {index}, term: {term}, image_len: {len}, live_keys: {live}, records: {count}, \
             records_sha256: {records}, stores_sha256: {stores}, written_index: {windex}, written_records: {wcount}, \
             written_records_sha256: {wrecords}, written_stores_sha256: {wstores}, reopened_stores_sha256: {rstores} }},",
            index = g.index,
            term = g.term,
            len = g.image.len(),
            live = g.live_keys,
            count = g.expected.record_count,
            records = hex_array(&g.expected.records),
            stores = hex_array(&g.expected.stores),
            windex = g.written.1,
            wcount = g.written.0.record_count,
            wrecords = hex_array(&g.written.0.records),
            wstores = hex_array(&g.written.0.stores),
            rstores = hex_array(&g.reopened.stores),
        );
    }
    expected.push_str("];\n");
    std::fs::write(out.join("expected.rs"), expected)?;
    Ok(())
}
