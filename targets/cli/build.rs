//! Generates etcd's v3 gRPC services (server side) and messages from etcd's own `.proto` files
//! in `proto/` (see `proto/README.md`). Needs `protoc` 3.15 or later with the well-known types
//! (Debian: `protobuf-compiler`, `libprotobuf-dev`; `cargo xtask ci` installs them).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&["proto/etcd/api/etcdserverpb/rpc.proto"], &["proto"])?;
    Ok(())
}
