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
    start_tracer, KillOnDrop, MIB,
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
    // Whatever else the cgroup had cached before memtrace started (dd's first pages of some
    // file) is no part of this file, and memtrace, not seeding, never saw it.
    MemCgroup::settle_stats();
    let other_before =
        cgroup.page_cache_bytes() - resident_bytes(&File::open(&path).unwrap()).unwrap();
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
        "cgroup total vs memory.stat, less what was cached of other files before start",
        total,
        cgroup.page_cache_bytes() - other_before,
        one_folio,
    );
}

/// The live misattribution as it was found: fresh memcgs each writing and syncing one file of
/// 8–40 MiB in turn under `watch --json --interval 1s`, while a neighbour in another memcg
/// writes and deletes an 8 MiB file in 4 KiB writes in a loop (its inode numbers go straight
/// to the next file created). About one memcg in a hundred ended off by 3–15 MiB, for good.
/// Every memcg must end within one folio of memory.stat; twice the memcgs of the run that
/// found it.
#[test]
fn every_memcg_of_a_live_watch_ends_equal_to_memory_stat_beside_a_churning_neighbour() {
    use std::io::BufRead;
    const MEMCGS: u64 = 320;
    let mib_of = |i: u64| 8 + (i * 7) % 33;
    // Every file is kept to the end: 7.5 GiB in all.
    let scratch = Scratch::with_room("live-memcgs", (0..MEMCGS).map(mib_of).sum::<u64>() * MIB);
    let neighbour = MemCgroup::create("live-neighbour");
    let mut watch = KillOnDrop(
        memtrace_tests::memtrace(&["watch", "--json", "--interval", "1s", "--no-seed"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("memtrace watch"),
    );
    let (reports_tx, reports) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = watch.0.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let report = serde_json::from_str(&line).expect("each line is a JSON report");
            if reports_tx.send(report).is_err() {
                break;
            }
        }
    });
    reports
        .recv_timeout(Duration::from_secs(60))
        .expect("a first report");
    let churn = scratch.path("neighbour.tmp");
    // The loop ends itself if its directory goes (a panic dropped the scratch directory).
    let churner = KillOnDrop(neighbour.spawn(Command::new("sh").arg("-c").arg(format!(
        "while [ -d {1} ]; do dd if=/dev/zero of={0} bs=4k count=2048 status=none; rm -f {0}; done",
        churn.display(),
        scratch.dir.display()
    ))));
    let mut written = Vec::new();
    for i in 0..MEMCGS {
        let cgroup = MemCgroup::create(&format!("live-{i}"));
        let mib = mib_of(i);
        let path = scratch.path(&format!("f{i}"));
        cgroup.run(Command::new("dd").args([
            "if=/dev/zero",
            &format!("of={}", path.display()),
            "bs=1M",
            &format!("count={mib}"),
            "conv=fsync",
            "status=none",
        ]));
        written.push((cgroup, path, mib));
    }
    drop(churner);
    MemCgroup::settle_stats();
    // The kernel's figures before and after a report built in between, until they hold still
    // (something else may reclaim meanwhile): the report is compared with figures it saw.
    let read_kernel = || -> Vec<u64> {
        written
            .iter()
            .map(|(cgroup, ..)| cgroup.page_cache_bytes_now())
            .collect()
    };
    let mut attempt = 0;
    let (kernel, last) = loop {
        attempt += 1;
        let before = read_kernel();
        while reports.try_recv().is_ok() {}
        // The first report to arrive may have been built before the read; the second was not.
        reports
            .recv_timeout(Duration::from_secs(30))
            .expect("a report");
        let last = reports
            .recv_timeout(Duration::from_secs(30))
            .expect("a report");
        if read_kernel() == before || attempt == 5 {
            break (before, last);
        }
        eprintln!("memory.stat changed while the report was built; again");
    };
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(watch.0.id() as i32, libc::SIGTERM) };
    drop(reports);
    watch.0.wait().unwrap();
    let _ = reader.join();

    let cgroup_of = |id: u64| {
        last["cgroups"]
            .as_array()
            .expect("cgroups")
            .iter()
            .find(|c| c["id"].as_u64() == Some(id))
    };
    let mut wrong = Vec::new();
    for ((cgroup, path, mib), kernel) in written.iter().zip(&kernel) {
        let one_folio = folio_census(&File::open(path).unwrap())
            .expect("folio census")
            .largest_folio_bytes();
        let shown = cgroup_of(cgroup.id);
        let got = shown.and_then(|c| c["cached_bytes"].as_u64()).unwrap_or(0);
        if got.abs_diff(*kernel) > one_folio {
            wrong.push(format!(
                "{}: memtrace {:.2} MiB, memory.stat {:.2} MiB ({mib} MiB written, folios up to {one_folio} B, mincore {} B)\n  {}",
                cgroup.path,
                got as f64 / MIB as f64,
                *kernel as f64 / MIB as f64,
                resident_bytes(&File::open(path).unwrap()).unwrap(),
                shown.map_or("not in the report".to_owned(), |c| c.to_string())
            ));
        }
    }
    eprintln!("kernel stats: {}", last["stats"]);
    assert!(
        wrong.is_empty(),
        "{} of {MEMCGS} memcgs disagree with memory.stat:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
