//! Containers that try to hang, crash or fool memtrace.
//!
//! The oracle is the kernel: memory.stat's LRU figures before and after, cachestat, and what
//! is on disk. Every test ends with memtrace having exited 0 and still reporting the files it
//! should.

use std::{
    fs::{self},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use memtrace::collector::seed::{self, SeedOptions};
use memtrace_tests::{
    assert_near, cgroup::MemCgroup, container::OverlayContainer, explain_json,
    files::cachestat_bytes, files::drop_cache, files::Scratch, memtrace, require_root, MIB,
};
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);

/// The tests of this file take turns. Each runs memtrace, and a memtrace measures the dirty
/// bytes of every file it sees written, by opening it: beside the symlink test, another test's
/// memtrace opens the host file the test writes, and the test's observer, which cannot tell who
/// opened it, counts that against the memtrace under test.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_log_truncated_in_a_loop_during_explain_does_not_kill_memtrace() {
    let _turn = turn();
    require_root();
    // copytruncate done as fast as a shell can: write 8 MiB, truncate, again.
    let rotator = OverlayContainer::start(
        "rotator",
        "touch /tmp/done; while true; do dd if=/dev/zero of=/tmp/app.log bs=1M count=8 conv=notrunc 2>/dev/null; : > /tmp/app.log; done",
    );
    rotator.wait_for("/tmp/done", STARTUP);
    let steady = OverlayContainer::start(
        "steady",
        "dd if=/dev/zero of=/tmp/steady.log bs=1M count=24 2>/dev/null; touch /tmp/done; sleep 600",
    );
    steady.wait_for("/tmp/done", STARTUP);
    for _ in 0..3 {
        explain_json(&rotator.id);
    }
    let e = explain_json(&steady.id);
    let top = &e["files"][0];
    assert_eq!(top["path"], "/tmp/steady.log", "{e:#}");
    assert_near(
        "the other container's log",
        top["cached_bytes"].as_u64().unwrap(),
        24 * MIB,
        2 * MIB,
    );
}

/// A container swaps its cached log for a FIFO and for a symlink to a host file while memtrace
/// watches: memtrace must neither block on the FIFO nor report the host file.
#[test]
fn fifos_and_symlinks_in_a_container_layer_are_not_followed() {
    let _turn = turn();
    require_root();
    // Outside every directory a scan at start walks (/var/log, /tmp, /var/tmp): nothing but a
    // followed symlink leads memtrace there.
    let secret_dir = SecretDir::new();
    let secret = secret_dir.0.join("secret.bin");
    // A host file, which must never show under the container. Written back and out of the
    // cache before memtrace starts: the census at start (explain's) counts every cached file
    // on the node and may rightly measure one at its own path, and nothing reads it after,
    // so any open of it can only come through the symlink.
    Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1M",
            "count=16",
            "conv=fsync",
            "status=none",
        ])
        .arg(format!("of={}", secret.display()))
        .status()
        .unwrap();
    drop_cache(&fs::File::open(&secret).unwrap()).unwrap();
    assert_eq!(cachestat_bytes(&secret), 0, "the host file left no cache");
    // An independent observer of every open of the host file.
    let opens = Opens::watch(&secret);
    let mut watch = memtrace(&["watch", "--json", "--interval", "500ms", "--no-seed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("memtrace watch");
    // Reports read on a thread of their own: a memtrace blocked on the FIFO fails the test
    // within a bound instead of hanging it.
    let reports = lines_of(watch.stdout.take().unwrap());
    next_report(&reports, "a first report: memtrace is attached");
    // Written while memtrace traces, and held open so their cache outlives the swap.
    let evil = OverlayContainer::start(
        "evil",
        "dd if=/dev/zero of=/tmp/fifo.log bs=1M count=8 2>/dev/null; \
         dd if=/dev/zero of=/tmp/link.log bs=1M count=8 2>/dev/null; \
         dd if=/dev/zero of=/tmp/kept.log bs=1M count=12 2>/dev/null; \
         exec 3</tmp/fifo.log 4</tmp/link.log; touch /tmp/done; sleep 600",
    );
    evil.wait_for("/tmp/done", STARTUP);
    // A report or two names the files by their layer paths.
    thread::sleep(Duration::from_millis(1200));
    let fifo = evil.upper_path("/tmp/fifo.log");
    let link = evil.upper_path("/tmp/link.log");
    fs::remove_file(&fifo).unwrap();
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let fifo_opens = Opens::watch(&fifo);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    // A scan at start walks the layer, link and FIFO included (explain seeds).
    let explained = explain_json(&evil.id);
    assert_eq!(explained["target"]["container"]["id"], evil.id.as_str());
    // explain's census reaches files by their inodes; the directory walk that takes over
    // where the kernel refuses it goes through the layer by name, link and FIFO included,
    // and opens what it finds (on a thread: a blocked open fails the test, not hangs it).
    let layer = evil.upper_path("/tmp");
    let (walked, walking) = mpsc::channel();
    thread::spawn(move || {
        let candidates = seed::files_below(&layer, 10_000, None);
        let scanned = seed::scan(candidates, &SeedOptions::default(), 0, 4096, |_| None);
        let _ = walked.send(scanned.summary.files_examined);
    });
    let examined = walking
        .recv_timeout(REPORT_TIMEOUT)
        .expect("the directory walk over the layer never ended (blocked on the FIFO?)");
    assert!(examined >= 1, "the walk examined the layer's kept.log");
    // Reports keep coming (a blocked open would stop them), then SIGTERM ends the watch.
    for _ in 0..3 {
        next_report(&reports, "memtrace keeps reporting after the swap");
    }
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let mut rest = Vec::new();
    loop {
        match reports.recv_timeout(REPORT_TIMEOUT) {
            Ok(line) => rest.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("memtrace did not end after SIGTERM"),
        }
    }
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    let last: Value = serde_json::from_str(rest.last().expect("a final report")).unwrap();
    let secret_name = secret.to_str().unwrap();
    let cg = last["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["container"]["id"] == evil.id.as_str())
        .expect("the container is still reported");
    // The host file may be reported where it belongs (its own cgroup, found by the scan at
    // start), never as the container's file.
    for file in cg["files"].as_array().unwrap() {
        assert_ne!(
            file["host_path"], secret_name,
            "a symlink was followed: {file}"
        );
    }
    assert_eq!(
        opens.count(),
        0,
        "memtrace opened the host file a symlink in the container points to"
    );
    assert_eq!(fifo_opens.count(), 0, "memtrace opened the FIFO");
    let kept = cg["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/tmp/kept.log")
        .expect("the untouched log is still named");
    assert_near(
        "kept.log",
        kept["cached_bytes"].as_u64().unwrap(),
        12 * MIB,
        2 * MIB,
    );
}

/// A host directory no scan walks, removed when dropped.
struct SecretDir(std::path::PathBuf);

impl SecretDir {
    fn new() -> Self {
        let dir = std::path::PathBuf::from(format!("/srv/memtrace-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Opens of one file, as inotify sees them (`IN_OPEN`), from whoever opens it.
struct Opens {
    fd: std::os::fd::OwnedFd,
}

impl Opens {
    fn watch(path: &std::path::Path) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just created and is ours alone.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c.as_ptr(),
                libc::IN_OPEN,
            )
        };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Self { fd }
    }

    /// `IN_OPEN` events so far.
    fn count(&self) -> usize {
        let mut buf = [0u8; 4096];
        let mut events = 0;
        loop {
            // SAFETY: reads into our buffer, within its length.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return events;
            }
            let mut at = 0;
            while at + size_of::<libc::inotify_event>() <= n as usize {
                // SAFETY: the kernel wrote whole events into the buffer; read unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                if event.mask & libc::IN_OPEN != 0 {
                    events += 1;
                }
                at += size_of::<libc::inotify_event>() + event.len as usize;
            }
        }
    }
}

/// A 1 TiB sparse file with a few cached pages costs what a small file costs: explain
/// finishes and reports exactly what cachestat says is cached.
#[test]
fn a_huge_sparse_file_is_measured_exactly() {
    let _turn = turn();
    require_root();
    let sparse = OverlayContainer::start(
        "sparse",
        "dd if=/dev/zero of=/tmp/sparse.bin bs=4096 count=3 seek=268435455 2>/dev/null; \
         dd if=/dev/zero of=/tmp/sparse.bin bs=4096 count=5 seek=100000 conv=notrunc 2>/dev/null; \
         touch /tmp/done; sleep 600",
    );
    sparse.wait_for("/tmp/done", STARTUP);
    let host = sparse.upper_path("/tmp/sparse.bin");
    assert!(
        fs::metadata(&host).unwrap().len() >= 1 << 40,
        "a 1 TiB file"
    );
    let e = explain_json(&sparse.id);
    let file = e["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/tmp/sparse.bin")
        .unwrap_or_else(|| panic!("the sparse file is reported: {e:#}"));
    assert_eq!(
        file["cached_bytes"].as_u64().unwrap(),
        cachestat_bytes(&host),
        "as cachestat counts it"
    );
}

/// Runtime state memtrace reads is under /run, but a FIFO, a malformed file or a huge one
/// there must cost nothing: memtrace still runs and still names the real containers.
#[test]
fn malformed_huge_and_blocking_runtime_state_files_are_skipped() {
    let _turn = turn();
    require_root();
    let base = std::path::Path::new("/run/runc");
    // A cgroup with cache that only the oversized state file claims.
    let decoy = MemCgroup::create("huge-state");
    let decoy_dir = Scratch::new("huge-state");
    decoy.run(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=4", "status=none"])
            .arg(format!("of={}", decoy_dir.path("decoy.log").display())),
    );
    let fakes = [
        ("memtrace-bad-json", "fifo"),
        (
            "memtrace-malformed",
            "{\"id\": \"x\", \"cgroup_paths\": [1,2",
        ),
        ("memtrace-huge", "huge"),
    ];
    for (id, kind) in fakes {
        let dir = base.join(id);
        fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.json");
        let _ = fs::remove_file(&state);
        match kind {
            "fifo" => {
                let c = std::ffi::CString::new(state.to_str().unwrap()).unwrap();
                // SAFETY: a NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }
            "huge" => {
                // Valid, and naming a real memory cgroup: read past the cap, it would make
                // that cgroup a verified container.
                let text = format!(
                    "{{\"id\": \"memtrace-huge\", \"cgroup_paths\": {{\"memory\": \"{}\", \"\": \"{}\"}}, \"config\": {{\"rootfs\": \"/\", \"labels\": []}}, \"pad\": \"{}\"}}",
                    decoy.dir.display(),
                    decoy.dir.display(),
                    "x".repeat(5 << 20)
                );
                fs::write(&state, text).unwrap();
            }
            text => fs::write(&state, text).unwrap(),
        }
    }
    let real = OverlayContainer::start(
        "real",
        "dd if=/dev/zero of=/tmp/real.log bs=1M count=8 2>/dev/null; touch /tmp/done; sleep 600",
    );
    real.wait_for("/tmp/done", STARTUP);
    let e = explain_json(&real.id);
    let out = memtrace(&["watch", "--json", "--count", "1", "--cgroup", &decoy.path])
        .output()
        .expect("memtrace watch");
    for (id, _) in fakes {
        let _ = fs::remove_dir_all(base.join(id));
    }
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let decoy_seen = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_u64() == Some(decoy.id))
        .unwrap_or_else(|| panic!("the decoy cgroup is reported: {report}"));
    assert!(
        decoy_seen["container"].is_null(),
        "a state file over the 4 MiB cap was read: {}",
        decoy_seen["container"]
    );
    assert_eq!(e["target"]["container"]["id"], real.id.as_str());
    assert_eq!(e["target"]["container"]["verified"], true, "{e:#}");
    assert_eq!(e["files"][0]["path"], "/tmp/real.log");
}

/// A cgroup named like a Docker container's (`docker-<id>.scope`) only claims to be one:
/// memtrace shows the claim, marked unverified, and never as a verified container.
#[test]
fn container_identity_from_a_cgroup_name_alone_is_marked_unverified() {
    let _turn = turn();
    require_root();
    let id = "4d6f6e6b6579206d656d7472616365206d656d7472616365206d656d74726163";
    let claimed = MemCgroup::create_exact(&format!("docker-{id}.scope"));
    let scratch = Scratch::new("claimed");
    let path = scratch.path("claimed.log");
    let mut watch = memtrace(&["watch", "--json", "--interval", "300ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("memtrace watch");
    let mut reports = BufReader::new(watch.stdout.take().unwrap()).lines();
    reports.next().expect("attached").unwrap();
    claimed.run(&mut memtrace_tests::files::dd_write(&path, 4));
    let mut found = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    for line in reports.by_ref() {
        if std::time::Instant::now() > deadline {
            break;
        }
        let report: Value = serde_json::from_str(&line.unwrap()).unwrap();
        found = report["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == claimed.id)
            .cloned();
        if found.is_some() {
            break;
        }
    }
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    // Read what is left, so memtrace is not stuck writing its final report to a full pipe.
    reports.for_each(drop);
    let _ = watch.wait();
    let cgroup = found.expect("the claiming cgroup is reported");
    assert_eq!(
        cgroup["container"]["id"], id,
        "the claim is shown: {cgroup}"
    );
    assert_eq!(cgroup["container"]["runtime"], "docker");
    assert_eq!(
        cgroup["container"]["verified"], false,
        "but not as verified"
    );
}

/// How long a report may take before memtrace counts as blocked.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The lines of `stdout`, read on a thread of their own.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next report, or a failure naming what was awaited.
fn next_report(reports: &mpsc::Receiver<String>, what: &str) -> String {
    reports
        .recv_timeout(REPORT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{what}: none within {REPORT_TIMEOUT:?} ({err})"))
}
