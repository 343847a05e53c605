//! A report as one line of JSON, written cgroup by cgroup as the cgroups are built
//! (`watch --json`), each file written here rather than by serde.
//!
//! A report of 100,000 files is some 40 MB of JSON. serde_json scans every key of every file,
//! a byte at a time, for characters to escape: 54 ms of each such report went to that. Here a
//! file's keys are constants and its text is escaped by serde_json only when it holds a
//! character that needs it. The report's own figures and each cgroup's still go through serde.
//! Tests hold the output byte for byte equal to serde's, for a whole report and for any file.

use std::io::{self, Write};

use crate::model::{CgroupStream, Dev, FileUsage, Layer, Provenance, Report};

/// Bytes collected before each write to the output.
const WRITE_BUFFER: usize = 256 * 1024;

/// Writes `header` with `cgroups` as its cgroups, one line of JSON, and flushes.
pub fn write_line(
    out: &mut impl Write,
    header: &Report<()>,
    cgroups: CgroupStream<'_>,
) -> io::Result<()> {
    let (cgroups, mut after_each) = cgroups.into_parts();
    let mut buffered = io::BufWriter::with_capacity(WRITE_BUFFER, &mut *out);
    // The report's figures as serde writes them, up to the value of its last field.
    let mut head = serde_json::to_vec(header)?;
    strip_last_value(&mut head, b"\"cgroups\":null}")?;
    buffered.write_all(&head)?;
    buffered.write_all(b"[")?;
    let mut file_text = Vec::with_capacity(1024);
    for (i, mut cgroup) in cgroups.enumerate() {
        if i > 0 {
            buffered.write_all(b",")?;
        }
        // The cgroup's figures, up to its last field, its files.
        let files = std::mem::take(&mut cgroup.files);
        head.clear();
        let written = serde_json::to_writer(&mut head, &cgroup);
        cgroup.files = files;
        written?;
        strip_last_value(&mut head, b"\"files\":[]}")?;
        buffered.write_all(&head)?;
        buffered.write_all(b"[")?;
        for (j, file) in cgroup.files.iter().enumerate() {
            file_text.clear();
            if j > 0 {
                file_text.push(b',');
            }
            write_file(&mut file_text, file)?;
            buffered.write_all(&file_text)?;
        }
        buffered.write_all(b"]}")?;
        after_each(cgroup);
    }
    buffered.write_all(b"]}\n")?;
    buffered.flush()?;
    drop(buffered);
    out.flush()
}

/// Cuts the value of an object's last field off `json`, which must end with `ending` (that
/// field, its placeholder value and the object's closing brace): what is left ends with the
/// field's name and colon.
fn strip_last_value(json: &mut Vec<u8>, ending: &[u8]) -> io::Result<()> {
    if !json.ends_with(ending) {
        return Err(io::Error::other(format!(
            "the report's JSON does not end in {}",
            String::from_utf8_lossy(ending)
        )));
    }
    let key = ending
        .iter()
        .position(|&b| b == b':')
        .map_or(0, |at| at + 1);
    json.truncate(json.len() - ending.len() + key);
    Ok(())
}

/// One file as serde writes a [`FileUsage`]: its fields in their order, those serde skips
/// skipped.
fn write_file(out: &mut Vec<u8>, file: &FileUsage) -> io::Result<()> {
    out.extend_from_slice(b"{\"path\":");
    optional_text(out, file.path.as_deref())?;
    out.extend_from_slice(b",\"host_path\":");
    optional_text(out, file.host_path.as_deref())?;
    if let Some(hex) = &file.path_hex {
        out.extend_from_slice(b",\"path_hex\":");
        text(out, hex)?;
    }
    if let Some(hex) = &file.host_path_hex {
        out.extend_from_slice(b",\"host_path_hex\":");
        text(out, hex)?;
    }
    if !file.path_complete {
        out.extend_from_slice(b",\"path_complete\":false");
    }
    out.extend_from_slice(if file.deleted {
        b",\"deleted\":true"
    } else {
        b",\"deleted\":false"
    });
    if let Some(layer) = file.layer {
        out.extend_from_slice(match layer {
            Layer::Upper => b",\"layer\":\"upper\"",
            Layer::Lower => b",\"layer\":\"lower\"",
        });
    }
    out.extend_from_slice(b",\"dev\":");
    device(out, file.dev);
    for (key, value) in [
        (&b",\"ino\":"[..], file.ino),
        (b",\"cached_bytes\":", file.cached_bytes),
        (b",\"added_bytes\":", file.added_bytes),
        (b",\"removed_bytes\":", file.removed_bytes),
        (b",\"accessed_bytes\":", file.accessed_bytes),
        (b",\"seeded_bytes\":", file.seeded_bytes),
        (b",\"seeded_active_bytes\":", file.seeded_active_bytes),
    ] {
        out.extend_from_slice(key);
        number(out, value);
    }
    out.extend_from_slice(b",\"provenance\":");
    out.extend_from_slice(match file.provenance {
        Provenance::Traced => b"\"traced\"",
        Provenance::Exact => b"\"exact\"",
        Provenance::InferredOwner => b"\"inferred_owner\"",
        Provenance::InferredLocation => b"\"inferred_location\"",
    });
    out.extend_from_slice(b",\"written_bytes\":");
    number(out, file.written_bytes);
    out.extend_from_slice(b",\"write_calls\":");
    number(out, file.write_calls);
    // Floats as serde_json writes them (and NaN as null).
    out.extend_from_slice(b",\"write_rate_bytes_per_second\":");
    serde_json::to_writer(&mut *out, &file.write_rate_bytes_per_second)?;
    out.extend_from_slice(b",\"writers\":[");
    for (i, writer) in file.writers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"pid\":");
        number(out, u64::from(writer.pid));
        out.extend_from_slice(b",\"comm\":");
        text(out, &writer.comm.as_str())?;
        out.extend_from_slice(b",\"bytes\":");
        number(out, writer.bytes);
        out.extend_from_slice(b",\"calls\":");
        number(out, writer.calls);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"dirty_bytes\":");
    optional_number(out, file.dirty_bytes);
    out.extend_from_slice(b",\"writeback_bytes\":");
    optional_number(out, file.writeback_bytes);
    if let Some(fs) = file.fs {
        out.extend_from_slice(b",\"fs\":");
        text(out, fs)?;
    }
    out.push(b'}');
    Ok(())
}

/// A JSON string. Text with nothing to escape (nearly every path) is copied as it is; the rest
/// is escaped by serde_json, so hostile names come out exactly as serde would write them.
fn text(out: &mut Vec<u8>, value: &str) -> io::Result<()> {
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        Ok(serde_json::to_writer(&mut *out, value)?)
    }
}

fn optional_text(out: &mut Vec<u8>, value: Option<&str>) -> io::Result<()> {
    match value {
        Some(value) => text(out, value),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn optional_number(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => number(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// `"MAJ:MIN"`, as [`Dev`] serializes.
fn device(out: &mut Vec<u8>, dev: Dev) {
    out.push(b'"');
    number(out, u64::from(dev.major()));
    out.push(b':');
    number(out, u64::from(dev.minor()));
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{CgroupUsage, Comm, WriterUsage};

    fn any_text() -> impl Strategy<Value = String> {
        // Plain paths, and hostile ones: quotes, backslashes, control characters, non-ASCII.
        prop_oneof![
            "[a-z/._-]{0,40}",
            any::<String>(),
            "[\"\\\\\n\t\u{1}\u{7f}é/]{0,12}",
        ]
    }

    fn any_writer() -> impl Strategy<Value = WriterUsage> {
        (any::<u32>(), any::<[u8; 16]>(), any::<u64>(), any::<u64>()).prop_map(
            |(pid, comm, bytes, calls)| WriterUsage {
                pid,
                comm: Comm(comm),
                bytes,
                calls,
            },
        )
    }

    prop_compose! {
        fn any_file()(
            names in (
                proptest::option::of(any_text()),
                proptest::option::of(any_text()),
                proptest::option::of(any_text()),
                proptest::option::of(any_text()),
                any::<bool>(),
            ),
            deleted in any::<bool>(),
            layer in proptest::option::of(prop_oneof![Just(Layer::Upper), Just(Layer::Lower)]),
            dev in any::<u32>(),
            counts in any::<[u64; 9]>(),
            provenance in prop_oneof![
                Just(Provenance::Traced),
                Just(Provenance::Exact),
                Just(Provenance::InferredOwner),
                Just(Provenance::InferredLocation),
            ],
            rate in proptest::option::of(prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(0.0),
                Just(1048576.0),
            ]),
            writers in proptest::collection::vec(any_writer(), 0..3),
            dirty in (proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>())),
            fs in proptest::option::of(Just("tmpfs")),
        ) -> FileUsage {
            let (path, host_path, path_hex, host_path_hex, path_complete) = names;
            FileUsage {
                path: path.map(Arc::from),
                host_path: host_path.map(Arc::from),
                path_hex: path_hex.map(Arc::from),
                host_path_hex: host_path_hex.map(Arc::from),
                path_complete,
                deleted,
                layer,
                dev: Dev(dev),
                ino: counts[0],
                cached_bytes: counts[1],
                added_bytes: counts[2],
                removed_bytes: counts[3],
                accessed_bytes: counts[8],
                seeded_bytes: counts[4],
                seeded_active_bytes: counts[5],
                provenance,
                written_bytes: counts[6],
                write_calls: counts[7],
                write_rate_bytes_per_second: rate,
                writers,
                dirty_bytes: dirty.0,
                writeback_bytes: dirty.1,
                fs,
                generation: 0,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn a_file_is_written_exactly_as_serde_writes_it(file in any_file()) {
            let mut by_hand = Vec::new();
            write_file(&mut by_hand, &file).unwrap();
            let by_serde = serde_json::to_vec(&file).unwrap();
            prop_assert_eq!(
                String::from_utf8_lossy(&by_hand),
                String::from_utf8_lossy(&by_serde)
            );
        }
    }

    #[test]
    fn an_ending_that_is_not_there_is_an_error_not_a_cut() {
        let mut json = b"{\"a\":1}".to_vec();
        assert!(strip_last_value(&mut json, b"\"cgroups\":null}").is_err());
        let mut json = b"{\"a\":1,\"cgroups\":null}".to_vec();
        strip_last_value(&mut json, b"\"cgroups\":null}").unwrap();
        assert_eq!(json, b"{\"a\":1,\"cgroups\":");
    }

    #[test]
    fn a_report_without_cgroups_is_still_a_whole_document() {
        let report = crate::view::golden_tests::fixed_report();
        let mut out = Vec::new();
        write_line(
            &mut out,
            &report.clone().with_cgroups(()),
            CgroupStream::new(std::iter::empty::<CgroupUsage>()),
        )
        .unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["cgroups"], serde_json::json!([]));
        assert_eq!(parsed["schema_version"], serde_json::json!(1));
    }
}
