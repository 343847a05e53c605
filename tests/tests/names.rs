//! Files are named as they are: deep and long paths whole, names that are not UTF-8 byte for
//! byte, and every file of a burst, however many appear at once. The oracle is the
//! filesystem: the path each file was created at.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::{self, File},
    io::Write,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use memtrace::model::{FileUsage, Report};
use memtrace_tests::{files::FileId, files::Scratch, start_tracer, MIB};

fn files_by_id(report: &Report) -> HashMap<(String, u64), &FileUsage> {
    report
        .cgroups
        .iter()
        .flat_map(|c| &c.files)
        .map(|f| ((f.dev.to_string(), f.ino), f))
        .collect()
}

/// A file's path in a report and whether it is deleted; `None` when the file is not reported.
fn name_of(report: &Report, id: &FileId) -> Option<(Option<String>, bool)> {
    files_by_id(report)
        .get(&(id.dev.clone(), id.ino))
        .map(|f| (f.path.as_deref().map(str::to_owned), f.deleted))
}

fn write_file(path: &PathBuf, bytes: usize) {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(&vec![7u8; bytes]).unwrap();
}

#[test]
fn a_path_thirty_directories_deep_with_long_names_is_named_whole() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("deep");
    let mut dir = scratch.dir.clone();
    for level in 0..30 {
        // 100-byte components: the old walk cut them at 79 and stopped at 20.
        dir.push(format!("d{level:02}{}", "x".repeat(97)));
    }
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("deep.log");
    write_file(&path, MIB as usize);
    let report = tracer.snapshot().unwrap();
    let id = FileId::of(&path);
    let file = files_by_id(&report)
        .get(&(id.dev.clone(), id.ino))
        .copied()
        .expect("the deep file is reported");
    assert_eq!(file.path.as_deref(), path.to_str(), "the whole path");
    assert!(file.path_complete);
    assert!(!file.deleted, "a long path is not a deleted file");
}

#[test]
fn a_name_that_is_not_utf8_round_trips_through_the_report() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("bytes");
    let name = OsStr::from_bytes(b"caf\xe9-\xff\x01.log");
    let path = scratch.dir.join(name);
    write_file(&path, 256 * 1024);
    let report = tracer.snapshot().unwrap();
    let id = FileId::of(&path);
    let files = files_by_id(&report);
    let file = files.get(&(id.dev, id.ino)).expect("the file is reported");
    let hex = file
        .path_hex
        .as_deref()
        .expect("a non-UTF-8 name carries its bytes");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(bytes, path.as_os_str().as_bytes(), "exact bytes");
    let json = serde_json::to_string(file).unwrap();
    assert!(json.contains(&format!("\"path_hex\":\"{hex}\"")), "{json}");
}

#[test]
fn every_file_of_a_burst_of_forty_thousand_is_named() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("burst");
    let mut paths = Vec::with_capacity(40_000);
    for i in 0..40_000 {
        let path = scratch.dir.join(format!("f{i:05}.bin"));
        write_file(&path, 4096);
        paths.push(path);
    }
    // A bigger file right after the burst, as in the issue.
    let big = scratch.dir.join("after-the-burst.log");
    write_file(&big, 32 * MIB as usize);
    let report = tracer.snapshot().unwrap();
    let files = files_by_id(&report);
    let mut unnamed = Vec::new();
    for path in paths.iter().chain([&big]) {
        let id = FileId::of(path);
        match files.get(&(id.dev, id.ino)) {
            Some(f) if f.cached_bytes > 0 && f.path.as_deref() != path.to_str() => {
                unnamed.push(format!("{} shown as {:?}", path.display(), f.path));
            }
            Some(_) => {}
            None => unnamed.push(format!("{} not reported", path.display())),
        }
    }
    assert!(
        unnamed.is_empty(),
        "{} of 40001 files not named, e.g. {:?}",
        unnamed.len(),
        &unnamed[..unnamed.len().min(5)]
    );
    assert_eq!(report.stats.map_full, 0);
}

/// A name is the file's name now, in the very next report: a rename within a directory (a WAL
/// segment recycled under a future segment's name, a log rotated), a rename across
/// directories, and a rename over an existing file, whose replaced inode (still held open,
/// so its cache stays) is shown deleted rather than under the name it lost. The oracle is the
/// filesystem: each inode's name after the renames.
#[test]
fn renamed_files_are_shown_under_their_new_names_in_the_next_report() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("renames");
    let wal = scratch.dir.join("pg_wal");
    let archive = scratch.dir.join("archive");
    fs::create_dir_all(&wal).unwrap();
    fs::create_dir_all(&archive).unwrap();
    let segment = wal.join("000000010000000000000001");
    let moved = scratch.dir.join("moved.log");
    let state = scratch.dir.join("replorigin_checkpoint");
    for path in [&segment, &moved, &state] {
        write_file(path, MIB as usize);
    }
    let replaced = File::open(&state).unwrap();
    let (segment_id, moved_id, replaced_id) =
        (FileId::of(&segment), FileId::of(&moved), FileId::of(&state));
    let mut previously_replaced: Option<FileId> = None;
    for round in 0..3 {
        let report = tracer.snapshot().unwrap();
        let path_of = |id: &FileId| name_of(&report, id);
        assert_eq!(
            path_of(&segment_id),
            Some((Some(segment.to_string_lossy().into_owned()), false)),
            "round {round}: the segment before it is recycled"
        );
        // Recycled: renamed to a future segment's name in the same directory.
        let recycled = wal.join(format!("00000001000000000000000{}", round + 2));
        fs::rename(&segment, &recycled).unwrap();
        // Rotated across directories.
        let archived = archive.join(format!("moved.log.{round}"));
        fs::rename(&moved, &archived).unwrap();
        // Rewritten as a temporary file renamed over the old one (still open here).
        let temp = scratch.dir.join("replorigin_checkpoint.tmp");
        write_file(&temp, MIB as usize);
        let fresh_id = FileId::of(&temp);
        fs::rename(&temp, &state).unwrap();

        let report = tracer.snapshot().unwrap();
        let path_of = |id: &FileId| name_of(&report, id);
        assert_eq!(
            path_of(&segment_id),
            Some((Some(recycled.to_string_lossy().into_owned()), false)),
            "round {round}: a WAL segment recycled within its directory"
        );
        assert_eq!(
            path_of(&moved_id),
            Some((Some(archived.to_string_lossy().into_owned()), false)),
            "round {round}: a file moved to another directory"
        );
        assert_eq!(
            path_of(&fresh_id),
            Some((Some(state.to_string_lossy().into_owned()), false)),
            "round {round}: the file renamed over the old one has its name"
        );
        let old = path_of(&replaced_id).expect("the replaced file, held open, is still cached");
        assert!(
            old.1,
            "round {round}: the replaced inode is deleted, not shown as {:?}",
            old.0
        );
        // The file replaced the round before, closed by now: its cache went with it, and
        // whatever the report still says of it, it is not the name it lost.
        if let Some(previous) = &previously_replaced {
            if let Some((path, deleted)) = path_of(previous) {
                assert!(
                    deleted || path.as_deref() != state.to_str(),
                    "round {round}: a replaced file nobody holds is shown under the name it lost"
                );
            }
        }
        previously_replaced = Some(fresh_id);
        // The next round starts from the new names.
        fs::rename(&recycled, &segment).unwrap();
        fs::rename(&archived, &moved).unwrap();
    }
    drop(replaced);
}
