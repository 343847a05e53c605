//! The memtrace binary as a user runs it: JSON schema, exit status, signals, clear errors.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    files::{FileId, Scratch},
    memtrace, require_root, MIB,
};
use serde_json::Value;

fn json_of(output: &[u8]) -> Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(output)))
}

#[test]
fn run_reports_json_with_documented_fields() {
    require_root();
    let scratch = Scratch::new("cli-run");
    let cgroup = MemCgroup::create("cli-run");
    let log = scratch.path("cli.log");
    let script = format!(
        "echo $$ > {}/cgroup.procs && dd if=/dev/zero of={} bs=1M count=32 status=none",
        cgroup.dir.display(),
        log.display()
    );
    let out = memtrace(&["run", "--json", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "memtrace run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out.stdout);

    let file = FileId::of(&log);
    let cgroups = report["cgroups"].as_array().expect("cgroups[]");
    let cg = cgroups
        .iter()
        .find(|c| c["id"].as_u64() == Some(cgroup.id))
        .expect("the writer's cgroup is in cgroups[]");
    assert_eq!(cg["path"].as_str(), Some(cgroup.path.as_str()));
    assert!(cg["path"].as_str().unwrap().starts_with('/'));
    assert!(cg["cached_bytes"].as_u64().unwrap() >= 32 * MIB);
    let f = cg["files"]
        .as_array()
        .expect("files[]")
        .iter()
        .find(|f| f["ino"].as_u64() == Some(file.ino))
        .expect("the log in files[]");
    assert_eq!(f["dev"].as_str(), Some(file.dev.as_str()), "dev is MAJ:MIN");
    assert_near(
        "files[].cached_bytes",
        f["cached_bytes"].as_u64().unwrap(),
        32 * MIB,
        2 * MIB,
    );
    for key in [
        "add_events",
        "delete_events",
        "map_full",
        "read_failed",
        "map_entries",
    ] {
        assert!(report["stats"][key].is_u64(), "stats.{key} present");
    }
    assert!(report["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["attached"] == true));
}

#[test]
fn run_exits_with_the_commands_status() {
    require_root();
    let out = memtrace(&["run", "--json", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(&out.stdout);

    let missing = memtrace(&["run", "--", "/no/such/program"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("cannot run `/no/such/program`"),
        "unclear error: {err}"
    );
}

#[test]
fn run_writes_report_to_output_file() {
    require_root();
    let scratch = Scratch::new("cli-out");
    let out_file = scratch.path("report.json");
    let out = memtrace(&[
        "run",
        "--json",
        "-o",
        out_file.to_str().unwrap(),
        "--",
        "true",
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "report went to stdout instead of the file"
    );
    let report = json_of(&std::fs::read(&out_file).unwrap());
    assert!(report["cgroups"].is_array());
}

#[test]
fn watch_streams_ndjson_and_stops_after_count() {
    require_root();
    let out = memtrace(&["watch", "--json", "--interval", "200ms", "--count", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "two NDJSON documents: {text}");
    for line in lines {
        assert!(json_of(line.as_bytes())["cgroups"].is_array());
    }
}

#[test]
fn watch_ends_quietly_when_its_reader_goes_away() {
    require_root();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} watch --json --interval 200ms | head -n 1 >/dev/null",
            memtrace_tests::memtrace_bin().display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Broken pipe"),
        "a closed pipe is not an error: {err}"
    );
}

#[test]
fn sigterm_detaches_and_prints_the_final_report() {
    require_root();
    for (args, expect_json_lines) in [
        (vec!["watch", "--json", "--interval", "10s"], 1),
        (vec!["run", "--json", "--", "sleep", "30"], 1),
    ] {
        let child = memtrace(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_secs(2));
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        // Read while waiting: a large final report would fill the pipe and block the child.
        let out = child.wait_with_output().unwrap();
        let status = out.status;
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            expect_json_lines,
            "{args:?}: final report expected, got {stdout:?}"
        );
        json_of(lines[0].as_bytes());
        if args[0] == "watch" {
            assert!(status.success(), "watch exits 0 on SIGTERM: {status}");
        }
    }
}

#[test]
fn unprivileged_user_gets_a_clear_error() {
    require_root();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(memtrace_tests::memtrace_bin())
        .args(["watch", "--count", "1"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must run as root") && err.contains("sudo"),
        "unclear error: {err}"
    );
}

#[test]
fn doctor_reports_hooks_and_layout() {
    require_root();
    let out = memtrace(&["doctor", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "doctor failed here: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc = json_of(&out.stdout);
    assert_eq!(doc["healthy"], true);
    let checks = doc["checks"].as_array().unwrap();
    let load = checks
        .iter()
        .find(|c| c["name"] == "load and attach")
        .expect("load check");
    assert!(load["detail"]
        .as_str()
        .unwrap()
        .contains("mm_filemap_add_to_page_cache (tp_btf, attached)"));
    assert!(checks
        .iter()
        .any(|c| c["name"] == "cgroups" && c["ok"] == true));
}

#[test]
fn run_takes_output_by_its_long_name_and_arguments_that_are_not_utf8() {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
    require_root();
    let scratch = Scratch::new("cli-bytes");
    let out_file = scratch.path("report.json");
    let odd = scratch.dir.join(OsStr::from_bytes(b"caf\xe9.txt"));
    let out = memtrace(&[
        "run",
        "--json",
        "--output",
        out_file.to_str().unwrap(),
        "--",
        "touch",
    ])
    .arg(&odd)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        odd.exists(),
        "the command got its non-UTF-8 argument byte for byte"
    );
    assert!(json_of(&std::fs::read(&out_file).unwrap())["cgroups"].is_array());
}

#[test]
fn a_map_the_kernel_cannot_allocate_is_a_clear_error() {
    require_root();
    let out = memtrace(&["--max-entries", "4000000000", "watch", "--count", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lower --max-entries"), "unclear error: {err}");
}

#[test]
fn doctor_into_a_closed_pipe_exits_quietly() {
    require_root();
    let mut child = memtrace(&["doctor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "doctor panicked: {err}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit status");
}

/// A pipe whose reader never reads: memtrace's stdout, filled so its next write blocks.
struct StalledPipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl StalledPipe {
    fn new() -> Self {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned here alone.
        unsafe {
            Self {
                read: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                write: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        }
    }

    /// Fills the pipe (at whatever size memtrace gave it) until a write would block. Returns
    /// the bytes it took.
    fn fill(&self) -> usize {
        use std::os::fd::AsRawFd;
        let fd = self.write.as_raw_fd();
        let filler = [b'\n'; 4096];
        let mut total = 0;
        // SAFETY: fcntl and write on our own descriptor, from a buffer that outlives the calls.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            loop {
                let n = libc::write(fd, filler.as_ptr().cast(), filler.len());
                if n <= 0 {
                    break;
                }
                total += n as usize;
            }
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
        total
    }
}

/// A consumer that stops reading and then signals (a pipeline being stopped) must not hang
/// memtrace: in every mode that writes reports, SIGTERM ends it within its grace (5 s) even
/// with its stdout blocked, the final report being best effort.
#[test]
fn sigterm_ends_every_mode_in_bounded_time_with_stdout_blocked() {
    require_root();
    for args in [
        vec!["watch", "--json", "--interval", "200ms"],
        vec!["watch", "--interval", "200ms", "--all"],
        vec!["run", "--json", "--", "sleep", "60"],
        vec!["explain", "/", "--duration", "60s"],
    ] {
        let pipe = StalledPipe::new();
        let mut child = memtrace(&args)
            .stdout(Stdio::from(pipe.write.try_clone().unwrap()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Started, stdout widened, a report or two written; then nothing more fits.
        thread::sleep(Duration::from_secs(3));
        let filled = pipe.fill();
        thread::sleep(Duration::from_millis(500));
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let signalled = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if signalled.elapsed() > Duration::from_secs(15) {
                break None;
            }
            thread::sleep(Duration::from_millis(100));
        };
        let took = signalled.elapsed();
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        drop(pipe.read);
        eprintln!("{args:?}: pipe filled with {filled} B more; ended {took:?} after SIGTERM: {status:?}\n{stderr}");
        assert!(
            status.is_some(),
            "{args:?}: still running 15 s after SIGTERM with stdout blocked"
        );
        assert!(
            took < Duration::from_secs(8),
            "{args:?}: took {took:?} to end after SIGTERM (grace 5 s)"
        );
    }
}
