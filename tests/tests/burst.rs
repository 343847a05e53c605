//! A burst of more new files between two reports than the (memcg, file) map holds (an image
//! layer unpacked, a `git checkout`): the map is drained early while it fills, and what still
//! finds it full is counted for its memcg alone, so the cgroup's total stays equal to
//! memory.stat and the report says how much detail went to the overflow.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use memtrace_tests::{cgroup::MemCgroup, files::Scratch, memtrace};
use serde_json::Value;

const BURST: &str = env!("CARGO_BIN_EXE_file-burst");

/// One burst at a time. Run together, one test's burst (and the reclaim of its limited cgroup)
/// reaches the others' tracers, and the taken-in test twice read 8-17% below memory.stat that
/// way, a defect not yet found (docs/troubleshooting.md); each test here judges one burst.
static ONE_BURST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the suite to one burst at a time (a test that failed holding it does not stop the rest).
fn one_burst_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_BURST_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `memtrace ARGS` with its reports read as they come, on a thread of their own.
struct Watching {
    child: std::process::Child,
    reports: std::sync::mpsc::Receiver<Value>,
}

impl Watching {
    fn start(args: &[&str], stderr: Stdio) -> Self {
        let mut child = memtrace(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("memtrace watch");
        let (sender, reports) = std::sync::mpsc::channel::<Value>();
        let stdout = child.stdout.take().unwrap();
        // Ends with memtrace's output.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let report = serde_json::from_str(&line).expect("each line is a JSON report");
                if sender.send(report).is_err() {
                    break;
                }
            }
        });
        Self { child, reports }
    }

    /// The next report, waiting up to a minute.
    fn next(&self) -> Value {
        self.reports
            .recv_timeout(Duration::from_secs(60))
            .expect("a report")
    }

    /// Skips the reports already sent: the next one is built after now or being built.
    fn skip_sent(&self) {
        while self.reports.try_recv().is_ok() {}
    }

    /// Ends memtrace (SIGTERM: its clean end) and waits for it.
    fn stop(self) {
        drop(self);
    }
}

/// A test that ends early must not leave memtrace tracing under the tests that follow.
impl Drop for Watching {
    fn drop(&mut self) {
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `files` new files of 4 KiB made in `cgroup` under `dir` as fast as one process can, and
/// memory.stat's batching waited out.
fn burst(cgroup: &MemCgroup, dir: &Path, files: usize) {
    cgroup.run(
        Command::new(BURST)
            .arg(dir)
            .arg(files.to_string())
            .arg("4096"),
    );
    MemCgroup::settle_stats();
}

/// A burst of `files` in `cgroup` under `watch --json` with a 4096-entry map: memory.stat's
/// page cache after it, and the first report built wholly after that read.
fn burst_through_4096_entries(cgroup: &MemCgroup, dir: &Path, files: usize) -> (u64, Value) {
    let watch = Watching::start(
        &[
            "--max-entries",
            "4096",
            "watch",
            "--json",
            "--interval",
            "1s",
            "--no-seed",
        ],
        Stdio::inherit(),
    );
    watch.next();
    burst(cgroup, dir, files);
    let kernel = cgroup.page_cache_bytes();
    // The first report after the read may have been built before it; the second was not.
    watch.skip_sent();
    watch.next();
    let last = watch.next();
    watch.stop();
    (kernel, last)
}

/// The test's cgroup in a JSON report.
fn reported<'a>(report: &'a Value, cgroup: &MemCgroup) -> &'a Value {
    report["cgroups"]
        .as_array()
        .expect("cgroups")
        .iter()
        .find(|c| c["id"].as_u64() == Some(cgroup.id))
        .expect("the cgroup is reported")
}

fn burst_through_a_small_map(files: usize) {
    let _alone = one_burst_at_a_time();
    // A page of data and about as much again of inode and directory entry a file.
    let scratch = Scratch::with_room(&format!("burst-{files}"), files as u64 * 8192);
    let cgroup = MemCgroup::create(&format!("burst-{files}"));
    let (kernel, last) = burst_through_4096_entries(&cgroup, &scratch.dir, files);
    let stats = &last["stats"];
    let cgroup_seen = reported(&last, &cgroup);
    let traced = cgroup_seen["cached_bytes"].as_u64().unwrap();
    eprintln!("{files} files: memory.stat {kernel} B, memtrace {traced} B; stats {stats}");
    // Reclaim may take some of it meanwhile (its removals find the map full too): the oracle
    // is what memory.stat holds, whatever that is.
    assert!(
        kernel >= 4096 * 4096,
        "the kernel charged only {kernel} B for {files} files of 4 KiB"
    );
    let tolerance = (kernel / 500).max(256 * 1024);
    assert!(
        traced.abs_diff(kernel) <= tolerance,
        "{files} files through a 4096-entry map: memtrace {traced} B vs memory.stat {kernel} B (± {tolerance})"
    );
    assert_eq!(stats["map_full"], 0, "no page lost: {stats}");
    assert!(
        stats["early_flips"].as_u64().unwrap() > 0,
        "{files} new keys through 4096 entries: the map is drained early: {stats}"
    );
    // Whatever still found the map full is counted for the cgroup, shown as one entry.
    let overflow_runs = stats["overflow_runs"].as_u64().expect("overflow_runs");
    let overflow = cgroup_seen["files"].as_array().unwrap().iter().find(|f| {
        f["path"]
            .as_str()
            .is_some_and(|p| p.contains("not tracked one by one"))
    });
    if overflow_runs == 0 {
        assert!(overflow.is_none(), "{cgroup_seen}");
    }
}

#[test]
fn forty_thousand_new_files_in_one_burst_through_a_4096_entry_map_lose_no_page() {
    burst_through_a_small_map(40_000);
}

#[test]
fn four_hundred_thousand_new_files_in_one_burst_through_a_4096_entry_map_lose_no_page() {
    burst_through_a_small_map(400_000);
}

/// A burst through a full map into a cgroup whose limit makes the kernel reclaim as it goes:
/// removals of files whose additions the map had room for find it full and land in the
/// cgroup's overflow, and removals of files whose additions it had no room for land in their
/// own keys. Each must be matched once: the cgroup's total ends equal to memory.stat. (It read
/// 4-13% high: such a file was measured instead, and its page stayed in the overflow.)
#[test]
fn a_burst_through_a_full_map_into_a_cgroup_under_reclaim_ends_equal_to_memory_stat() {
    let _alone = one_burst_at_a_time();
    const FILES: usize = 100_000;
    let scratch = Scratch::with_room("burst-reclaimed", FILES as u64 * 8192);
    let cgroup = MemCgroup::create("burst-reclaimed");
    cgroup.set_limit(200 << 20);
    let (kernel, last) = burst_through_4096_entries(&cgroup, &scratch.dir, FILES);
    let stats = &last["stats"];
    let traced = reported(&last, &cgroup)["cached_bytes"].as_u64().unwrap();
    eprintln!("{FILES} files under a 200 MiB limit: memory.stat {kernel} B, memtrace {traced} B; stats {stats}");
    assert!(
        kernel < (FILES as u64 * 4096) / 2,
        "the limit made the kernel reclaim most of the burst: {kernel} B still cached"
    );
    assert!(
        stats["overflow_runs"].as_u64().unwrap() > 0,
        "the 4096-entry map filled: {stats}"
    );
    assert_eq!(stats["map_full"], 0, "no page lost: {stats}");
    let tolerance = (kernel / 500).max(256 * 1024);
    assert!(
        traced.abs_diff(kernel) <= tolerance,
        "memtrace {traced} B vs memory.stat {kernel} B (± {tolerance})"
    );
}

/// A burst of new files is taken in between reports, a part every 200 ms, and its files named
/// then, so the report that follows has little left to do. What is taken in early must be
/// counted once and named as the filesystem names it: the cgroup's total against memory.stat,
/// each file's path and inode against `stat`.
#[test]
fn a_burst_taken_in_between_reports_is_counted_once_and_named_as_the_filesystem_names_it() {
    let _alone = one_burst_at_a_time();
    const FILES: usize = 40_000;
    let scratch = Scratch::new("burst-taken-in");
    let cgroup = MemCgroup::create("burst-taken-in");
    let mut watch = Watching::start(
        &["-vv", "watch", "--json", "--interval", "6s", "--no-seed"],
        Stdio::piped(),
    );
    // Files drained early, as memtrace logs them at -vv: proof the burst took that path.
    let stderr = watch.child.stderr.take().unwrap();
    let taken_in = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let (_, rest) = line.split_once("burst: ")?;
                rest.split_once(" files drained early")?
                    .0
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    });
    watch.next();
    burst(&cgroup, &scratch.dir, FILES);
    watch.skip_sent();
    let last = watch.next();
    let kernel = cgroup.page_cache_bytes();
    watch.stop();
    let taken_in = taken_in.join().expect("the log reader");

    let cgroup_seen = reported(&last, &cgroup);
    let traced = cgroup_seen["cached_bytes"].as_u64().unwrap();
    eprintln!(
        "{FILES} files: {taken_in} taken in early; memory.stat {kernel} B, memtrace {traced} B; stats {}",
        last["stats"]
    );
    // Each 200 ms check drains the half filled before it: all but the burst's last half
    // second or so is taken in early.
    assert!(
        taken_in >= (FILES / 8) as u64,
        "a burst of {FILES} new files at a report every 6 s is taken in between reports: \
         {taken_in} were"
    );
    let tolerance = (kernel / 500).max(256 * 1024);
    assert!(
        traced.abs_diff(kernel) <= tolerance,
        "memtrace {traced} B vs memory.stat {kernel} B (± {tolerance}): counted once"
    );
    let mut named = 0;
    for file in cgroup_seen["files"].as_array().unwrap() {
        if file["cached_bytes"].as_u64() == Some(0) {
            continue;
        }
        let path = file["path"]
            .as_str()
            .unwrap_or_else(|| panic!("unnamed: {file}"));
        // The filesystem's own cache the burst charged, which memtrace describes in brackets:
        // its blocks (directories, inode tables) and its internal inodes, which no directory
        // entry names.
        if path.starts_with("[metadata of block device ")
            || (path.starts_with("[inode ")
                && path.ends_with("no directory entry in the kernel's cache]"))
        {
            continue;
        }
        assert!(
            Path::new(path).starts_with(&scratch.dir),
            "only the burst's files are in its cgroup: {file}"
        );
        let meta = std::fs::symlink_metadata(path)
            .unwrap_or_else(|err| panic!("{path} as memtrace named it: {err}"));
        assert_eq!(
            Some(std::os::unix::fs::MetadataExt::ino(&meta)),
            file["ino"].as_u64(),
            "{path} is another file than memtrace's: {file}"
        );
        named += 1;
    }
    assert!(
        named >= FILES * 95 / 100,
        "{named} of {FILES} files named (reclaim may take a few)"
    );
}
