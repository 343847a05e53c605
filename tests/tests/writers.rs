//! Who writes, and how much is dirty, on this host's hooks: fexit on vfs_write where the kernel
//! allows it, else the writeback_dirty_folio fallback (this machine refuses fentry/fexit).

use std::{fs::File, process::Command, thread, time::Duration};

use memtrace::model::WritesSource;
use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    cgroup_in, file_in,
    files::{FileId, Scratch},
    start_tracer, MIB,
};

const WRITER: &str = env!("CARGO_BIN_EXE_rate-writer");

#[test]
fn writer_shows_with_pid_comm_bytes_rate_and_dirty_then_fsync_cleans() {
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

    thread::sleep(Duration::from_secs(2));
    tracer.snapshot().expect("first snapshot");
    thread::sleep(Duration::from_secs(2));
    let midway = tracer.snapshot().expect("second snapshot");
    assert!(child.wait().unwrap().success(), "writer failed");

    let file = FileId::of(&log);
    let cg = cgroup_in(&midway, cgroup.id).expect("writer's cgroup");
    let during = file_in(cg, &file).expect("file under the writer's cgroup");
    let rate = during
        .write_rate_bytes_per_second
        .expect("a rate from the second snapshot");
    let nominal = 64.0 * 1024.0 / 0.025;
    eprintln!("write rate {rate:.0} B/s, nominal {nominal:.0} B/s");
    assert!(
        rate > nominal * 0.25 && rate < nominal * 4.0,
        "rate {rate} far from {nominal}"
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
    let report = tracer.snapshot().expect("snapshot after the burst");
    let after = file_in(cgroup_in(&report, cgroup.id).unwrap(), &file).unwrap();
    let dirty = after.dirty_bytes.expect("dirty bytes measured");
    eprintln!("dirty after the burst: {dirty} B");
    assert!(
        dirty >= burst / 2,
        "dirty bytes should rise after the writes: {dirty}"
    );
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
