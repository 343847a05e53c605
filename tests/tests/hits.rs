//! Cache hits per file: counted only when asked (`--count-hits`) and where the kernel allows
//! fentry on `folio_mark_accessed` (the test VMs), and said to be uncounted otherwise (this
//! host refuses fentry). The oracle is the workload: an uncached file read a known number of
//! times, and a cached file read over and over.
//!
//! Attaching the hook while readers ran crashed emulated guests (see docs/how-it-works.md), so
//! it is opt-in, and these tests attach it with no reader running: `run` attaches before its
//! command starts, and the explain test starts its reader once memtrace says the hook is on and
//! its window open, and stops it before the window ends.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use memtrace_tests::{
    cgroup::MemCgroup,
    files::{make_uncached_file, resident_bytes, FileId, Scratch},
    in_test_vm, memtrace, require_root, KillOnDrop, MIB,
};
use serde_json::Value;

const FILE_MIB: u64 = 8;
const READS: u64 = 10;

/// The report's entry for the hit counter's hook: whether it is attached, and if not, why.
fn hits_hook(report: &Value) -> (bool, String) {
    let hook = report["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .find(|h| h["name"] == "folio_mark_accessed")
        .unwrap_or_else(|| {
            panic!(
                "the report lists the hit counter's hook: {}",
                report["hooks"]
            )
        });
    let attached = hook["attached"].as_bool().expect("attached");
    let why = hook["detail"].as_str().unwrap_or_default().to_owned();
    if !attached {
        assert!(!why.is_empty(), "a hook not attached says why: {hook}");
    }
    (attached, why)
}

/// `memtrace run` over ten reads of an uncached file, with `extra` global arguments: the
/// report, and the file's accessed and added bytes in it.
fn run_reads(extra: &[&str]) -> (Value, u64, u64) {
    let scratch = Scratch::new("hits-run");
    let path = scratch.path("read-ten-times.dat");
    make_uncached_file(&path, FILE_MIB);
    let id = FileId::of(&path);
    let reads = format!(
        "for i in $(seq {READS}); do cat {} > /dev/null; done",
        path.display()
    );
    let out = memtrace(extra)
        .args(["run", "--json", "--", "sh", "-c", &reads])
        .output()
        .expect("memtrace run");
    assert!(
        out.status.success(),
        "memtrace run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let files: Vec<&Value> = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["files"].as_array().unwrap())
        .filter(|f| f["ino"] == id.ino && f["dev"] == id.dev.as_str())
        .collect();
    let sum = |field: &str| -> u64 {
        files
            .iter()
            .map(|f| f[field].as_u64().unwrap_or_else(|| panic!("{field}: {f}")))
            .sum()
    };
    let (accessed, added) = (sum("accessed_bytes"), sum("added_bytes"));
    (report, accessed, added)
}

#[test]
fn hits_are_off_unless_asked_and_the_report_says_so() {
    require_root();
    let (report, accessed, _) = run_reads(&[]);
    let (attached, why) = hits_hook(&report);
    assert!(!attached, "off unless asked");
    assert!(
        why.contains("--count-hits"),
        "the reason names the flag: {why}"
    );
    assert_eq!(
        accessed, 0,
        "nothing counted where the hook is not attached"
    );
}

#[test]
fn asked_for_hits_count_every_page_a_repeated_read_touches_or_are_said_refused() {
    require_root();
    let (report, accessed, added) = run_reads(&["--count-hits"]);
    let (attached, why) = hits_hook(&report);
    if !in_test_vm() {
        // This host refuses fentry (vfs_write's fexit is refused too): the kernel's refusal
        // is the reason given, and nothing is counted.
        assert!(!attached, "this host refuses fentry");
        assert!(
            why.contains("refused"),
            "the reason is the kernel's refusal: {why}"
        );
        assert_eq!(
            accessed, 0,
            "nothing counted where the hook is not attached"
        );
        return;
    }
    assert!(attached, "the test VMs allow fentry: {why}");
    let size = FILE_MIB * MIB;
    eprintln!("accessed {accessed} B, added {added} B of a {size} B file read {READS} times");
    // The first read brought the file in (added, and touched); every read touched it all.
    assert!(
        added.abs_diff(size) <= size / 50,
        "the first read added the file: {added} B of {size}"
    );
    let expected = READS * size;
    assert!(
        accessed.abs_diff(expected) <= expected / 50,
        "{READS} reads of {FILE_MIB} MiB touched {accessed} B, expected {expected} (± 2%)"
    );
    let hits = (accessed - added.min(accessed)) as f64 / accessed as f64;
    assert!(
        (hits - 0.9).abs() <= 0.02,
        "nine reads of ten hit the cache: hit ratio {hits:.3}"
    );
}

/// Waits until a `memtrace -v explain` child's log says the hit counter's hook is attached
/// and the window is open (false if it says the hook is not attached, or the child ends); the
/// log is drained to its end on a thread of its own.
fn wait_for_hits_and_window(child: &mut std::process::Child) -> bool {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut attached = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("memtrace: {line}");
            if line.contains("hook folio_mark_accessed attached") {
                attached = true;
            } else if line.contains("hook folio_mark_accessed not attached") {
                let _ = tx.send(false);
            } else if line.contains("explain: watching") {
                let _ = tx.send(attached);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120)).unwrap_or(false)
}

#[test]
fn explain_shows_the_hit_ratio_of_a_file_read_over_and_over_or_says_it_is_not_counted() {
    require_root();
    let cgroup = MemCgroup::create("hits-explain");
    let scratch = Scratch::new("hits-explain");
    let path = scratch.path("hot.dat");
    make_uncached_file(&path, FILE_MIB);
    // Read once, before memtrace starts: every read in the window finds the file cached.
    cgroup.run(Command::new("cat").arg(&path).stdout(Stdio::null()));
    assert_eq!(
        resident_bytes(&File::open(&path).unwrap()).unwrap(),
        FILE_MIB * MIB,
        "the file is cached"
    );
    if !in_test_vm() {
        let out = memtrace(&["explain", &cgroup.path, "--json", "--duration", "1s"])
            .output()
            .expect("explain");
        assert!(out.status.success());
        let explained: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(explained["hits_counted"], false, "{explained}");
        assert!(explained["hit_ratio"].is_null(), "{explained}");
        let text = memtrace(&["explain", &cgroup.path, "--duration", "200ms"])
            .output()
            .expect("explain");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("cache hits: not counted"),
            "explain says hits are not counted:\n{text}"
        );
        return;
    }
    // The reader runs for 3 s of explain's 8 s window, started once the hook is on and the
    // window open (hit ratios are over the window): nothing reads while the hook is attached
    // or detached.
    let mut explain = memtrace(&[
        "-v",
        "--count-hits",
        "explain",
        &cgroup.path,
        "--json",
        "--duration",
        "8s",
        "--top",
        "50",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("memtrace explain");
    assert!(
        wait_for_hits_and_window(&mut explain),
        "the test VMs allow fentry: the hit counter attaches (and explain's window opens)"
    );
    let reads = format!(
        "end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do cat {} > /dev/null; done",
        path.display()
    );
    let started = Instant::now();
    let reader = KillOnDrop(cgroup.spawn(Command::new("sh").args(["-c", &reads])));
    let explained = {
        let output = explain.wait_with_output().expect("explain");
        assert!(
            output.status.success(),
            "explain exited with {}",
            output.status
        );
        serde_json::from_slice::<Value>(&output.stdout).expect("explain --json is JSON")
    };
    drop(reader);
    eprintln!(
        "reads ran {:?} of the window",
        started.elapsed().min(Duration::from_secs(3))
    );
    assert_eq!(explained["hits_counted"], true, "the test VMs allow fentry");
    let file = explained["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("explain lists the file: {explained}"))
        .clone();
    for (what, ratio) in [
        ("the file's", &file["hit_ratio"]),
        ("the cgroup's", &explained["hit_ratio"]),
    ] {
        let ratio = ratio
            .as_f64()
            .unwrap_or_else(|| panic!("{what} hit ratio: {explained}"));
        assert!(
            ratio >= 0.99,
            "{what} hit ratio over a window of cached re-reads is {ratio}"
        );
    }
}
