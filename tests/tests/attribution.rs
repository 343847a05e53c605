//! Attribution on the running kernel: real memory cgroups, real writers and readers, compared
//! with the kernel's own memory.stat and mincore.

use std::{
    fs::{File, OpenOptions},
    thread,
};

use memtrace::collector::seed::SeedOptions;
use memtrace_tests::{
    assert_near, cached,
    cgroup::MemCgroup,
    cgroup_in, describe_file,
    files::{
        dd_read, dd_write, drop_cache, filesystem_of, folio_census, make_uncached_file,
        one_folio_of, resident_bytes, FileId, Scratch,
    },
    start_tracer, MIB,
};

// "Within one folio" is each file's largest resident folio (kpageflags): a file cached in
// small folios is compared to the page.

#[test]
fn writer_in_child_cgroup_is_charged_its_file_then_truncate_drops_it() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("writer");
    let cgroup = MemCgroup::create("writer");
    let log = scratch.path("app.log");

    cgroup.run(&mut dd_write(&log, 64));
    let file = FileId::of(&log);
    let report = tracer.snapshot().expect("snapshot");
    let charged = cached(&report, cgroup.id, &file);
    let folio = one_folio_of(&log);
    assert_near("64 MiB written in the cgroup", charged, 64 * MIB, folio);
    let resident = resident_bytes(&File::open(&log).unwrap()).unwrap();
    eprintln!("64 MiB writer: memtrace {charged} B, mincore {resident} B");
    assert_near("memtrace vs mincore", charged, resident, folio);
    let cg = cgroup_in(&report, cgroup.id).unwrap();
    assert_eq!(
        cg.path.as_deref(),
        Some(cgroup.path.as_str()),
        "cgroup named by its path"
    );
    assert_eq!(cg.hierarchy, cgroup.hierarchy);

    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let report = tracer.snapshot().expect("snapshot");
    assert_near(
        "after truncate",
        cached(&report, cgroup.id, &file),
        0,
        one_folio_of(&log),
    );
}

#[test]
fn fadvise_dontneed_drops_resident_to_about_zero() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("dontneed");
    let cgroup = MemCgroup::create("dontneed");
    let data = scratch.path("data.bin");

    cgroup.run(&mut dd_write(&data, 64));
    let file = FileId::of(&data);
    assert_near(
        "before fadvise",
        cached(&tracer.snapshot().unwrap(), cgroup.id, &file),
        64 * MIB,
        one_folio_of(&data),
    );

    // DONTNEED skips dirty pages: write them back first.
    let handle = File::open(&data).unwrap();
    handle.sync_all().unwrap();
    drop_cache(&handle).unwrap();
    assert_eq!(
        resident_bytes(&handle).unwrap(),
        0,
        "kernel still holds pages after DONTNEED"
    );
    let report = tracer.snapshot().expect("snapshot");
    assert_near(
        "after fadvise(DONTNEED)",
        cached(&report, cgroup.id, &file),
        0,
        one_folio_of(&data),
    );
}

#[test]
fn reader_in_second_cgroup_is_charged_for_what_it_reads() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("reader");
    let writer = MemCgroup::create("first");
    let reader = MemCgroup::create("second");
    let written = scratch.path("written.bin");
    let third = scratch.path("third.bin");

    writer.run(&mut dd_write(&written, 16));
    make_uncached_file(&third, 32);
    reader.run(&mut dd_read(&third));

    let report = tracer.snapshot().expect("snapshot");
    let third_id = FileId::of(&third);
    eprintln!("{}", describe_file(&report, &third_id));
    eprintln!(
        "kernel: reader memory.stat {:?}; {} B of the file resident",
        reader.memory_stat(),
        resident_bytes(&File::open(&third).expect("open")).expect("mincore")
    );
    assert_near(
        "reader charged for the file it read",
        cached(&report, reader.id, &third_id),
        32 * MIB,
        one_folio_of(&third),
    );
    assert_eq!(
        cached(&report, writer.id, &third_id),
        0,
        "the writer never touched the third file"
    );
    assert_eq!(
        cached(&report, reader.id, &FileId::of(&written)),
        0,
        "the reader never touched the written file"
    );
    assert_near(
        "writer keeps its own file",
        cached(&report, writer.id, &FileId::of(&written)),
        16 * MIB,
        one_folio_of(&written),
    );
}

#[test]
fn cgroup_total_agrees_with_memory_stat_cache() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("memstat");
    let cgroup = MemCgroup::create("memstat");
    let before = cgroup.page_cache_bytes();

    cgroup.run(&mut dd_write(&scratch.path("a.log"), 48));
    cgroup.run(&mut dd_read(&{
        let p = scratch.path("b.bin");
        make_uncached_file(&p, 16);
        p
    }));
    MemCgroup::settle_stats();

    let kernel = cgroup.page_cache_bytes() - before;
    let report = tracer.snapshot().expect("snapshot");
    let traced = cgroup_in(&report, cgroup.id)
        .expect("cgroup in report")
        .cached_bytes;
    let tolerance = kernel / 50; // 2%
    eprintln!("memory.stat page cache delta {kernel} B, memtrace {traced} B");
    assert_near(
        "memtrace total vs memory.stat page cache delta",
        traced,
        kernel,
        tolerance,
    );
    assert!(
        kernel >= 60 * MIB,
        "the kernel charged {kernel} bytes, expected about 64 MiB"
    );
}

#[test]
fn two_writers_in_two_cgroups_at_once_stay_apart() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("pair");
    let left = MemCgroup::create("left");
    let right = MemCgroup::create("right");
    let left_file = scratch.path("left.log");
    let right_file = scratch.path("right.log");

    thread::scope(|s| {
        s.spawn(|| left.run(&mut dd_write(&left_file, 48)));
        s.spawn(|| right.run(&mut dd_write(&right_file, 24)));
    });

    let report = tracer.snapshot().expect("snapshot");
    let (l, r) = (FileId::of(&left_file), FileId::of(&right_file));
    assert_near(
        "left file in left cgroup",
        cached(&report, left.id, &l),
        48 * MIB,
        one_folio_of(&left_file),
    );
    assert_near(
        "right file in right cgroup",
        cached(&report, right.id, &r),
        24 * MIB,
        one_folio_of(&right_file),
    );
    assert_eq!(
        cached(&report, left.id, &r),
        0,
        "right's file leaked into left"
    );
    assert_eq!(
        cached(&report, right.id, &l),
        0,
        "left's file leaked into right"
    );
    assert_eq!(report.stats.map_full, 0);
    assert_eq!(report.stats.read_failed, 0);
}

#[test]
fn removed_cgroup_keeps_its_name_and_its_cache() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("zombie");
    let log = scratch.path("zombie.log");
    let (id, path) = {
        let cgroup = MemCgroup::create("zombie");
        cgroup.run(&mut dd_write(&log, 8));
        (cgroup.id, cgroup.path.clone())
    }; // dropped: the directory is removed, the memcg lingers with its pages

    let report = tracer.snapshot().expect("snapshot");
    let cg = cgroup_in(&report, id).expect("removed cgroup still reported");
    assert_eq!(cg.path.as_deref(), Some(path.as_str()));
    assert!(cg.removed, "cgroup should be marked removed");
    assert_near(
        "zombie memcg keeps its cache",
        cached(&report, id, &FileId::of(&log)),
        8 * MIB,
        one_folio_of(&log),
    );
}

#[test]
fn large_folios_are_counted_page_for_page_against_mincore_and_memory_stat() {
    let mut tracer = start_tracer();
    let scratch = Scratch::new("folios");
    let cgroup = MemCgroup::create("folios");
    let path = scratch.path("read.bin");
    // Readahead fills the cache in large folios where the filesystem supports them (XFS since
    // 5.18; ext4 since 6.16 with large folios enabled; btrfs not on 6.1–6.12).
    let kernel = read_uncached(&cgroup, &path, 64);
    let report = tracer.snapshot().expect("snapshot");

    let file = File::open(&path).expect("open");
    let resident = resident_bytes(&file).expect("mincore");
    let census = folio_census(&file).expect("kpageflags");
    let filesystem = filesystem_of(&scratch.dir);
    let traced = cached(&report, cgroup.id, &FileId::of(&path));
    eprintln!(
        "{filesystem}: {} pages resident in {} large folios ({} pages in them); mincore {resident} B, memory.stat {kernel} B, memtrace {traced} B",
        census.pages, census.large_folios, census.pages_in_large_folios
    );
    if filesystem == "xfs" {
        assert!(
            census.large_folios > 0,
            "XFS reads into large folios on every kernel since 5.18, but none were found"
        );
    }
    // A wrong folio order (e.g. 6.1's `_flags_1` word read as the order) multiplies or drops
    // pages for every large folio: page-exact agreement is the check.
    assert_near("memtrace vs mincore", traced, resident, 4096 * 16);
    assert_near("memtrace vs memory.stat", traced, kernel, kernel / 50);
    assert_near(
        "the whole file was read",
        resident,
        64 * MIB,
        one_folio_of(&path),
    );
}

#[test]
fn large_folios_cached_before_start_are_seeded_to_their_memcg_page_for_page() {
    let scratch = Scratch::new("seeded-folios");
    let cgroup = MemCgroup::create("seeded-folios");
    let path = scratch.path("read.bin");
    // Read by the cgroup before memtrace starts: only the seed's per-page ownership (pagemap,
    // kpagecgroup, kpageflags) can charge it, and on XFS the pages sit in large folios, whose
    // tail pages 6.1 reports as charged to no memcg.
    let kernel = read_uncached(&cgroup, &path, 32);

    let mut tracer = start_tracer();
    let summary = tracer.seed(&SeedOptions {
        extra_dirs: vec![scratch.dir.clone()],
        ..SeedOptions::default()
    });
    let report = tracer.snapshot().expect("snapshot");
    let file = File::open(&path).expect("open");
    let resident = resident_bytes(&file).expect("mincore");
    let census = folio_census(&file).expect("kpageflags");
    let id = FileId::of(&path);
    let traced = cached(&report, cgroup.id, &id);
    eprintln!(
        "{}: {} pages resident in {} large folios ({} pages in them); mincore {resident} B, memory.stat {kernel} B, memtrace {traced} B; seed {summary:?}",
        filesystem_of(&scratch.dir),
        census.pages,
        census.large_folios,
        census.pages_in_large_folios
    );
    eprintln!("{}", describe_file(&report, &id));
    assert_eq!(
        cached(&report, 0, &id),
        0,
        "no page of the file may be reported as charged to no memcg"
    );
    assert_near("seeded vs mincore", traced, resident, 4096 * 16);
    assert_near("seeded vs memory.stat", traced, kernel, kernel / 50);
    assert_near(
        "the whole file was read",
        resident,
        32 * MIB,
        one_folio_of(&path),
    );
}

/// Writes `mib` MiB to `path`, evicts it, and has `cgroup` read it back (readahead: large
/// folios where the filesystem has them). Returns the page cache the kernel charged `cgroup`
/// for it (memory.stat).
fn read_uncached(cgroup: &MemCgroup, path: &std::path::Path, mib: u64) -> u64 {
    make_uncached_file(path, mib);
    let before = cgroup.page_cache_bytes();
    cgroup.run(&mut dd_read(path));
    MemCgroup::settle_stats();
    cgroup.page_cache_bytes() - before
}
