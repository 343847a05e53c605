//! JSON output: one document per report (NDJSON when streamed).

use std::io::{self, Write};

use crate::model::Report;

/// Writes `report` as one line of JSON.
pub fn write_line(out: &mut impl Write, report: &Report) -> io::Result<()> {
    serde_json::to_writer(&mut *out, report).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}
