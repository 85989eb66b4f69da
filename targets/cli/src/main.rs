//! `snapply`: apply, inspect and verify Raft snapshots of an etcd-style key-value store.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod observe;
mod serve;

/// Apply a Raft leader's snapshot to a follower, the way etcd's applySnapshot does.
#[derive(Debug, Parser)]
#[command(name = "snapply", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a leader's state, snapshot it, apply it to a follower through every phase, and
    /// compare the two nodes store by store.
    Demo(demo::Args),
    /// Run one member of a raft-rs cluster, with a line-based client API (put/get/del/range).
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
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
