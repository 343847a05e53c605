//! Cache hits per file, counted where the kernel allows fentry on `folio_mark_accessed` (the
//! test VMs), and said to be uncounted where it does not (this host, which refuses fentry).
//! The oracle is the workload: an uncached file read a known number of times.

use std::{fs::File, process::Command, thread, time::Duration};

use memtrace_tests::{
    cgroup::MemCgroup,
    explain_json_over,
    files::{make_uncached_file, resident_bytes, FileId, Scratch},
    in_test_vm, memtrace, require_root, KillOnDrop, MIB,
};
use serde_json::Value;

const FILE_MIB: u64 = 8;
const READS: u64 = 10;

/// Whether the report's hooks say the hit counter is attached; when it is not, the hook says
/// why.
fn hits_hook(report: &Value) -> bool {
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
    if !attached {
        assert!(
            hook["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "a hook not attached says why: {hook}"
        );
    }
    attached
}

#[test]
fn run_counts_every_page_a_repeated_read_touches() {
    require_root();
    let scratch = Scratch::new("hits-run");
    let path = scratch.path("read-ten-times.dat");
    make_uncached_file(&path, FILE_MIB);
    let id = FileId::of(&path);
    let reads = format!(
        "for i in $(seq {READS}); do cat {} > /dev/null; done",
        path.display()
    );
    let out = memtrace(&["run", "--json", "--", "sh", "-c", &reads])
        .output()
        .expect("memtrace run");
    assert!(
        out.status.success(),
        "{}",
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
    let sum = |field: &str| -> u64 { files.iter().map(|f| f[field].as_u64().unwrap()).sum() };
    let (accessed, added) = (sum("accessed_bytes"), sum("added_bytes"));
    let size = FILE_MIB * MIB;
    let resident = resident_bytes(&File::open(&path).unwrap()).unwrap();
    eprintln!("accessed {accessed} B, added {added} B, resident {resident} B");
    if !in_test_vm() {
        assert!(
            !hits_hook(&report),
            "this host refuses fentry: the hit counter cannot be attached here"
        );
        assert_eq!(
            accessed, 0,
            "nothing counted where the hook is not attached"
        );
        return;
    }
    assert!(hits_hook(&report), "the test VMs allow fentry");
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

#[test]
fn explain_shows_the_hit_ratio_of_a_file_read_over_and_over_or_says_it_is_not_counted() {
    require_root();
    let cgroup = MemCgroup::create("hits-explain");
    let scratch = Scratch::new("hits-explain");
    let path = scratch.path("hot.dat");
    make_uncached_file(&path, FILE_MIB);
    // Read once (a miss), then over and over all through the window: every read after the
    // first finds the whole file cached.
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
    let explained = explain_json_over(&cgroup.path, "2s");
    let file = explained["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("explain lists the file: {explained}"))
        .clone();
    if !in_test_vm() {
        assert_eq!(explained["hits_counted"], false, "this host refuses fentry");
        assert!(explained["hit_ratio"].is_null(), "{explained}");
        assert!(file["hit_ratio"].is_null(), "{file}");
        let text = memtrace(&["explain", &cgroup.path, "--duration", "200ms"])
            .output()
            .expect("explain");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("cache hits: not counted on this kernel"),
            "explain says hits are not counted:\n{text}"
        );
        return;
    }
    assert_eq!(explained["hits_counted"], true, "the test VMs allow fentry");
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
