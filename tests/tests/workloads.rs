//! A real database workload: PostgreSQL 15 with pgbench in a fresh memory cgroup, traced from
//! before it starts. It renames files under memtrace (WAL segments recycled under future
//! names, state files rewritten as temporary files renamed over the old ones) and keeps its
//! shared buffers in shared anonymous memory. Afterwards every file memtrace names under the
//! cgroup exists under that name with that inode and holds what fincore says, the cgroup
//! total is within 1% of memory.stat, and at least 95% of its page cache is on named files.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::Duration,
};

use memtrace::collector::seed::SeedOptions;
use memtrace_tests::{
    cgroup::MemCgroup, cgroup_in, explain_json, files::fincore_bytes, start_tracer, MIB,
};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const PORT: &str = "54329";

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    cmd
}

/// A PostgreSQL cluster in `dir`, its server started in `cgroup`; stopped when dropped.
struct Cluster {
    dir: PathBuf,
    server: Option<Child>,
}

impl Cluster {
    fn start(cgroup: &MemCgroup, dir: &Path) -> Self {
        assert!(
            Path::new(BIN).join("postgres").exists(),
            "PostgreSQL 15 is not installed at {BIN}: `cargo xtask test` installs postgresql-15"
        );
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        assert!(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap()
            .success());
        let data = dir.join("data");
        let out = as_postgres("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {out:?}");
        // WAL kept small so checkpoints recycle segments (by renaming them) within the run.
        // setpriv execs the server itself (runuser would stay as its parent and not pass a
        // signal on), so the child is the postmaster.
        let server = cgroup.spawn(Command::new("setpriv").args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            &format!("{BIN}/postgres"),
            "-D",
            data.to_str().unwrap(),
            "-k",
            dir.to_str().unwrap(),
            "-p",
            PORT,
            "-c",
            "listen_addresses=",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "max_wal_size=32MB",
            "-c",
            "min_wal_size=32MB",
            "-c",
            "checkpoint_timeout=30s",
        ]));
        let cluster = Self {
            dir: dir.to_owned(),
            server: Some(server),
        };
        for _ in 0..100 {
            let ready = as_postgres("pg_isready")
                .args(["-h", dir.to_str().unwrap(), "-p", PORT])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return cluster;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!("PostgreSQL did not start in 20 s");
    }

    fn client(&self, program: &str, args: &[&str]) {
        let out = as_postgres(program)
            .args([
                "-h",
                self.dir.to_str().unwrap(),
                "-p",
                PORT,
                "-U",
                "postgres",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            // SAFETY: a plain kill of our own child.
            unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every process of a cgroup stopped (SIGSTOP) until dropped.
struct Stopped(Vec<i32>);

impl Stopped {
    fn all_in(cgroup: &MemCgroup) -> Self {
        let procs = std::fs::read_to_string(cgroup.dir.join("cgroup.procs")).unwrap();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for &pid in &pids {
            // SAFETY: plain kill of the test's own server processes.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        Self(pids)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

#[test]
fn postgresql_under_pgbench_is_named_file_by_file_and_adds_up_to_memory_stat() {
    let mut tracer = start_tracer();
    tracer.seed(&SeedOptions::default());
    let cgroup = MemCgroup::create("postgres");
    let dir = PathBuf::from(format!(
        "/var/tmp/memtrace-tests/postgres-{}",
        std::process::id()
    ));
    let cluster = Cluster::start(&cgroup, &dir);
    cluster.client("pgbench", &["-i", "-s", "10", "-q", "postgres"]);
    tracer.snapshot().expect("snapshot");
    // Transactions, with reports while they run: WAL segments are recycled under them.
    let mut bench = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/pgbench")])
        .args(["-h", dir.to_str().unwrap(), "-p", PORT, "-U", "postgres"])
        .args(["-T", "12", "-c", "4", "postgres"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pgbench");
    while bench.try_wait().unwrap().is_none() {
        tracer.snapshot().expect("snapshot");
        thread::sleep(Duration::from_millis(500));
    }
    cluster.client("psql", &["-c", "CHECKPOINT", "postgres"]);
    // Held still while the report is built and checked (the server renames files at any
    // time, autovacuum among others): the oracle is the filesystem as the report saw it.
    let stopped = Stopped::all_in(&cgroup);
    MemCgroup::settle_stats();

    let report = tracer.snapshot().expect("snapshot");
    let kernel = cgroup.page_cache_bytes();
    let usage = cgroup_in(&report, cgroup.id).expect("the cgroup is reported");
    let mut named = 0;
    let mut problems = Vec::new();
    for file in &usage.files {
        let Some(path) = file.host_path.as_deref().or(file.path.as_deref()) else {
            continue;
        };
        if path.starts_with("[shared anonymous memory of postgres") {
            named += file.cached_bytes;
            continue;
        }
        // Files listed for their writes alone hold no cache to name.
        if file.deleted || !file.path_complete || path.starts_with('[') || file.cached_bytes == 0 {
            continue;
        }
        named += file.cached_bytes;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.ino() == file.ino => {
                let resident = fincore_bytes(Path::new(path));
                // A shared file (the server's binary, its libraries) is charged to whoever read
                // each page first: fincore's figure is the sum over every cgroup.
                let everywhere: u64 = report
                    .cgroups
                    .iter()
                    .flat_map(|c| &c.files)
                    .filter(|f| f.dev == file.dev && f.ino == file.ino)
                    .map(|f| f.cached_bytes)
                    .sum();
                // Folios on ext4 here are small for pgbench's 8 KiB writes; one folio of 2 MiB
                // bounds any.
                if resident.abs_diff(everywhere) > 2 * MIB {
                    problems.push(format!(
                        "{path}: memtrace {everywhere} B over every cgroup, fincore {resident} B"
                    ));
                }
            }
            Ok(meta) => problems.push(format!(
                "{path}: shown for inode {} ({} B cached), but that name is inode {} now: {}",
                file.ino,
                file.cached_bytes,
                meta.ino(),
                serde_json::to_string(file).unwrap_or_default()
            )),
            Err(err) => problems.push(format!(
                "{path} (inode {}, {} B cached): {err}",
                file.ino, file.cached_bytes
            )),
        }
    }
    eprintln!(
        "memory.stat {kernel} B, memtrace {} B, on named files {named} B, {} files",
        usage.cached_bytes,
        usage.files.len()
    );
    assert!(
        problems.is_empty(),
        "files shown under names they do not have, or with wrong bytes:\n{}",
        problems.join("\n")
    );
    assert!(
        usage.cached_bytes.abs_diff(kernel) <= kernel / 100,
        "cgroup total {} B vs memory.stat {kernel} B: more than 1% apart",
        usage.cached_bytes
    );
    assert!(
        named as f64 >= 0.95 * kernel as f64,
        "only {named} B of memory.stat's {kernel} B on named files"
    );
    // Relation files are written in place and read back: data, never told to lower a log
    // level (only the server's own log, opened O_APPEND, would be).
    let explained = explain_json(&cgroup.path);
    let verdict = explained["verdict"].to_string();
    let top = explained["files"][0]["path"].as_str().unwrap_or("");
    eprintln!("explain: top file {top}; {verdict}");
    assert!(
        top.ends_with(".log") || !verdict.contains("log level"),
        "{top} told to lower a log level: {verdict}"
    );
    // Nor the advice no database operator could follow.
    assert!(!verdict.contains("O_DIRECT"), "{verdict}");
    drop(stopped);
    drop(cluster);
}
