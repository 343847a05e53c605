//! Bounded for weeks: a small (memcg, file) map serves any number of distinct files over
//! time, with nothing lost (the cgroup still agrees with memory.stat), and a file that gets a
//! deleted file's inode number is named by its own path.

use std::{
    fs::{self, File},
    io::Write,
    os::unix::fs::MetadataExt,
    sync::Mutex,
};

use memtrace::loader::LoadOptions;
use memtrace_tests::{
    assert_near, cgroup::MemCgroup, cgroup_in, files::drop_cache, files::FileId, files::Scratch,
    start_tracer, start_tracer_with, MIB,
};

fn write(path: &std::path::Path, bytes: usize) -> File {
    let mut file = File::create(path).unwrap();
    file.write_all(&vec![3u8; bytes]).unwrap();
    file.sync_all().unwrap();
    file
}

/// The two tests share one directory tree on one filesystem: while the forty thousand files
/// are being made, they take every inode number the other test frees, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn forty_thousand_files_pass_through_a_4096_entry_map_with_nothing_lost() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut tracer = start_tracer_with(&LoadOptions { max_entries: 4096 });
    let cgroup = MemCgroup::create("reclaim");
    let scratch = Scratch::new("reclaim");
    // Twenty rounds of 2,000 new files cached and dropped, a report after each, as `watch`
    // would make them: 40,000 distinct (memcg, file) pairs through a map of 4,096.
    for round in 0..20 {
        let script = format!(
            "cd {} && i=0; while [ $i -lt 2000 ]; do echo data > r{round}-$i; i=$((i+1)); done",
            scratch.dir.display()
        );
        cgroup.run(std::process::Command::new("sh").args(["-c", &script]));
        for i in 0..2000 {
            let file = File::open(scratch.path(&format!("r{round}-{i}"))).unwrap();
            drop_cache(&file).unwrap();
        }
        tracer.snapshot().unwrap();
    }
    let report = tracer.snapshot().unwrap();
    assert_eq!(report.stats.map_full, 0, "no event lost to a full map");
    assert!(report.stats.map_capacity == 4096);

    let big = scratch.path("after.log");
    cgroup.run(memtrace_tests::files::dd_write(&big, 32).arg("conv=fsync"));
    MemCgroup::settle_stats();
    let report = tracer.snapshot().unwrap();
    assert_eq!(report.stats.map_full, 0);
    let cg = cgroup_in(&report, cgroup.id).expect("the cgroup is reported");
    let id = FileId::of(&big);
    let file = cg
        .files
        .iter()
        .find(|f| f.ino == id.ino && f.dev == id.dev.as_str())
        .expect("the 32 MiB file is reported");
    assert_eq!(file.path.as_deref(), big.to_str(), "and named");
    assert_near("its bytes", file.cached_bytes, 32 * MIB, 2 * MIB);
    let kernel = cgroup.page_cache_bytes();
    assert_near(
        "the cgroup vs memory.stat after 40,000 files (2%)",
        cg.cached_bytes,
        kernel,
        kernel / 50 + 64 * 4096,
    );
}

#[test]
fn a_file_that_reuses_a_deleted_files_inode_number_is_named_by_its_own_path() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut tracer = start_tracer();
    let scratch = Scratch::new("reuse");
    let old = scratch.path("old.log");
    write(&old, 256 * 1024);
    let ino = fs::metadata(&old).unwrap().ino();
    let report = tracer.snapshot().unwrap();
    let named = |report: &memtrace::model::Report| {
        report
            .cgroups
            .iter()
            .flat_map(|c| &c.files)
            .filter(|f| f.ino == ino && f.cached_bytes > 0)
            .find_map(|f| f.path.as_deref().map(str::to_owned))
    };
    assert_eq!(named(&report).as_deref(), old.to_str());
    fs::remove_file(&old).unwrap();
    // ext4 hands a freed inode number to the next new file; try a few names until it does.
    let mut new = None;
    for i in 0..50 {
        let path = scratch.path(&format!("new-{i}.log"));
        let file = write(&path, 256 * 1024);
        if file.metadata().unwrap().ino() == ino {
            new = Some(path);
            break;
        }
    }
    let new = new.expect("the filesystem reused the inode number (ext4 does at once)");
    let report = tracer.snapshot().unwrap();
    assert_eq!(
        named(&report).as_deref(),
        new.to_str(),
        "named by its own path"
    );
}
