//! Cache hits per file: counted only when asked (`--count-hits`) and where the kernel allows
//! fentry on `folio_mark_accessed`, and said to be uncounted otherwise. Attaching it under
//! load crashed emulated test VMs (see docs/how-it-works.md), so it is off by default and the
//! guests do not run it; this host refuses fentry, and memtrace must say so.

use std::{fs::File, process::Command, thread, time::Duration};

use memtrace_tests::{
    cgroup::MemCgroup,
    files::{make_uncached_file, resident_bytes, FileId, Scratch},
    memtrace, require_root, KillOnDrop, MIB,
};
use serde_json::Value;

const FILE_MIB: u64 = 8;
const READS: u64 = 10;

/// The report's entry for the hit counter's hook; asserts it is not attached and says why.
fn hits_hook_off(report: &Value) -> String {
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
    assert_eq!(hook["attached"], false, "not attached here: {hook}");
    hook["detail"]
        .as_str()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| panic!("a hook not attached says why: {hook}"))
        .to_owned()
}

/// `memtrace run` over ten reads of an uncached file, with `extra` global arguments: the
/// report, and the file's accessed bytes in it.
fn run_reads(extra: &[&str]) -> (Value, u64) {
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
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let accessed = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["files"].as_array().unwrap())
        .filter(|f| f["ino"] == id.ino && f["dev"] == id.dev.as_str())
        .map(|f| f["accessed_bytes"].as_u64().expect("accessed_bytes"))
        .sum();
    (report, accessed)
}

#[test]
fn hits_are_off_unless_asked_and_the_report_says_so() {
    require_root();
    let (report, accessed) = run_reads(&[]);
    let why = hits_hook_off(&report);
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
fn asked_for_on_a_kernel_that_refuses_fentry_hits_are_said_to_be_uncounted() {
    require_root();
    let (report, accessed) = run_reads(&["--count-hits"]);
    // This host refuses fentry (vfs_write's fexit is refused too): the kernel's refusal is
    // the reason given.
    let why = hits_hook_off(&report);
    assert!(
        why.contains("refused"),
        "the reason is the kernel's refusal: {why}"
    );
    assert_eq!(
        accessed, 0,
        "nothing counted where the hook is not attached"
    );
}

#[test]
fn explain_says_hits_are_not_counted() {
    require_root();
    let cgroup = MemCgroup::create("hits-explain");
    let scratch = Scratch::new("hits-explain");
    let path = scratch.path("hot.dat");
    make_uncached_file(&path, FILE_MIB);
    let reads = format!("while true; do cat {} > /dev/null; done", path.display());
    let _reader = KillOnDrop(cgroup.spawn(Command::new("sh").args(["-c", &reads])));
    let started = std::time::Instant::now();
    while resident_bytes(&File::open(&path).unwrap()).unwrap() < FILE_MIB * MIB {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the reader never read the file"
        );
        thread::sleep(Duration::from_millis(50));
    }
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
}
