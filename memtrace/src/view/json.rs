//! JSON output: one document per report (NDJSON when streamed).

use std::io::{self, Write};

use crate::model::Report;

/// Writes `report` as one line of JSON.
pub fn write_line(out: &mut impl Write, report: &Report) -> io::Result<()> {
    serde_json::to_writer(&mut *out, report).map_err(|err| match err.io_error_kind() {
        // Keep the kind, so callers can tell a closed pipe from a real failure.
        Some(kind) => io::Error::new(kind, err),
        None => io::Error::other(err),
    })?;
    out.write_all(b"\n")?;
    out.flush()
}
