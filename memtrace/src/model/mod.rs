//! The attribution model: page cache per memory cgroup and per file, built from raw kernel
//! counters. Pure data and pure functions, no I/O: the loader and the resolvers produce its
//! values, the collector assembles them, views render them, tests check them.
//!
//! - [`schema`]: the report types, which are the JSON contract, and the values they hold.
//! - [`aggregate`]: kernel counters (plus cache found at start) → cgroups and files.
//! - [`filter`]: what a report keeps.
//! - [`rates`]: per-second change between two samples.
//! - [`explain`]: one cgroup's figures reconciled with memory.stat, and a verdict.
//! - [`doctor`]: what `doctor` checked.
//! - [`format`]: numbers for people.

pub mod aggregate;
pub mod doctor;
pub mod explain;
pub mod filter;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod format;
pub mod rates;
pub mod schema;

pub use self::{
    aggregate::{aggregate, Observation, SeededCache},
    filter::{apply_filter, under, Filter},
    format::{escape_control, host_path_of, human_bytes, human_count, name_bytes, name_text},
    rates::{Rates, Sample, WriteRates},
    schema::*,
};
