//! tmpfs and shmem, which no page-cache tracepoint sees: a file on a tmpfs written in a fresh
//! memcg is named with its bytes by `explain` and by `watch` started after it (a container's
//! memory `emptyDir` is in the containers suite). The oracles are mincore(2) on the file and
//! the memcg's own memory.stat `shmem`.

use std::{fs::File, path::PathBuf, process::Command};

use memtrace_tests::{
    assert_near, cgroup::MemCgroup, explain_json, files::dd_write, files::resident_bytes,
    files::Scratch, memtrace, MIB,
};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(scratch: &Scratch) -> Self {
        let dir = scratch.path("tmpfs");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=128m",
                "memtrace-test",
                dir.to_str().unwrap(),
            ])
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// The memcg as one `memtrace watch --json` started now reports it.
fn watched_cgroup(cgroup: &MemCgroup) -> serde_json::Value {
    let out = memtrace(&["watch", "--json", "--count", "1", "--no-seed"])
        .output()
        .expect("run memtrace watch");
    assert!(out.status.success(), "watch exited with {}", out.status);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut report: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a report")).expect("JSON");
    let cgroups = report["cgroups"].as_array_mut().expect("cgroups");
    let at = cgroups
        .iter()
        .position(|c| c["id"].as_u64() == Some(cgroup.id))
        .expect("watch reports the memcg");
    cgroups.swap_remove(at)
}

fn shmem_of(cgroup: &MemCgroup) -> u64 {
    cgroup.memory_stat().get("shmem").copied().unwrap_or(0)
}

#[test]
fn a_tmpfs_file_written_in_a_fresh_memcg_is_named_by_explain_and_by_watch_started_after() {
    memtrace_tests::require_root();
    let scratch = Scratch::new("tmpfs");
    let tmpfs = Tmpfs::mount(&scratch);
    let cgroup = MemCgroup::create("tmpfs");
    let path = tmpfs.dir.join("cache.bin");
    // Written before any memtrace runs: nothing could have traced it.
    cgroup.run(&mut dd_write(&path, 32));
    MemCgroup::settle_stats();
    let resident = resident_bytes(&File::open(&path).unwrap()).expect("mincore");
    let shmem = shmem_of(&cgroup);
    assert_near("the kernel's resident bytes", resident, 32 * MIB, 0);
    assert_near("the memcg's shmem", shmem, 32 * MIB, 64 * 4096);

    let explained = explain_json(&cgroup.path);
    let files = explained["files"].as_array().expect("files");
    let file = files
        .iter()
        .find(|f| f["path"].as_str() == path.to_str())
        .unwrap_or_else(|| panic!("explain names {}: {files:?}", path.display()));
    assert_near(
        "explain's bytes vs mincore",
        file["cached_bytes"].as_u64().unwrap(),
        resident,
        4 * 4096,
    );
    let coverage = explained["coverage"].as_f64().expect("coverage");
    assert!(
        coverage >= 0.95,
        "explain covers {:.1}% of the memcg's page cache (shmem included), expected ≥ 95%",
        coverage * 100.0
    );

    let cg = watched_cgroup(&cgroup);
    let file = cg["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == path.to_str())
        .expect("watch names the tmpfs file");
    assert_eq!(file["fs"].as_str(), Some("tmpfs"));
    assert_eq!(
        file["provenance"].as_str(),
        Some("exact"),
        "memcg read per page"
    );
    assert_near(
        "watch's bytes vs mincore",
        file["cached_bytes"].as_u64().unwrap(),
        resident,
        4 * 4096,
    );
    assert_near(
        "watch's cgroup total vs memory.stat shmem",
        cg["cached_bytes"].as_u64().unwrap(),
        shmem,
        shmem / 50,
    );
}

/// A shm-holder in `cgroup`, killed when dropped.
struct Holder(std::process::Child);

impl Holder {
    fn start(cgroup: &MemCgroup, kind: &str, mib: u64, scratch: &Scratch) -> Self {
        let ready = scratch.path(&format!("{kind}.ready"));
        let child = cgroup.spawn(
            Command::new(env!("CARGO_BIN_EXE_shm-holder"))
                .arg(kind)
                .arg(mib.to_string())
                .arg(&ready),
        );
        let started = std::time::Instant::now();
        while !ready.exists() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "shm-holder {kind} never got ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// memfds keep their own name; a SysV segment and shared anonymous memory (PostgreSQL's
/// shared buffers), which /proc calls `/SYSV<key>` and `/dev/zero`, are named for what they
/// are and who holds them.
#[test]
fn a_memfd_a_sysv_segment_and_shared_anonymous_memory_are_named_with_their_bytes_in_their_memcg() {
    memtrace_tests::require_root();
    let scratch = Scratch::new("shm");
    let cgroup = MemCgroup::create("shm");
    let _memfd = Holder::start(&cgroup, "memfd", 16, &scratch);
    let sysv = Holder::start(&cgroup, "sysv", 8, &scratch);
    let anon = Holder::start(&cgroup, "anon", 4, &scratch);
    MemCgroup::settle_stats();
    // The kernel's figures: the memcg's shmem, and the segment's own rss in /proc/sysvipc/shm
    // (columns: key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime
    // rss swap).
    let shmem = shmem_of(&cgroup);
    assert_near("the memcg's shmem", shmem, 28 * MIB, 64 * 4096);
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").expect("/proc/sysvipc/shm");
    let segment_rss = segments
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(4).and_then(|p| p.parse::<u32>().ok()) == Some(sysv.0.id()))
        .and_then(|f| {
            let key = f.first()?.parse::<i32>().ok()?;
            Some((key, f.get(14)?.parse::<u64>().ok()?))
        });
    let (segment_key, segment_rss) = segment_rss.expect("the segment is in /proc/sysvipc/shm");

    let cg = watched_cgroup(&cgroup);
    let files = cg["files"].as_array().unwrap();
    let named = |prefix: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .unwrap_or_else(|| panic!("a file named {prefix}…: {files:?}"))
    };
    let memfd = named("/memfd:memtrace-test");
    assert_eq!(memfd["fs"].as_str(), Some("tmpfs"));
    assert_near(
        "the memfd's bytes",
        memfd["cached_bytes"].as_u64().unwrap(),
        16 * MIB,
        4 * 4096,
    );
    let segment = named(&format!(
        "[SysV shm key 0x{:08x} of shm-holder, pid {}]",
        segment_key,
        sysv.0.id()
    ));
    assert_eq!(segment["fs"].as_str(), Some("tmpfs"));
    assert_near(
        "the SysV segment's bytes vs /proc/sysvipc/shm rss",
        segment["cached_bytes"].as_u64().unwrap(),
        segment_rss,
        4 * 4096,
    );
    let shared = named(&format!(
        "[shared anonymous memory of shm-holder, pid {}]",
        anon.0.id()
    ));
    assert_near(
        "the shared anonymous memory's bytes",
        shared["cached_bytes"].as_u64().unwrap(),
        4 * MIB,
        4 * 4096,
    );
    assert_near(
        "the memcg's total vs memory.stat shmem",
        cg["cached_bytes"].as_u64().unwrap(),
        shmem,
        shmem / 50,
    );
}
