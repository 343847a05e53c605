//! Live reports against the kernel while the files they measure keep changing: every figure
//! must still end equal to memory.stat and mincore, to one folio.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memtrace_tests::{
    assert_near, cached,
    cgroup::MemCgroup,
    cgroup_in, describe_file,
    files::{folio_census, resident_bytes, FileId, Scratch},
    start_tracer, MIB,
};

const WRITER: &str = env!("CARGO_BIN_EXE_rate-writer");

/// `dd` writing `pages` 4 KiB pages of zeros to `path`, synced: single-page folios.
fn dd_pages(path: &std::path::Path, pages: u64) -> Command {
    let mut cmd = Command::new("dd");
    cmd.args([
        "if=/dev/zero",
        &format!("of={}", path.display()),
        "bs=4k",
        &format!("count={pages}"),
        "conv=fsync",
        "status=none",
    ]);
    cmd
}

/// A file whose old cache leaves (so memtrace measures it again) while a writer appends to it
/// as fast as it can: whatever the measurement saw of the pages added meanwhile, the file and
/// its cgroup end equal to mincore and memory.stat, to one folio.
#[test]
fn a_file_measured_again_while_it_grows_ends_equal_to_mincore_and_memory_stat() {
    let scratch = Scratch::new("remeasure");
    let cgroup = MemCgroup::create("remeasure");
    let path = scratch.path("growing.log");
    // 64 MiB cached before memtrace starts, and not seeded: cache it never saw arrive.
    cgroup.run(&mut dd_pages(&path, 64 * MIB / 4096));
    let mut tracer = start_tracer();
    tracer.snapshot().expect("snapshot");

    let mut writer = cgroup.spawn(Command::new(WRITER).args([
        path.to_str().unwrap(),
        &(512 * MIB).to_string(),
        "4096",
        "0",
    ]));
    thread::sleep(Duration::from_millis(30));
    // Drops every cached page, the old ones included: removals of pages memtrace never saw
    // added, so the next report measures the file again, while the writer goes on.
    let handle = File::open(&path).unwrap();
    // SAFETY: plain syscall on an fd we own.
    let ret = unsafe { libc::posix_fadvise(handle.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(ret, 0, "fadvise(DONTNEED)");
    let began = Instant::now();
    let mut reports = 0;
    while writer.try_wait().expect("wait for the writer").is_none() {
        tracer.snapshot().expect("snapshot");
        reports += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let writing = began.elapsed();
    assert!(
        reports >= 3,
        "the writer finished after {reports} reports ({writing:?}): nothing was measured while it wrote"
    );
    MemCgroup::settle_stats();

    let report = tracer.snapshot().expect("snapshot");
    let file = FileId::of(&path);
    let census = folio_census(&handle).expect("folio census");
    let one_folio = census.largest_folio_bytes();
    let resident = resident_bytes(&handle).unwrap();
    let traced = cached(&report, cgroup.id, &file);
    eprintln!(
        "{reports} reports over {writing:?} of writing; memtrace {traced} B, mincore {resident} B, largest folio {one_folio} B\n{}",
        describe_file(&report, &file)
    );
    assert!(
        resident > 64 * MIB,
        "the appended pages are cached: {resident} B"
    );
    assert_near("memtrace vs mincore", traced, resident, one_folio);
    let total = cgroup_in(&report, cgroup.id)
        .expect("cgroup in report")
        .cached_bytes;
    assert_near(
        "cgroup total vs memory.stat",
        total,
        cgroup.page_cache_bytes(),
        one_folio,
    );
}
