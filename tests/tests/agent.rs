//! The node agent: `memtrace serve` scraped by a real Prometheus, numbers right from the first
//! scrape (cache that predates memtrace included), and files whose old cache leaves measured
//! again. Oracles: memory.stat, cachestat, mincore, and Prometheus's own query API.

use std::{
    fs::{self, File},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    files::cachestat_bytes,
    files::{dd_write, one_folio_of, resident_bytes, FileId, Scratch},
    http::{encode, free_port, get, series_value},
    memtrace, require_root,
    serve::Serve,
    MIB,
};
use serde_json::Value;

#[test]
fn the_first_scrape_includes_cache_that_predates_serve() {
    require_root();
    let cgroup = MemCgroup::create("agent-seed");
    let scratch = Scratch::new("agent-seed");
    let path = scratch.path("before.log");
    cgroup.run(dd_write(&path, 48).arg("conv=fsync"));
    let serve = Serve::start(&[]);
    let text = serve.metrics();
    let bytes = series_value(
        &text,
        "memtrace_file_page_cache_bytes",
        &[("cgroup", &cgroup.path), ("path", path.to_str().unwrap())],
    )
    .unwrap_or_else(|| panic!("the file is in the first scrape:\n{text}"));
    let mincore = resident_bytes(&File::open(&path).unwrap()).unwrap();
    let folio = one_folio_of(&path);
    assert_near("first scrape vs mincore", bytes as u64, mincore, folio);
    assert_near("48 MiB", bytes as u64, 48 * MIB, folio);
}

#[test]
fn a_file_cached_before_run_and_rewritten_during_it_shows_its_true_size() {
    require_root();
    let scratch = Scratch::new("agent-rewrite");
    let path = scratch.path("rewritten.log");
    let status = dd_write(&path, 8).arg("conv=fsync").status().unwrap();
    assert!(status.success());
    let id = FileId::of(&path);
    // No scan at start: only the kernel's removal of pages it never saw added tells memtrace
    // that cache predates it; it must measure the file then.
    let out = memtrace(&[
        "run",
        "--no-seed",
        "--json",
        "--",
        "dd",
        "if=/dev/zero",
        "bs=1M",
        "count=4",
        "status=none",
    ])
    .arg(format!("of={}", path.display()))
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown: u64 = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["files"].as_array().unwrap())
        .filter(|f| f["ino"] == id.ino && f["dev"] == id.dev.as_str())
        .map(|f| f["cached_bytes"].as_u64().unwrap())
        .sum();
    let folio = one_folio_of(&path);
    assert_near(
        "rewritten file vs cachestat",
        shown,
        cachestat_bytes(&path),
        folio,
    );
    assert_near("its true size", shown, 4 * MIB, folio);
}

#[test]
fn serve_refuses_a_busy_port_clearly() {
    require_root();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = memtrace(&["serve", "--no-seed", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use") && err.contains("--listen"), "{err}");
}

/// A real Prometheus (Debian's package) scrapes serve; its query API must return a fresh
/// cgroup's page cache within 2% of the cgroup's memory.stat.
#[test]
fn prometheus_scrapes_serve_and_agrees_with_memory_stat() {
    require_root();
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("prometheus is required (cargo xtask setup installs Debian's package)");
    let serve = Serve::start(&["--no-seed"]);
    let cgroup = MemCgroup::create("agent-prom");
    // A limit, so the dashboard's usage-against-limit panel has a series to show.
    cgroup.set_limit(1 << 30);
    let scratch = Scratch::new("agent-prom");
    cgroup.run(dd_write(&scratch.path("scraped.log"), 32).arg("conv=fsync"));

    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = scratch.path("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: ['{}']\n",
            serve.addr
        ),
    )
    .unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.path("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let query = format!(
        "memtrace_cgroup_page_cache_bytes{{cgroup=\"{}\"}}",
        cgroup.path
    );
    let started = Instant::now();
    let value = loop {
        let answer = get(
            &prom_addr,
            &format!("/api/v1/query?query={}", encode(&query)),
        );
        let value = answer.and_then(|(_, body)| {
            let v: Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        });
        if let Some(value) = value.filter(|v| *v > 0.0) {
            break value;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = prom.kill();
            panic!("Prometheus never returned {query}");
        }
        thread::sleep(Duration::from_millis(500));
    };
    // Every panel of the shipped dashboard answers with series from this Prometheus.
    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
        )
        .expect("deploy/grafana-dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let began = Instant::now();
            let answered = loop {
                let series = get(&prom_addr, &format!("/api/v1/query?query={}", encode(expr)))
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
                    .unwrap_or(0);
                if series > 0 || began.elapsed() > Duration::from_secs(60) {
                    break series > 0;
                }
                thread::sleep(Duration::from_millis(500));
            };
            if !answered {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        empty.is_empty(),
        "dashboard panels without series:\n{}",
        empty.join("\n")
    );
    // A plain scrape (no OpenMetrics asked for) passes promtool's lint.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed with prometheus)");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), serve.metrics().as_bytes())
        .unwrap();
    let linted = check.wait_with_output().unwrap();
    assert!(
        linted.status.success() && linted.stdout.is_empty() && linted.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    MemCgroup::settle_stats();
    let kernel = cgroup.page_cache_bytes();
    eprintln!("Prometheus: {value} B; memory.stat page cache: {kernel} B");
    assert_near(
        "Prometheus vs memory.stat (2%)",
        value as u64,
        kernel,
        kernel / 50,
    );
}
