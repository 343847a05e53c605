//! memtrace: page cache per memory cgroup and per file, from eBPF programs on the page-cache
//! tracepoints.
//!
//! Data flows kernel programs → [`loader`] → [`collector`] → [`model`] → [`view`]; the
//! collector asks [`resolve`] to name what the kernel counts. Modules import only downwards:
//! `commands` → `view`, `collector` → `loader`, `resolve` → `model` → `memtrace-common`.

pub mod cli;
pub mod collector;
pub mod commands;
pub mod loader;
pub mod model;
pub mod resolve;
pub mod view;
