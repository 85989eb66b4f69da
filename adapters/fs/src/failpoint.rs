//! Failpoints at every step of persist, open and release (the `fail` crate, as TiKV uses it).
//!
//! They are compiled only with the `failpoints` feature, which only the crate's own tests turn
//! on; without it [`failpoint!`] expands to nothing. A failpoint configured `return(exit)` ends
//! the process on the spot with [`CRASH_EXIT_CODE`] (no unwinding, no destructor, no flush: what
//! a kill leaves), `return(enospc)` fails the step as a full disk would, any other `return`
//! fails it with an I/O error.

/// Marks a step of a multi-step disk operation; `$path` is the file the step works on.
macro_rules! failpoint {
    ($name:literal, $path:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name, $path)?;
    };
}
pub(crate) use failpoint;

/// The exit code of a process ended by a `return(exit)` failpoint.
#[cfg(feature = "failpoints")]
pub const CRASH_EXIT_CODE: i32 = 86;

/// Every failpoint, in the order a persist, an open and a release reach them.
#[cfg(feature = "failpoints")]
pub const FAILPOINTS: &[&str] = &[
    "fs::persist::start",
    "fs::persist::tmp_created",
    "fs::persist::writing",
    "fs::persist::materialized",
    "fs::persist::committed",
    "fs::persist::checked",
    "fs::persist::db_renamed",
    "fs::persist::db_dir_synced",
    "fs::durable::written",
    "fs::durable::synced",
    "fs::durable::renamed",
    "fs::durable::dir_synced",
    "fs::persist::done",
    "fs::open::start",
    "fs::open::renamed",
    "fs::open::dir_synced",
    "fs::open::opened",
    "fs::release::start",
    "fs::release::removed",
];

#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &'static str, path: &std::path::Path) -> Result<(), crate::FsError> {
    use std::io;
    crate::durable::journal::push(|| crate::durable::journal::Step::Reached(name));
    let Some(action) = fail::eval(name, |arg| arg) else { return Ok(()) };
    match action.as_deref() {
        Some("exit") => std::process::exit(CRASH_EXIT_CODE),
        Some("enospc") => Err(crate::FsError::io(name, path, io::Error::from(io::ErrorKind::StorageFull))),
        _ => Err(crate::FsError::io(name, path, io::Error::other("injected failure"))),
    }
}

#[cfg(test)]
#[cfg(feature = "failpoints")]
mod tests {
    use super::FAILPOINTS;

    /// The list the crash sweep walks is every failpoint of the source, each once.
    #[test]
    fn every_failpoint_is_listed_once() {
        let sources =
            [include_str!("store.rs"), include_str!("bulk.rs"), include_str!("datadir.rs"), include_str!("durable.rs")];
        let mut found: Vec<&str> = sources
            .iter()
            .flat_map(|s| s.split("failpoint!(\"").skip(1))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let mut listed = FAILPOINTS.to_vec();
        found.sort_unstable();
        listed.sort_unstable();
        assert_eq!(found, listed);
    }
}
