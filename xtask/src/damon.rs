//! Pausing the kernel's DAMON-driven proactive reclaim while tests and benchmarks run.
//!
//! Some hosts run a kdamond with a `pageout` scheme (this one: unmapped file pages idle for a
//! minute, found by physical-address sampling). It pages out file cache the tests have just
//! written, in region-sized pieces, whenever a region it judged cold holds them: a test that
//! counts pages (nothing dropped, nothing read in) cannot tell that from memtrace's doing, and a
//! benchmark's workload loses its cache at random. memtrace traces those removals like any
//! other; the tests want a kernel that removes nothing they did not ask for.

use std::{fs, path::PathBuf};

const KDAMONDS: &str = "/sys/kernel/mm/damon/admin/kdamonds";

/// kdamonds switched off by [`pause`]; switched back on when dropped.
pub(crate) struct Paused {
    states: Vec<PathBuf>,
}

/// Switches off every running kdamond, saying so; they are switched back on when the returned
/// guard is dropped.
pub(crate) fn pause() -> Paused {
    let mut states = Vec::new();
    for entry in fs::read_dir(KDAMONDS).into_iter().flatten().flatten() {
        let state = entry.path().join("state");
        if fs::read_to_string(&state).is_ok_and(|s| s.trim() == "on") {
            match fs::write(&state, "off") {
                Ok(()) => {
                    eprintln!(
                        "xtask: paused DAMON proactive reclaim ({}) for this run: it pages out \
                         file cache the tests count; it is switched back on afterwards",
                        state.display()
                    );
                    states.push(state);
                }
                Err(err) => eprintln!(
                    "xtask: WARNING: DAMON proactive reclaim ({}) is running and could not be \
                     paused ({err}): tests that count pages may see pages it reclaimed",
                    state.display()
                ),
            }
        }
    }
    Paused { states }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for state in &self.states {
            if let Err(err) = fs::write(state, "on") {
                eprintln!(
                    "xtask: WARNING: could not switch DAMON back on ({}): {err}; write `on` there",
                    state.display()
                );
            }
        }
    }
}
