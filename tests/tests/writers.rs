//! Who writes, and how much is dirty, on this host's hooks: fexit on vfs_write where the kernel
//! allows it, else the writeback_dirty_folio fallback (this machine refuses fentry/fexit).

use std::{
    fs::File,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memtrace::model::WritesSource;
use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    cgroup_in, file_in,
    files::{cachestat_dirty_bytes, FileId, Scratch},
    start_tracer, MIB,
};

const WRITER: &str = env!("CARGO_BIN_EXE_rate-writer");

#[test]
fn writer_shows_with_pid_comm_bytes_rate_and_dirty_then_fsync_cleans() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut tracer = start_tracer();
    let source = tracer
        .tracer()
        .writes_source
        .expect("a write hook is attached");
    eprintln!("writes source on this kernel: {source:?}");
    // The VM matrix's kernels allow fexit: there the fallback is a failure, not a choice.
    if std::env::var_os("MEMTRACE_REQUIRE_FEXIT").is_some() {
        assert_eq!(
            source,
            WritesSource::VfsWrite,
            "fexit on vfs_write must attach on this kernel"
        );
    }
    let scratch = Scratch::new("writer-rate");
    let cgroup = MemCgroup::create("writer-rate");
    let log = scratch.path("rate.log");
    // 16 MiB in 64 KiB chunks every 25 ms: about 2.5 MiB/s for ~6 s.
    let total = 16 * MIB;
    let mut child = cgroup.spawn(Command::new(WRITER).arg(&log).args([
        total.to_string(),
        (64 * 1024).to_string(),
        "25".to_owned(),
    ]));
    let pid = child.id();

    // Each snapshot bracketed by the file's size and the clock: the writer appends, so what it
    // wrote between the two reports lies between these sizes.
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    thread::sleep(Duration::from_secs(2));
    let (t1_before, s1_before) = (Instant::now(), size());
    tracer.snapshot().expect("first snapshot");
    let (t1_after, s1_after) = (Instant::now(), size());
    thread::sleep(Duration::from_secs(2));
    let (t2_before, s2_before) = (Instant::now(), size());
    let midway = tracer.snapshot().expect("second snapshot");
    let (t2_after, s2_after) = (Instant::now(), size());
    assert!(child.wait().unwrap().success(), "writer failed");

    let file = FileId::of(&log);
    let cg = cgroup_in(&midway, cgroup.id).expect("writer's cgroup");
    let during = file_in(cg, &file).expect("file under the writer's cgroup");
    let rate = during
        .write_rate_bytes_per_second
        .expect("a rate from the second snapshot");
    // A write in flight at a drain is counted when it returns (fexit) or when its first byte
    // dirties a page (the fallback): a chunk and a page of slack either way.
    let slack = 64 * 1024 + 4096;
    let lowest = s2_before.saturating_sub(s1_after + slack) as f64
        / t2_after.duration_since(t1_before).as_secs_f64();
    let highest =
        (s2_after + slack - s1_before) as f64 / t2_before.duration_since(t1_after).as_secs_f64();
    eprintln!("write rate {rate:.0} B/s; the file grew at {lowest:.0}..{highest:.0} B/s");
    assert!(
        (lowest..=highest).contains(&rate),
        "rate {rate} B/s outside what the file's growth allows: {lowest:.0}..{highest:.0} B/s"
    );

    let report = tracer.snapshot().expect("snapshot after the writer");
    let cg = cgroup_in(&report, cgroup.id).expect("writer's cgroup");
    let after = file_in(cg, &file).expect("file under the writer's cgroup");
    let writer = after
        .writers
        .iter()
        .find(|w| w.pid == pid)
        .expect("the writer by pid");
    assert_eq!(writer.comm, "rate-writer");
    match source {
        // Every byte through write(2).
        WritesSource::VfsWrite => assert_eq!(writer.bytes, total, "vfs_write bytes are exact"),
        // Each page turns dirty once (nothing writes it back within seconds).
        WritesSource::DirtiedPages => assert_near("pages dirtied", writer.bytes, total, MIB),
    }
    assert_eq!(after.written_bytes, writer.bytes);
    assert_eq!(report.writes_source, Some(source));

    // Dirty pages age out to disk on their own (slowly here, within seconds in a small VM):
    // a fast burst right before the look keeps the check about memtrace, not about timing.
    let burst = 8 * MIB;
    let status = cgroup
        .spawn(Command::new(WRITER).arg(&log).args([
            burst.to_string(),
            MIB.to_string(),
            "0".to_owned(),
        ]))
        .wait()
        .unwrap();
    assert!(status.success(), "burst writer failed");
    // Nothing writes to the file now: its dirty bytes only fall, so the kernel's count before
    // and after the snapshot brackets what memtrace measured in it.
    let kernel_before = cachestat_dirty_bytes(&log);
    let report = tracer.snapshot().expect("snapshot after the burst");
    let kernel_after = cachestat_dirty_bytes(&log);
    let after = file_in(cgroup_in(&report, cgroup.id).unwrap(), &file).unwrap();
    let dirty = after.dirty_bytes.expect("dirty bytes measured");
    eprintln!(
        "dirty after the burst: {dirty} B; cachestat {kernel_before:?} then {kernel_after:?}"
    );
    match (kernel_before, kernel_after) {
        (Some(before), Some(after)) => assert!(
            (after..=before).contains(&dirty),
            "dirty {dirty} B outside the kernel's {after}..{before} B"
        ),
        // Linux 6.1-6.4 have no cachestat to compare with (memtrace reads kpageflags there):
        // the burst, written just now, is mostly still dirty.
        _ => assert!(
            dirty >= burst / 2,
            "dirty bytes should rise after the writes: {dirty}"
        ),
    }
    // cachestat(2) from Linux 6.5, per-page flags before that.
    assert!(
        matches!(report.dirty_source, Some("cachestat" | "kpageflags")),
        "{:?}",
        report.dirty_source
    );

    File::open(&log).unwrap().sync_all().unwrap();
    let report = tracer.snapshot().expect("snapshot after fsync");
    let cleaned = file_in(cgroup_in(&report, cgroup.id).unwrap(), &file).unwrap();
    assert_near(
        "dirty after fsync",
        cleaned.dirty_bytes.unwrap(),
        0,
        64 * 1024,
    );
    assert_near(
        "cache stays after fsync",
        cleaned.cached_bytes,
        total + burst,
        2 * MIB,
    );
}

/// The two tests take turns: each tracer sees every file of the node, and the other's 73,536
/// new files would spend the dirty meter's budget of the first.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A live process writing more distinct files than the writers map holds: the map's halves
/// are emptied at every drain, as the commands drain it (here every 200 ms), so nothing is
/// lost to a full map and every byte is found under the process.
#[test]
fn a_live_process_writing_more_files_than_the_writers_map_holds_loses_no_write() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut tracer = start_tracer();
    let source = tracer.tracer().writes_source.expect("a write hook");
    let scratch = Scratch::new("many-writes");
    let cgroup = MemCgroup::create("many-writes");
    let files = memtrace_common::WRITER_ENTRIES as usize + 8_000;
    // One shell writes them all and stays alive: its entries are those of a live process.
    let script = format!(
        "cd {} && i=0; while [ $i -lt {files} ]; do echo data > w$i; i=$((i+1)); done; touch done; sleep 120",
        scratch.dir.display()
    );
    let mut writer = cgroup.spawn(Command::new("sh").args(["-c", &script]));
    let pid = writer.id();
    let began = Instant::now();
    while !scratch.path("done").exists() {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "the writer did not finish"
        );
        tracer.drain_events();
        tracer.maintain();
        thread::sleep(Duration::from_millis(200));
    }
    let report = tracer.snapshot().unwrap();
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(
        report.stats.writers_map_full, 0,
        "no write lost to a full map"
    );
    let cg = cgroup_in(&report, cgroup.id).expect("the writer's cgroup");
    let written: u64 = cg
        .files
        .iter()
        .flat_map(|f| &f.writers)
        .filter(|w| w.pid == pid)
        .map(|w| w.bytes)
        .sum();
    let expected = match source {
        // "data\n" through write(2), per file.
        WritesSource::VfsWrite => files as u64 * 5,
        // One page turned dirty per file.
        WritesSource::DirtiedPages => files as u64 * 4096,
    };
    assert_eq!(
        written, expected,
        "every file's write under the writer ({files} files)"
    );
}
