//! JSON output: one document per line (NDJSON when streamed). Every JSON memtrace writes
//! goes through here.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `document` as one line of JSON and flushes.
pub fn write_line(out: &mut impl Write, document: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, document).map_err(|err| match err.io_error_kind() {
        // Keep the kind, so callers can tell a closed pipe from a real failure.
        Some(kind) => io::Error::new(kind, err),
        None => io::Error::other(err),
    })?;
    out.write_all(b"\n")?;
    out.flush()
}
