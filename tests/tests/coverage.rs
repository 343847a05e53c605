//! Complete coverage from the start: an ordinary cgroup whose page cache is in files it read
//! and closed, in a directory no scan walks (not /tmp, not /var), all before memtrace
//! started. `explain`, `watch`, `serve` and `top` each attribute at least 97% of the cgroup's
//! memory.stat page cache to named files, and each file its cachestat bytes.
//!
//! Host only: the guest's root is an initramfs, so it has no disk directory outside /var.

use std::{
    fs::{self, File},
    io::Write,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memtrace_tests::{
    cgroup::MemCgroup,
    explain_json,
    files::{cachestat_bytes, dd_write, drop_cache, one_folio_of},
    http::{get, series_value},
    memtrace, memtrace_bin, require_root,
    serve::Serve,
    tmux::Tmux,
    MIB,
};
use serde_json::Value;

/// Share of memory.stat's page cache each view must attribute to named files.
const GOAL: f64 = 0.97;
/// Files the cgroup reads and closes: 1 to 4 MiB each, 100 MiB in all.
const READ_FILES: u64 = 40;

/// A directory outside everything a walk of directories would cover, removed when dropped.
struct Outside {
    dir: PathBuf,
}

impl Outside {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/srv/memtrace-coverage/{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A cgroup holding about 116 MiB of page cache: files written by the test, dropped from the
/// cache, then read whole and closed by a process in the cgroup; and one file the cgroup wrote
/// itself and closed. Nothing holds any of them open.
struct ReadAndClosed {
    cgroup: MemCgroup,
    outside: Outside,
    files: Vec<PathBuf>,
}

impl ReadAndClosed {
    fn new(name: &str) -> Self {
        require_root();
        let cgroup = MemCgroup::create(name);
        let outside = Outside::new(name);
        let mut files = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..READ_FILES {
            let path = outside.dir.join(format!("table-{i:02}.dat"));
            let mut bytes = vec![0u8; ((1 + i % 4) * MIB) as usize];
            for chunk in bytes.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            let mut file = File::create(&path).unwrap();
            file.write_all(&bytes).unwrap();
            file.sync_all().unwrap();
            drop_cache(&file).unwrap();
            files.push(path);
        }
        let mut read = Command::new("sh");
        read.arg("-c").arg(format!(
            "cat {}/table-*.dat > /dev/null",
            outside.dir.display()
        ));
        cgroup.run(&mut read);
        let written = outside.dir.join("written.log");
        cgroup.run(dd_write(&written, 16).arg("conv=fsync"));
        files.push(written);
        let charged = cgroup.page_cache_bytes();
        assert!(
            charged >= 110 * MIB,
            "memory.stat charged {charged} B to the cgroup for 116 MiB read and written"
        );
        Self {
            cgroup,
            outside,
            files,
        }
    }

    /// Asserts `attributed` is at least `GOAL` of memory.stat's page cache, read right after.
    fn assert_covered(&self, view: &str, attributed: u64) {
        let kernel = self.cgroup.page_cache_bytes();
        let share = attributed as f64 / kernel as f64;
        assert!(
            share >= GOAL,
            "{view}: {:.1} of memory.stat's {:.1} MiB attributed ({:.1}%, goal {:.0}%)",
            attributed as f64 / MIB as f64,
            kernel as f64 / MIB as f64,
            share * 100.0,
            GOAL * 100.0
        );
    }

    /// Asserts every file shows its cachestat bytes (to one folio) in `shown(path)`.
    fn assert_files(&self, view: &str, shown: impl Fn(&str) -> Option<u64>) {
        for path in &self.files {
            let name = path.to_str().unwrap();
            let bytes = shown(name).unwrap_or_else(|| panic!("{view}: {name} is not shown"));
            let expected = cachestat_bytes(path);
            let folio = one_folio_of(path);
            assert!(
                bytes.abs_diff(expected) <= folio,
                "{view}: {name} shows {bytes} B, cachestat {expected} B (± {folio})"
            );
        }
    }
}

#[test]
fn explain_attributes_cache_of_files_read_and_closed_before_start() {
    let setup = ReadAndClosed::new("coverage-explain");
    let explained = explain_json(&setup.cgroup.path);
    let attributed = explained["attributed_bytes"]
        .as_u64()
        .expect("attributed_bytes");
    setup.assert_covered("explain", attributed);
    let files = explained["files"].as_array().expect("files");
    setup.assert_files("explain", |name| {
        files
            .iter()
            .find(|f| f["path"] == name)
            .and_then(|f| f["cached_bytes"].as_u64())
    });
    assert!(
        explained["seed"]["exact"] == true,
        "the cache found at start is exact: {}",
        explained["seed"]
    );
    drop(setup.outside);
}

#[test]
fn watch_attributes_cache_of_files_read_and_closed_before_start() {
    let setup = ReadAndClosed::new("coverage-watch");
    let out = memtrace(&[
        "watch",
        "--json",
        "--count",
        "1",
        "--cgroup",
        &setup.cgroup.path,
    ])
    .output()
    .expect("run memtrace watch");
    assert!(out.status.success(), "watch: {out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let cgroup = report["cgroups"]
        .as_array()
        .expect("cgroups")
        .iter()
        .find(|c| c["path"] == setup.cgroup.path.as_str())
        .unwrap_or_else(|| panic!("watch reports {}", setup.cgroup.path))
        .clone();
    let attributed = cgroup["cached_bytes"].as_u64().expect("cached_bytes");
    setup.assert_covered("watch", attributed);
    let files = cgroup["files"].as_array().expect("files");
    setup.assert_files("watch", |name| {
        files
            .iter()
            .find(|f| f["path"] == name)
            .and_then(|f| f["cached_bytes"].as_u64())
    });
}

#[test]
fn serve_attributes_cache_of_files_read_and_closed_before_start() {
    let setup = ReadAndClosed::new("coverage-serve");
    let serve = Serve::start(&[]);
    let labels = [("cgroup", setup.cgroup.path.as_str())];
    let started = Instant::now();
    let text = loop {
        if let Some((200, text)) = get(&serve.addr, "/metrics") {
            if series_value(&text, "memtrace_cgroup_page_cache_bytes", &labels).is_some() {
                break text;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "serve never exported the cgroup"
        );
        thread::sleep(Duration::from_millis(250));
    };
    let attributed = series_value(&text, "memtrace_cgroup_page_cache_bytes", &labels)
        .expect("the cgroup's series") as u64;
    setup.assert_covered("serve", attributed);
    let coverage = series_value(&text, "memtrace_cgroup_coverage_ratio", &labels)
        .expect("the cgroup's coverage series");
    assert!(coverage >= GOAL, "serve's coverage ratio {coverage}");
}

#[test]
fn top_attributes_cache_of_files_read_and_closed_before_start() {
    let setup = ReadAndClosed::new("coverage-top");
    let leaf = setup.cgroup.path.rsplit('/').next().unwrap().to_owned();
    let tmux = Tmux::start(
        "coverage-top",
        &format!(
            "{} top --interval 500ms; echo EXIT=$?; sleep 60",
            memtrace_bin().display()
        ),
    );
    // The cgroup's row: its page cache as the first column (`114.6 MiB`).
    let shown_mib = |screen: &str| -> Option<f64> {
        screen
            .lines()
            .filter(|l| l.contains(&leaf))
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let value: f64 = fields.next()?.parse().ok()?;
                (fields.next()? == "MiB").then_some(value)
            })
    };
    tmux.wait_for("the view", |s| s.contains("CGROUP"));
    tmux.run(&["send-keys", "-t", "top", "/"]);
    tmux.run(&["send-keys", "-t", "top", "-l", &leaf]);
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let screen = tmux.wait_for("the cgroup's row", |s| shown_mib(s).is_some());
    let shown = shown_mib(&screen).unwrap();
    // The display rounds to a tenth of a MiB.
    setup.assert_covered("top", ((shown + 0.05) * MIB as f64) as u64);
    tmux.run(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for("the exit", |s| s.contains("EXIT="));
}
