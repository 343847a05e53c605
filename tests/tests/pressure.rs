//! Is the cache a problem: `explain` against the kernel's own view of a cgroup under pressure.
//! A reader cycling through a file twice its memory limit is told the cache is crowding it,
//! with a re-read rate that agrees with memory.stat's `workingset_refault_file` over the same
//! window; a tmpfs filled close to the limit is told an OOM kill is ahead.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memtrace_tests::{
    cgroup::MemCgroup,
    explain_json_over,
    files::{make_uncached_file, resident_bytes, Scratch},
    memtrace, memtrace_bin,
    tmux::Tmux,
    KillOnDrop, MIB,
};
use serde_json::Value;

/// `memtrace explain TARGET --json` watching for `seconds`.
fn explain_over(target: &str, seconds: u64) -> Value {
    explain_json_over(target, &format!("{seconds}s"))
}

fn refaulted_bytes(cgroup: &MemCgroup) -> u64 {
    // Counted in pages; read raw, as the counters move all the time here.
    cgroup
        .memory_stat_once()
        .get("workingset_refault_file")
        .copied()
        .expect("memory.stat has workingset_refault_file (Linux 5.9+)")
        * 4096
}

#[test]
fn a_reader_thrashing_a_file_twice_its_limit_is_told_the_cache_crowds_it() {
    let scratch = Scratch::new("pressure");
    let data = scratch.path("dataset.bin");
    make_uncached_file(&data, 128);
    let cgroup = MemCgroup::create("thrash");
    cgroup.set_limit(64 * MIB);
    let _reader = KillOnDrop(cgroup.spawn(Command::new("sh").args([
        "-c",
        &format!("while :; do cat {} > /dev/null; done", data.display()),
    ])));
    // Past the first pass, every pass reads what the last one evicted.
    thread::sleep(Duration::from_secs(3));
    // The reader thrashes all through explain, its start included: the census counts a file
    // whose pages come and go under it within what moved during one walk of it.
    let (refaults_before, began) = (refaulted_bytes(&cgroup), Instant::now());
    let explain = memtrace(&["explain", &cgroup.path, "--json", "--duration", "4s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run memtrace explain");
    let out = explain.wait_with_output().expect("explain");
    assert!(out.status.success(), "explain exited with {}", out.status);
    let e: Value = serde_json::from_slice(&out.stdout).expect("explain --json is JSON");
    let kernel_rate =
        (refaulted_bytes(&cgroup) - refaults_before) as f64 / began.elapsed().as_secs_f64();

    assert_eq!(e["state"], "crowding", "{:#}", e["verdict"]);
    // The cache that predates explain was found though it never held still: what memtrace
    // attributes is memory.stat's, within the churn between the two readings.
    let coverage = e["coverage"].as_f64().expect("coverage");
    assert!(
        (0.8..=1.2).contains(&coverage),
        "a thrashed file's cache attributed {coverage:.3} of memory.stat"
    );
    let top = &e["files"][0];
    assert_eq!(top["path"], data.to_str().unwrap(), "{:#}", e["files"]);
    let reread = top["reread_bytes_per_second"].as_f64().unwrap();
    eprintln!(
        "re-read {:.1} MiB/s by memtrace, refaults {:.1} MiB/s by memory.stat over the same window",
        reread / MIB as f64,
        kernel_rate / MIB as f64
    );
    assert!(
        kernel_rate > MIB as f64,
        "the reader did not thrash: {kernel_rate} B/s"
    );
    // Two views of one churn: memtrace's pages added back while others left (over explain's
    // window), the kernel's refaults (over a window that brackets it). They agree within a
    // factor of two.
    let ratio = reread / kernel_rate;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "re-read {reread} B/s vs refaults {kernel_rate} B/s: ratio {ratio:.2}"
    );
    let verdict = e["verdict"].to_string();
    assert!(verdict.contains("Verdict: crowding"), "{verdict}");
    assert!(verdict.contains("working set does not fit"), "{verdict}");
    assert!(!verdict.contains("log level"), "{verdict}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Self {
        std::fs::create_dir_all(at).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=128m", "memtrace-test"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// 59 MiB of tmpfs written by a cgroup limited to 64 MiB: memory reclaim cannot free it.
fn tmpfs_filled_close_to_its_limit(name: &str) -> (Scratch, Tmpfs, MemCgroup, PathBuf) {
    let scratch = Scratch::new(name);
    let tmpfs = Tmpfs::mount(&scratch.path("shm"));
    let fill = tmpfs.0.join("fill.bin");
    let cgroup = MemCgroup::create(name);
    cgroup.set_limit(64 * MIB);
    cgroup.run(Command::new("dd").args([
        "if=/dev/zero",
        &format!("of={}", fill.display()),
        "bs=1M",
        "count=59",
        "status=none",
    ]));
    let resident = resident_bytes(&File::open(&fill).unwrap()).unwrap();
    assert_eq!(resident, 59 * MIB, "the tmpfs file is all in memory");
    (scratch, tmpfs, cgroup, fill)
}

#[test]
fn a_tmpfs_filled_close_to_the_limit_is_told_an_oom_kill_is_ahead() {
    let (_scratch, tmpfs, cgroup, fill) = tmpfs_filled_close_to_its_limit("tmpfs-fill");
    let e = explain_over(&cgroup.path, 1);
    let shmem = e["memory"]["shmem_bytes"].as_u64().unwrap();
    assert!(shmem >= 59 * MIB, "memory.stat shmem {shmem}");
    assert_eq!(e["memory"]["pressure"]["limit_bytes"], 64 * MIB);
    assert_eq!(e["state"], "risk", "{:#}", e["verdict"]);
    let verdict = e["verdict"].to_string();
    assert!(verdict.contains("an OOM kill is ahead"), "{verdict}");
    assert_eq!(
        e["files"][0]["path"],
        fill.to_str().unwrap(),
        "{:#}",
        e["files"]
    );
    drop(tmpfs);
}

/// `top` judges the cgroups on screen as explain does: the filled cgroup's row says `risk`.
#[test]
fn top_marks_a_tmpfs_filled_close_to_its_limit_as_a_risk() {
    let (_scratch, tmpfs, cgroup, _fill) = tmpfs_filled_close_to_its_limit("top-judged");
    let tmux = Tmux::start(
        "top-judged",
        &format!(
            "{} top --no-seed --interval 500ms; echo EXIT=$?; sleep 60",
            memtrace_bin().display()
        ),
    );
    tmux.wait_for("the view", |s| {
        s.contains("memtrace top") && s.contains("CGROUP")
    });
    let leaf = cgroup.path.rsplit('/').next().unwrap().to_owned();
    tmux.run(&["send-keys", "-t", "top", "/"]);
    tmux.run(&["send-keys", "-t", "top", "-l", &leaf]);
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let screen = tmux.wait_for("the filled cgroup judged", |s| {
        s.lines()
            .any(|l| l.contains(&leaf) && l.split_whitespace().any(|field| field == "risk"))
    });
    let row = screen
        .lines()
        .find(|l| l.contains(&leaf))
        .unwrap_or_default();
    assert!(
        !row.contains("harmless") && !row.contains("crowding"),
        "one state a row: {row}"
    );
    tmux.run(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for("the exit", |s| s.contains("EXIT=0"));
    drop(tmpfs);
}
