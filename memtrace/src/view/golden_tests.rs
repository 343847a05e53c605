//! Renderings of one fixed model, compared byte for byte with the files in `golden/`: the JSON
//! is the contract, and the table and explain text are what people read. A change to any of
//! them shows here first.

use std::sync::Arc;

use crate::{
    model::{
        aggregate,
        explain::{ExplainedFile, Explanation, Target, TargetKind, Writer},
        fixtures::{counters, key},
        Comm, Container, Hook, KernelStats, Layer, MemoryFigures, MemoryPressure, Observation, Pod,
        Provenance, Report, Runtime, SeededCache, WriterUsage, WritesSource, SCHEMA_VERSION,
    },
    view::{json, report_json, table},
};

fn comm(name: &str) -> Comm {
    let mut raw = [0u8; 16];
    raw[..name.len()].copy_from_slice(name.as_bytes());
    Comm(raw)
}

/// A node with a container logging to its writable layer, a systemd service, and a cgroup
/// that could not be named.
pub(crate) fn fixed_report() -> Report {
    let observations = vec![
        Observation {
            shmem: false,
            key: key(100, 11),
            counters: counters(20_000, 500),
            seeded: Some(Box::new(SeededCache {
                pages: 4096,
                active_pages: 1024,
                provenance: Provenance::Exact,
                baseline: counters(100, 0),
            })),
            writers: vec![WriterUsage {
                pid: 4242,
                comm: comm("java"),
                bytes: 80 << 20,
                calls: 20_480,
            }],
        },
        Observation::traced(key(100, 12), counters(300, 300)),
        Observation::traced(key(100, 13), counters(64, 0)),
        Observation::traced(key(200, 21), counters(1000, 10)),
        Observation::traced(key(300, 31), counters(7, 0)),
    ];
    let (mut cgroups, totals) = aggregate(observations, 4096);
    for cgroup in &mut cgroups {
        match cgroup.id {
            100 => {
                cgroup.path = Some("/kubepods/burstable/pod5d1c/3f4b1c2d9e8a7b6c".into());
                cgroup.container = Some(Container {
                    runtime: Runtime::Containerd,
                    id: "3f4b1c2d9e8a7b6c5d4e".into(),
                    name: Some("spring".into()),
                    pod: Some(Pod {
                        namespace: Some("shop".into()),
                        name: Some("spring-0".into()),
                        uid: "5d1c6c4e-8f2a-4b3c-9d0e-1f2a3b4c5d6e".into(),
                        qos: "burstable".into(),
                    }),
                    rootfs: Some("/run/containerd/rootfs/3f4b".into()),
                    verified: true,
                });
            }
            200 => {
                cgroup.path = Some("/system.slice/nginx.service".into());
                cgroup.unit = Some("nginx.service".into());
                cgroup.removed = true;
            }
            _ => {}
        }
        for file in &mut cgroup.files {
            match file.ino {
                11 => {
                    file.path = Some(Arc::from("/tmp/spring.log"));
                    file.host_path = Some(Arc::from("/var/lib/snap/7/fs/tmp/spring.log"));
                    file.layer = Some(Layer::Upper);
                    file.dirty_bytes = Some(8192);
                    file.writeback_bytes = Some(0);
                    file.write_rate_bytes_per_second = Some(1_048_576.0);
                }
                13 => {
                    file.path = Some(Arc::from("/usr/lib/libjvm.so"));
                    file.host_path = Some(Arc::from("/var/lib/snap/2/fs/usr/lib/libjvm.so"));
                    file.layer = Some(Layer::Lower);
                }
                21 => {
                    file.path = Some(Arc::from("/var/log/nginx/access.log"));
                    file.host_path = file.path.clone();
                    file.deleted = true;
                }
                _ => {}
            }
        }
    }
    Report {
        schema_version: SCHEMA_VERSION,
        timestamp: 1_790_000_000.25,
        traced_seconds: 12.5,
        snapshot_seconds: 0.031,
        page_size: 4096,
        hooks: vec![
            Hook {
                name: "mm_filemap_add_to_page_cache",
                kind: "tp_btf",
                attached: true,
                purpose: "page-cache insertions per (memcg, file)",
                detail: None,
            },
            Hook {
                name: "vfs_write",
                kind: "fexit",
                attached: false,
                purpose: "bytes written per (writer's memcg, file, process)",
                detail: Some("the kernel refused program `vfs_write_exit`".into()),
            },
        ],
        writes_source: Some(WritesSource::DirtiedPages),
        dirty_source: Some("cachestat"),
        stats: KernelStats {
            add_events: 21_371,
            delete_events: 810,
            map_full: 0,
            read_failed: 1,
            uncharged: 2,
            cgroup_events_lost: 0,
            writers_map_full: 0,
            overflow_runs: 0,
            early_flips: 0,
            file_events_lost: 3,
            map_entries: 5,
            map_capacity: 262_144,
            map_read_errors: 0,
            missed_runs: 0,
        },
        seed: None,
        shmem: Default::default(),
        totals,
        cgroups,
    }
}

pub(crate) fn fixed_explanation() -> Explanation {
    let mut e = Explanation {
        schema_version: SCHEMA_VERSION,
        target: Target {
            query: "spring".into(),
            kind: TargetKind::Container,
            cgroup_id: 100,
            hierarchy: 4,
            cgroup_path: "/kubepods/burstable/pod5d1c/3f4b1c2d9e8a7b6c".into(),
            container: None,
        },
        memory: Some(MemoryFigures {
            usage_bytes: 1400 << 20,
            anon_bytes: 600 << 20,
            page_cache_bytes: 800 << 20,
            shmem_bytes: 1 << 20,
            mapped_file_bytes: 4 << 20,
            dirty_bytes: 2 << 20,
            writeback_bytes: 0,
            active_file_bytes: 100 << 20,
            inactive_file_bytes: 700 << 20,
            kernel_bytes: 0,
            working_set_bytes: 700 << 20,
            refault_file_bytes: 0,
            pressure: MemoryPressure {
                limit_bytes: Some(2048 << 20),
                ..MemoryPressure::default()
            },
            source: "memory.stat (v1)".into(),
        }),
        attributed_bytes: 780 << 20,
        attributed_exact_bytes: 780 << 20,
        coverage: None,
        unattributed_bytes: 0,
        files: vec![ExplainedFile {
            path: Some("/tmp/spring.log".into()),
            host_path: Some("/var/lib/snap/7/fs/tmp/spring.log".into()),
            cached_bytes: 780 << 20,
            fs: None,
            dirty_bytes: Some(2 << 20),
            writeback_bytes: Some(0),
            seeded_active_bytes: 0,
            seeded_bytes: 700 << 20,
            provenance: Provenance::Exact,
            deleted: false,
            layer: Some(Layer::Upper),
            growth_bytes_per_second: 2.0 * 1024.0 * 1024.0,
            reread_bytes_per_second: 0.0,
            hit_ratio: None,
            writers: vec![Writer {
                pid: 42,
                comm: "java".into(),
                append: true,
            }],
            cgroup_path: Some("/kubepods/burstable/pod5d1c/3f4b1c2d9e8a7b6c".into()),
        }],
        hits_counted: true,
        hit_ratio: Some(0.9),
        seed: None,
        observed_seconds: 2.0,
        refault_bytes_per_second: Some(0.0),
        state: None,
        stats: KernelStats::default(),
        verdict: Vec::new(),
    };
    e.conclude();
    e
}

/// Compares with `golden/NAME`; `MEMTRACE_BLESS=1` rewrites it (only for a deliberate change).
fn assert_golden(name: &str, actual: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/view/golden")
        .join(name);
    if std::env::var_os("MEMTRACE_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "{name} changed:\n--- expected\n{}\n--- actual\n{}",
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual)
    );
}

#[test]
fn report_json_is_unchanged() {
    let mut out = Vec::new();
    json::write_line(&mut out, &fixed_report()).unwrap();
    assert_golden("report.json", &out);
}

#[test]
fn a_report_streamed_cgroup_by_cgroup_is_the_same_json() {
    use crate::model::CgroupStream;
    let report = fixed_report();
    let mut whole = Vec::new();
    json::write_line(&mut whole, &report).unwrap();
    // `watch --json`'s writer, files by hand, each cgroup handed back once written (a stream
    // is taken by value: it cannot be written twice).
    let cgroups = report.cgroups.clone();
    let mut out = Vec::new();
    let mut handed_back = Vec::new();
    let stream = CgroupStream::new(cgroups.clone().into_iter())
        .after_each(|cgroup| handed_back.push(cgroup));
    report_json::write_line(&mut out, &report.with_cgroups(()), stream).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(whole).unwrap()
    );
    assert_eq!(
        handed_back, cgroups,
        "every cgroup comes back, whole, in order"
    );
}

#[test]
fn report_table_is_unchanged() {
    let mut out = Vec::new();
    let options = table::TableOptions {
        files_per_cgroup: 2,
        max_cgroups: 10,
        show_idle: true,
    };
    table::write(&mut out, &fixed_report(), options).unwrap();
    assert_golden("report.txt", &out);
}

#[test]
fn explanation_json_and_text_are_unchanged() {
    let e = fixed_explanation();
    let mut out = Vec::new();
    serde_json::to_writer(&mut out, &e).unwrap();
    out.push(b'\n');
    assert_golden("explain.json", &out);
    let mut text = Vec::new();
    crate::view::explain::write(&mut text, &e).unwrap();
    assert_golden("explain.txt", &text);
}

#[test]
fn names_from_outside_never_reach_the_terminal_raw() {
    let evil = "/tmp/evil\n\x1b[31mname\u{9b}.log";
    let mut report = fixed_report();
    report.cgroups[0].files[0].path = Some(Arc::from(evil));
    report.cgroups[0].files[0].writers[0].comm = comm("ev\x1bil");
    let mut table = Vec::new();
    let options = table::TableOptions {
        files_per_cgroup: 5,
        max_cgroups: 5,
        show_idle: true,
    };
    table::write(&mut table, &report, options).unwrap();
    let mut e = fixed_explanation();
    e.files[0].path = Some(Arc::from(evil));
    e.conclude();
    let mut text = Vec::new();
    crate::view::explain::write(&mut text, &e).unwrap();
    for (what, out) in [("table", table), ("explain", text)] {
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{what} printed a control character: {out:?}"
        );
        assert!(
            out.contains("/tmp/evil\\n\\x1b[31mname\\u{9b}.log"),
            "{what}: {out}"
        );
    }
}
