//! The Kubernetes manifest cannot drift from what works: this test reads deploy/memtrace.yaml
//! and runs memtrace exactly as the DaemonSet says (its uid, its capabilities and nothing
//! more, its arguments; only the listen address is moved to a free loopback port), then checks
//! that it reports a fresh cgroup as memory.stat does.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    files::{dd_write, Scratch},
    http::{free_port, get, series_value},
    memtrace_bin, require_root, MIB,
};
use serde::Deserialize;
use serde_yaml::Value;

struct Pod {
    uid: u64,
    gid: u64,
    capabilities: Vec<String>,
    args: Vec<String>,
}

fn daemonset() -> Pod {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/memtrace.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/memtrace.yaml");
    let daemonset = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(
        security["capabilities"]["drop"][0], "ALL",
        "every capability not listed is dropped"
    );
    assert_eq!(daemonset["spec"]["template"]["spec"]["hostPID"], true);
    Pod {
        uid: security["runAsUser"].as_u64().expect("runAsUser"),
        gid: security["runAsGroup"].as_u64().expect("runAsGroup"),
        capabilities: security["capabilities"]["add"]
            .as_sequence()
            .expect("capabilities.add")
            .iter()
            .map(|c| c.as_str().unwrap().to_lowercase())
            .collect(),
        args: container["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
    }
}

#[test]
fn memtrace_runs_as_the_manifest_says_and_reports_a_fresh_cgroup() {
    require_root();
    let pod = daemonset();
    assert_ne!(pod.uid, 0, "the agent runs as an unprivileged uid");
    assert!(
        !pod.capabilities.iter().any(|c| c == "sys_admin"),
        "least privilege: no CAP_SYS_ADMIN"
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = pod.args.clone();
    let listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
    args[listen] = addr.clone();
    let caps: Vec<String> = pod.capabilities.iter().map(|c| format!("+{c}")).collect();
    let caps = caps.join(",");
    let mut serve = Command::new("setpriv")
        .arg(format!("--reuid={}", pod.uid))
        .arg(format!("--regid={}", pod.gid))
        .arg("--clear-groups")
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(memtrace_bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("setpriv (util-linux)");
    let started = Instant::now();
    while get(&addr, "/healthz").is_none_or(|(s, _)| s != 200) {
        if let Some(status) = serve.try_wait().unwrap() {
            panic!("memtrace exited with {status} under the manifest's privileges");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no /healthz");
        thread::sleep(Duration::from_millis(200));
    }
    let cgroup = MemCgroup::create("deploy");
    let scratch = Scratch::new("deploy");
    let path = scratch.path("fresh.log");
    cgroup.run(dd_write(&path, 24).arg("conv=fsync"));
    MemCgroup::settle_stats();
    let (_, text) = get(&addr, "/metrics").expect("a scrape");
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    let shown = series_value(
        &text,
        "memtrace_cgroup_page_cache_bytes",
        &[("cgroup", &cgroup.path)],
    )
    .unwrap_or_else(|| panic!("the fresh cgroup is scraped:\n{text}"));
    let kernel = cgroup.page_cache_bytes();
    assert_near(
        "manifest's memtrace vs memory.stat (2%)",
        shown as u64,
        kernel,
        kernel / 50,
    );
    let file = series_value(
        &text,
        "memtrace_file_page_cache_bytes",
        &[("cgroup", &cgroup.path), ("path", path.to_str().unwrap())],
    )
    .expect("the file is named");
    assert_near("the file", file as u64, 24 * MIB, 2 * MIB);
}
