//! The story memtrace exists for: a JVM in a container logs hundreds of MiB to
//! /tmp/spring.log; only then is memtrace started; `explain` names the log, with its bytes,
//! and accounts for the container's page cache.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use memtrace::{collector::seed::SeedOptions, model::Provenance};
use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    cgroup_in,
    container::OverlayContainer,
    explain_json_over,
    files::{
        cachestat_bytes, cachestat_dirty_bytes, dd_write, one_folio_of, resident_bytes, Scratch,
    },
    memtrace, require_root, start_tracer, MIB,
};
use serde_json::Value;

const LOG_MIB: u64 = 256;

fn java_home() -> PathBuf {
    let java = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v java)\""])
        .output()
        .expect("sh");
    let java = PathBuf::from(String::from_utf8(java.stdout).unwrap().trim());
    assert!(
        java.is_file(),
        "OpenJDK is required for this test (java not found on PATH)"
    );
    java.parent()
        .and_then(Path::parent)
        .expect("JAVA_HOME")
        .to_path_buf()
}

/// Compiles the logger into `dir`.
fn compile_logger(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/SpringLogger.java");
    let javac = java_home().join("bin/javac");
    let status = Command::new(&javac)
        .arg("-d")
        .arg(dir)
        .arg(&source)
        .status()
        .expect("javac");
    assert!(status.success(), "javac failed");
}

fn start_jvm_container(name: &str) -> OverlayContainer {
    let java = java_home().join("bin/java");
    let script = format!(
        "exec {} -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp /app SpringLogger {LOG_MIB}",
        java.display()
    );
    let container = OverlayContainer::start_with(
        name,
        &script,
        |image| {
            let app = image.join("app");
            fs::create_dir_all(&app).unwrap();
            compile_logger(&app);
        },
        &[("/usr", "/usr")],
    );
    container.wait_for("/tmp/done", Duration::from_secs(180));
    container
}

#[test]
fn explain_names_the_spring_log_written_before_memtrace_started() {
    require_root();
    let jvm = start_jvm_container("spring-jvm");
    // Only now does memtrace start: everything the JVM wrote predates it.
    let out = memtrace(&["explain", &jvm.id, "--json", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).expect("explain --json");

    assert_eq!(
        e["target"]["container"]["id"].as_str(),
        Some(jvm.id.as_str())
    );
    let top = &e["files"][0];
    assert_eq!(
        top["path"].as_str(),
        Some("/tmp/spring.log"),
        "spring.log named first: {e:#}"
    );
    let host = jvm.upper_path("/tmp/spring.log");
    assert_eq!(top["host_path"].as_str(), Some(host.to_str().unwrap()));
    assert_eq!(top["provenance"].as_str(), Some("exact"));
    let cached = top["cached_bytes"].as_u64().unwrap();
    // Measured page by page at start (exact), and still: within one of its folios.
    let folio = one_folio_of(&host);
    let kernel = cachestat_bytes(&host);
    assert_near("spring.log vs cachestat", cached, kernel, folio);
    let mincore = resident_bytes(&File::open(&host).unwrap()).unwrap();
    assert_near("spring.log vs mincore", cached, mincore, folio);
    assert!(
        cached >= (LOG_MIB - 8) * MIB,
        "the log is a few hundred MiB: {cached}"
    );
    assert!(
        top["writers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["comm"] == "java"),
        "the JVM is named as the writer: {top}"
    );

    let page_cache = e["memory"]["page_cache_bytes"]
        .as_u64()
        .expect("memory.page_cache_bytes");
    let coverage = e["coverage"].as_f64().expect("coverage");
    eprintln!(
        "explain: spring.log {cached} B (cachestat {kernel} B), page cache {page_cache} B, coverage {coverage:.4}"
    );
    assert!(
        coverage >= 0.95,
        "explain covers {coverage:.3} of the container's page cache: {e:#}"
    );
    assert!(
        coverage <= 1.02,
        "attributed more than the kernel charges: {coverage:.3}"
    );
    assert!(e["verdict"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().contains("/tmp/spring.log")));
    // The JVM holds its log open with O_APPEND: a log, told as one.
    assert!(
        e["verdict"]
            .to_string()
            .contains("Fix: lower the log level"),
        "{:#}",
        e["verdict"]
    );
    for key in [
        "usage_bytes",
        "anon_bytes",
        "working_set_bytes",
        "active_file_bytes",
        "inactive_file_bytes",
    ] {
        assert!(e["memory"][key].is_u64(), "memory.{key}");
    }
}

#[test]
fn traced_growth_after_start_adds_on_top_of_seeded_cache() {
    let mut tracer = start_tracer();
    let jvm_like = OverlayContainer::start(
        "seed-grow",
        "dd if=/dev/zero of=/tmp/app.log bs=1M count=48 2>/dev/null; touch /tmp/done; sleep 600",
    );
    jvm_like.wait_for("/tmp/done", Duration::from_secs(30));
    // Tracing is on, but the 48 MiB predate this collector's first look: only the seed finds it.
    let summary = tracer.seed(&SeedOptions::default());
    assert!(summary.exact, "kpagecgroup must be readable as root");
    jvm_like.exec("dd if=/dev/zero bs=1M count=32 2>/dev/null >> /tmp/app.log");

    let report = tracer.snapshot().unwrap();
    let cg = cgroup_in(&report, jvm_like.cgroup_id()).expect("container cgroup");
    let log = cg
        .files
        .iter()
        .find(|f| f.path.as_deref() == Some("/tmp/app.log"))
        .expect("app.log");
    let host = jvm_like.upper_path("/tmp/app.log");
    assert_near(
        "seeded + traced vs cachestat",
        log.cached_bytes,
        cachestat_bytes(&host),
        2 * MIB,
    );
    assert_near("80 MiB in all", log.cached_bytes, 80 * MIB, 2 * MIB);
    assert_eq!(log.provenance, Provenance::Exact);
    assert!(log.seeded_bytes >= 46 * MIB, "seeded {}", log.seeded_bytes);
}

/// The Docker story of issue 19: a container logged before memtrace started, and explain's
/// verdict said all of it was dirty while its files' dirty column said `?`. Every file explain
/// lists must carry its dirty bytes, bracketed by cachestat's before and after (a file's dirty
/// pages only go, once nothing writes it), on a node whose other files leave no budget to spare.
#[test]
fn explain_shows_the_dirty_bytes_of_every_file_it_lists_written_before_start() {
    require_root();
    let cgroup = MemCgroup::create("explain-dirty");
    let scratch = Scratch::new("explain-dirty");
    let files: Vec<_> = (0..12)
        .map(|at| scratch.path(&format!("app-{at}.log")))
        .collect();
    for (at, path) in files.iter().enumerate() {
        cgroup.run(&mut dd_write(path, 2 + at as u64));
    }
    let Some(before) = files
        .iter()
        .map(|path| cachestat_dirty_bytes(path))
        .collect::<Option<Vec<u64>>>()
    else {
        panic!("this test needs cachestat(2) (Linux 6.5+) for its oracle");
    };
    // Usually still dirty (written back within 30 s); on a node writing much else, background
    // writeback may already have cleaned them: then each must show 0, not `?`.
    eprintln!("dirty bytes by cachestat before explain: {before:?}");
    let explained = explain_json_over(&cgroup.path, "1s");
    let after: Vec<u64> = files
        .iter()
        .map(|path| cachestat_dirty_bytes(path).unwrap())
        .collect();
    let listed = explained["files"].as_array().expect("files");
    for (at, path) in files.iter().enumerate() {
        let file = listed
            .iter()
            .find(|f| f["path"].as_str() == path.to_str())
            .unwrap_or_else(|| panic!("{} listed: {explained:#}", path.display()));
        let dirty = file["dirty_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: dirty bytes measured: {file}", path.display()));
        assert!(
            (after[at]..=before[at]).contains(&dirty),
            "{}: dirty {dirty} B within cachestat's {} B after and {} B before",
            path.display(),
            after[at],
            before[at]
        );
    }
}

#[test]
fn explain_rejects_an_unknown_target_clearly() {
    require_root();
    let out = memtrace(&["explain", "no-such-thing-42"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a pid, a cgroup path or a container running here"),
        "{err}"
    );
}
