//! JSON output: one document per line (NDJSON when streamed). Every JSON memtrace writes
//! goes through here.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `document` as one line of JSON and flushes.
pub fn write_line(out: &mut impl Write, document: &impl Serialize) -> io::Result<()> {
    // serde_json writes a few bytes at a time; stdout's line buffer would scan each piece for
    // a newline and flush every KiB. One large buffer turns a report into a few big writes.
    let mut buffered = io::BufWriter::with_capacity(WRITE_BUFFER, &mut *out);
    serde_json::to_writer(&mut buffered, document).map_err(|err| match err.io_error_kind() {
        // Keep the kind, so callers can tell a closed pipe from a real failure.
        Some(kind) => io::Error::new(kind, err),
        None => io::Error::other(err),
    })?;
    buffered.write_all(b"\n")?;
    buffered.flush()?;
    drop(buffered);
    out.flush()
}

/// Bytes collected before each write to the output.
const WRITE_BUFFER: usize = 256 * 1024;
