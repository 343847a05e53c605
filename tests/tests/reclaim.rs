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
    assert_near,
    cgroup::MemCgroup,
    cgroup_in,
    files::{drop_cache, one_folio_of, resident_bytes, FileId, Scratch},
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
    let mut tracer = start_tracer_with(&LoadOptions {
        max_entries: 4096,
        ..LoadOptions::default()
    });
    let cgroup = MemCgroup::create("reclaim");
    let scratch = Scratch::new("reclaim");
    // Twenty rounds of 2,000 new files cached and dropped, 40,000 distinct (memcg, file) pairs
    // through a map of 4,096: the map is drained and flipped every 20 ms while the files are
    // made and while they are dropped, so flips race the programs' inserts and removals.
    for round in 0..20 {
        let script = format!(
            "cd {} && i=0; while [ $i -lt 2000 ]; do echo data > r{round}-$i; i=$((i+1)); done",
            scratch.dir.display()
        );
        let mut maker = cgroup.spawn(std::process::Command::new("sh").args(["-c", &script]));
        while maker.try_wait().unwrap().is_none() {
            tracer.maintain();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for i in 0..2000 {
            let file = File::open(scratch.path(&format!("r{round}-{i}"))).unwrap();
            drop_cache(&file).unwrap();
            if i % 250 == 0 {
                tracer.maintain();
            }
        }
        if round % 5 == 4 {
            tracer.snapshot().unwrap();
        }
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
    assert_near("its bytes", file.cached_bytes, 32 * MIB, one_folio_of(&big));
    let kernel = cgroup.page_cache_bytes();
    assert_near(
        "the cgroup vs memory.stat after 40,000 files (0.2% or 256 KiB)",
        cg.cached_bytes,
        kernel,
        (kernel / 500).max(256 * 1024),
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
    let old_generation = generation_of(&File::open(&old).unwrap());
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
    let new_generation = generation_of(&File::open(&new).unwrap());
    assert_ne!(
        old_generation, new_generation,
        "a reused inode number, a new inode"
    );
    let report = tracer.snapshot().unwrap();
    assert_eq!(
        named(&report).as_deref(),
        new.to_str(),
        "named by its own path"
    );
    // The row with cache for that inode number is the new file's: its generation, its bytes.
    let rows: Vec<_> = report
        .cgroups
        .iter()
        .flat_map(|c| &c.files)
        .filter(|f| f.ino == ino && f.cached_bytes > 0)
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "one file holds cache under that number: {rows:?}"
    );
    assert_eq!(
        new_generation, rows[0].generation,
        "the new inode's generation"
    );
    let resident = resident_bytes(&File::open(&new).unwrap()).unwrap();
    assert_eq!(
        rows[0].cached_bytes, resident,
        "the new file's bytes (mincore)"
    );
}

/// The inode's generation (`i_generation`), as the filesystem reports it (FS_IOC_GETVERSION).
fn generation_of(file: &File) -> u32 {
    /// `_IOR('v', 1, long)`.
    const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
    let mut generation: libc::c_long = 0;
    // SAFETY: the ioctl writes one long into `generation`, ours and alive for the call.
    let ret = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            FS_IOC_GETVERSION,
            &mut generation as *mut libc::c_long,
        )
    };
    assert_eq!(
        ret,
        0,
        "FS_IOC_GETVERSION: {}",
        std::io::Error::last_os_error()
    );
    generation as u32
}
