//! Measuring without disturbing: reading which memcg owns each page leaves the page's LRU
//! state as it was. The oracle is the cgroup's memory.stat, before and after. Runs on the host
//! and in the VM matrix (6.1, 6.12), whose kernels decide recency differently.

use std::fs::File;

use memtrace_tests::{
    assert_near,
    cgroup::MemCgroup,
    explain_json,
    files::{dd_write, resident_bytes, Scratch},
    require_root, MIB,
};

fn lru(cgroup: &MemCgroup) -> (u64, u64) {
    MemCgroup::settle_stats();
    let stat = cgroup.memory_stat();
    (stat["active_file"], stat["inactive_file"])
}

#[test]
fn explain_leaves_the_lru_lists_as_they_were() {
    require_root();
    let cgroup = MemCgroup::create("observer");
    let scratch = Scratch::new("observer");
    let path = scratch.path("inactive.bin");
    cgroup.run(dd_write(&path, 64).arg("conv=fsync"));
    let (active_before, inactive_before) = lru(&cgroup);
    assert!(
        inactive_before >= 60 * MIB,
        "precondition: a file written once sits on the inactive list (inactive_file {inactive_before}, active_file {active_before})"
    );

    let mut seen = 0;
    for run in 1..=3 {
        let e = explain_json(&cgroup.path);
        let file = e["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some(path.to_str().unwrap()))
            .unwrap_or_else(|| panic!("run {run}: explain did not measure the file: {e:#}"));
        assert_eq!(
            file["provenance"], "exact",
            "run {run}: read from the pages"
        );
        seen = file["cached_bytes"].as_u64().unwrap();
    }
    assert_near("explain measured the file", seen, 64 * MIB, 2 * MIB);

    let (active_after, inactive_after) = lru(&cgroup);
    eprintln!(
        "LRU of {}: active_file {active_before} -> {active_after}, inactive_file {inactive_before} -> {inactive_after}",
        cgroup.path
    );
    assert_near(
        "active_file across 3 explains",
        active_after,
        active_before,
        MIB,
    );
    assert_near(
        "inactive_file across 3 explains",
        inactive_after,
        inactive_before,
        MIB,
    );
    // And the pages are all still there: nothing dropped, nothing read in.
    let resident = resident_bytes(&File::open(&path).unwrap()).unwrap();
    assert_near("resident after", resident, 64 * MIB, 0);
}
