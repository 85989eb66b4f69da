//! `snapply`: apply, inspect and verify Raft snapshots of an etcd-style key-value store.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod api;
mod common;
mod create;
mod demo;
mod import_etcd;
mod inspect;
mod new_cluster;
mod observe;
mod restore;
mod saved;
mod serve;
mod status;
mod verify;

/// Apply a Raft leader's snapshot to a follower, the way etcd's applySnapshot does.
#[derive(Debug, Parser)]
#[command(name = "snapply", version, about, after_help = common::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a leader's state, snapshot it, apply it to a follower through every phase, and
    /// compare the two nodes store by store.
    #[command(after_help = demo::EXIT_CODES_HELP)]
    Demo(demo::Args),
    /// Convert an etcd snapshot (`etcdctl snapshot save` output or `member/snap/db`) into a
    /// snapply image.
    #[command(after_help = common::EXIT_CODES_HELP)]
    ImportEtcd(import_etcd::Args),
    /// Create a node's data directory from a snapply image or an etcd snapshot, like
    /// `etcdutl snapshot restore`.
    #[command(after_help = common::EXIT_CODES_HELP)]
    Restore(restore::Args),
    /// Check an image and print its metadata, record count and digest.
    #[command(after_help = common::EXIT_CODES_HELP)]
    Status(status::Args),
    /// Check an image and print its metadata, bucket counts and sizes.
    #[command(after_help = common::EXIT_CODES_HELP)]
    Inspect(inspect::Args),
    /// Check an image whole: frames, order, trailer, digest, consistent index.
    #[command(after_help = common::EXIT_CODES_HELP)]
    Verify(verify::Args),
    /// Write a snapshot image of a stopped node's data directory.
    #[command(after_help = common::EXIT_CODES_HELP)]
    Create(create::Args),
    /// Run one member of a raft-rs cluster: etcd's v3 gRPC API, /metrics and /health on its
    /// client URL.
    #[command(after_help = common::EXIT_CODES_HELP)]
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::ImportEtcd(args) => import_etcd::run(&args),
        Command::Restore(args) => restore::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Create(args) => create::run(&args),
        Command::Serve(args) => serve::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
