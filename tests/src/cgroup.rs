//! Real memory cgroups for tests, on cgroup v1 or v2, removed when dropped.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{self, Write},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::Duration,
};

use memtrace::{model::UNIFIED_HIERARCHY, resolve::cgroups::Hierarchies};

/// Parent of every test cgroup, so a failed run leaves one place to clean.
const TEST_PARENT: &str = "memtrace-tests";

/// A memory cgroup made for one test.
pub struct MemCgroup {
    /// Directory on the host.
    pub dir: PathBuf,
    /// Path inside the hierarchy, as memtrace reports it.
    pub path: String,
    /// Hierarchy id as the kernel tags the memcg (0 on v2).
    pub hierarchy: u32,
    /// cgroup id: the directory's inode number.
    pub id: u64,
    v2: bool,
}

impl MemCgroup {
    /// Creates `memtrace-tests/<name>-<pid>` in the memory controller's hierarchy.
    pub fn create(name: &str) -> Self {
        Self::create_exact(&format!("{name}-{}", std::process::id()))
    }

    /// Creates `memtrace-tests/<leaf>`, named exactly so (to look like another tool's cgroup).
    pub fn create_exact(leaf: &str) -> Self {
        let hierarchies = Hierarchies::discover();
        let hierarchy = hierarchies
            .memory_hierarchy
            .expect("no memory controller in /proc/cgroups: the kernel needs CONFIG_MEMCG and a mounted memory cgroup");
        let mount = hierarchies
            .mount_of(hierarchy)
            .expect("the memory controller's hierarchy is not mounted")
            .clone();
        let v2 = hierarchy == UNIFIED_HIERARCHY;
        let parent = mount.mount_point.join(TEST_PARENT);
        fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        if v2 {
            // Children of the parent get their own memcg only if the parents delegate memory.
            enable_memory_controller(&mount.mount_point);
            enable_memory_controller(&parent);
        }
        let dir = parent.join(leaf);
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let id = fs::metadata(&dir).expect("stat cgroup dir").ino();
        let path = mount
            .root
            .join(TEST_PARENT)
            .join(leaf)
            .to_string_lossy()
            .into_owned();
        Self {
            dir,
            path,
            hierarchy,
            id,
            v2,
        }
    }

    /// Sets the hard memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub fn set_limit(&self, bytes: u64) {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        fs::write(self.dir.join(file), bytes.to_string())
            .unwrap_or_else(|e| panic!("write {file}: {e}"));
    }

    /// Starts `cmd` inside this cgroup: the child joins it before exec, so every page it
    /// touches is charged here.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: the closure only opens and writes a file, which is async-signal-safe enough
        // for a freshly forked child that execs right after.
        unsafe {
            cmd.pre_exec(move || {
                let mut file = fs::OpenOptions::new().write(true).open(&procs)?;
                file.write_all(std::process::id().to_string().as_bytes())
            });
        }
        cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
    }

    /// Runs `cmd` in this cgroup to completion and asserts it succeeded.
    pub fn run(&self, cmd: &mut Command) {
        let status = self.spawn(cmd).wait().expect("wait for child");
        assert!(status.success(), "{cmd:?} failed: {status}");
    }

    /// memory.stat as key → value, once it reads the same twice running 200 ms apart (or the
    /// last of 5 s of reads, said loudly).
    ///
    /// The counters are per-CPU deltas folded in lazily. On 6.1 a read that meets another fold
    /// in progress (the 2 s worker, reclaim, another reader) skips folding (`spin_trylock`) and
    /// returns counters only part folded; the next read after that fold shows them whole. A
    /// test calls this when its workload has ended, so a change between reads is only folding.
    pub fn memory_stat(&self) -> HashMap<String, u64> {
        let mut last = self.memory_stat_once();
        for _ in 0..25 {
            thread::sleep(Duration::from_millis(200));
            let now = self.memory_stat_once();
            if now == last {
                return now;
            }
            last = now;
        }
        eprintln!(
            "warning: {}/memory.stat kept changing for 5 s after the workload ended; using the last read",
            self.dir.display()
        );
        last
    }

    /// Page-cache bytes as memory.stat says them now, in one read (for a test that waited out
    /// the stat batching itself, over many cgroups at once).
    pub fn page_cache_bytes_now(&self) -> u64 {
        let key = if self.v2 { "file" } else { "cache" };
        *self
            .memory_stat_once()
            .get(key)
            .unwrap_or_else(|| panic!("memory.stat has no `{key}`"))
    }

    /// memory.stat as it reads now, counters perhaps part folded (see [`Self::memory_stat`]).
    pub fn memory_stat_once(&self) -> HashMap<String, u64> {
        let text = fs::read_to_string(self.dir.join("memory.stat")).expect("read memory.stat");
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Page-cache bytes the kernel charges here: `cache` (v1) or `file` (v2).
    pub fn page_cache_bytes(&self) -> u64 {
        let stat = self.memory_stat();
        let key = if self.v2 { "file" } else { "cache" };
        *stat
            .get(key)
            .unwrap_or_else(|| panic!("memory.stat has no `{key}`"))
    }

    /// Waits out the kernel's per-CPU stat batching (flushed at least every 2 s).
    pub fn settle_stats() {
        thread::sleep(Duration::from_millis(2500));
    }
}

fn enable_memory_controller(dir: &Path) {
    let control = dir.join("cgroup.subtree_control");
    if fs::read_to_string(&control).is_ok_and(|c| c.split_whitespace().any(|x| x == "memory")) {
        return;
    }
    if let Err(e) = fs::write(&control, "+memory") {
        panic!("enable memory controller in {}: {e}", control.display());
    }
}

impl MemCgroup {
    /// SIGKILLs every process still in this cgroup until none is left (a shell loop may fork
    /// between two reads), and says how many there were.
    fn kill_members(&self) -> usize {
        let mut killed = HashSet::new();
        for _ in 0..50 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid the kernel just listed; at worst it has exited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed.insert(pid);
            }
            thread::sleep(Duration::from_millis(20));
        }
        killed.len()
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // A test that panicked leaves its children running: a loop writing into a scratch
        // directory already gone, holding the test run's output open for ever.
        let killed = self.kill_members();
        if killed > 0 {
            eprintln!(
                "warning: {killed} process(es) still ran in test cgroup {}; killed",
                self.dir.display()
            );
        }
        // The memcg lingers as long as its pages do, which is exactly what memtrace must
        // cope with.
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.dir.display()
        );
    }
}
