//! Renderings of the model: nothing here reads the kernel or the filesystem.

pub mod doctor;
pub mod explain;
pub mod json;
pub mod prometheus;
pub mod report_json;
pub mod table;
pub mod top;

use std::io::{self, Write};

use crate::model::Report;

/// How a report is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The human table.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// One JSON document per line, one line per report (`watch`).
    Ndjson,
}

impl Format {
    /// Whether the format is meant for a program rather than a person.
    pub fn is_machine(self) -> bool {
        matches!(self, Self::Json | Self::Ndjson)
    }
}

/// Writes `report` in `format`; `table` says how much of it a table shows.
pub fn write_report(
    out: &mut impl Write,
    report: &Report,
    format: Format,
    table: table::TableOptions,
) -> io::Result<()> {
    match format {
        Format::Table => table::write(out, report, table),
        Format::Json | Format::Ndjson => json::write_line(out, report),
    }
}

#[cfg(test)]
mod golden_tests;
