//! Real runc containers on overlay roots: memtrace names the container, the path inside it,
//! the file in its writable layer, and the bytes; and a memory `emptyDir` (a tmpfs only the
//! container mounts) with the container.

use std::{fs::File, path::Path, time::Duration};

use memtrace::model::Layer;
use memtrace::model::{FileUsage, Filter, Report};
use memtrace_tests::{
    assert_near, cgroup_in,
    container::OverlayContainer,
    files::{one_folio_of, resident_bytes},
    memtrace, require_root, start_tracer, MIB,
};

/// For the one file that cannot be read by path (deleted, held open): the largest folio the
/// page cache uses on x86-64. Every other file is compared within its own largest folio.
const PMD_FOLIO: u64 = 2 * MIB;
const STARTUP: Duration = Duration::from_secs(30);

fn file_at<'a>(report: &'a Report, cgroup_id: u64, path: &str) -> Option<&'a FileUsage> {
    cgroup_in(report, cgroup_id)?
        .files
        .iter()
        .find(|f| f.path.as_deref() == Some(path))
}

#[test]
fn container_log_is_named_by_container_path_and_upper_layer() {
    let mut tracer = start_tracer();
    let spring = OverlayContainer::start(
        "spring",
        "dd if=/dev/zero of=/tmp/spring.log bs=1M count=64 2>/dev/null; touch /tmp/done; sleep 600",
    );
    let other = OverlayContainer::start(
        "other",
        "dd if=/dev/zero of=/var-data.bin bs=1M count=16 2>/dev/null; touch /tmp/done; sleep 600",
    );
    spring.wait_for("/tmp/done", STARTUP);
    other.wait_for("/tmp/done", STARTUP);

    let report = tracer.snapshot().expect("snapshot");
    let spring_id = spring.cgroup_id();
    let cg = cgroup_in(&report, spring_id).expect("the container's cgroup is reported");
    let container = cg
        .container
        .as_ref()
        .expect("cgroup recognized as a container");
    assert_eq!(container.runtime, "runc");
    assert_eq!(container.id, spring.id);
    assert_eq!(container.name.as_deref(), Some(spring.id.as_str()));

    let log = file_at(&report, spring_id, "/tmp/spring.log")
        .expect("/tmp/spring.log under the container");
    let upper = spring.upper_path("/tmp/spring.log");
    assert_eq!(
        log.host_path.as_deref(),
        Some(upper.to_str().unwrap()),
        "host path is the upper-layer file"
    );
    assert_eq!(log.layer, Some(Layer::Upper));
    assert!(!log.deleted);
    assert_near(
        "spring.log bytes",
        log.cached_bytes,
        64 * MIB,
        one_folio_of(&upper),
    );
    let resident = resident_bytes(&File::open(&upper).unwrap()).unwrap();
    assert_near(
        "memtrace vs mincore for spring.log",
        log.cached_bytes,
        resident,
        one_folio_of(&upper),
    );

    // The other container stays apart.
    let other_id = other.cgroup_id();
    assert_ne!(other_id, spring_id);
    let data = file_at(&report, other_id, "/var-data.bin").expect("the other container's file");
    assert_near(
        "other container's bytes",
        data.cached_bytes,
        16 * MIB,
        one_folio_of(&other.upper_path("/var-data.bin")),
    );
    assert!(
        file_at(&report, spring_id, "/var-data.bin").is_none(),
        "other's file leaked into spring"
    );
    assert!(
        file_at(&report, other_id, "/tmp/spring.log").is_none(),
        "spring's log leaked into other"
    );

    // Filters: by runc id, and by path prefix.
    let only = tracer
        .snapshot_filtered(&Filter {
            container: Some(spring.id.clone()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(only.cgroups.len(), 1);
    assert_eq!(only.cgroups[0].id, spring_id);
    let by_path = tracer
        .snapshot_filtered(&Filter {
            path_prefix: Some("/tmp/spring.log".into()),
            ..Filter::default()
        })
        .unwrap();
    assert!(by_path.cgroups.iter().all(|c| c
        .files
        .iter()
        .all(|f| f.path.as_deref() == Some("/tmp/spring.log"))));
    assert!(by_path.cgroups.iter().any(|c| c.id == spring_id));
}

#[test]
fn image_layer_file_read_in_container_shows_image_path() {
    let mut tracer = start_tracer();
    let reader = OverlayContainer::start_with_image(
        "image-reader",
        "cat /opt/app.jar > /dev/null; touch /tmp/done; sleep 600",
        |image| {
            std::fs::create_dir_all(image.join("opt")).unwrap();
            memtrace_tests::files::make_uncached_file(&image.join("opt/app.jar"), 8);
        },
    );
    reader.wait_for("/tmp/done", STARTUP);
    let report = tracer.snapshot().expect("snapshot");
    let jar = file_at(&report, reader.cgroup_id(), "/opt/app.jar")
        .expect("image file under the container");
    assert_eq!(jar.layer, Some(Layer::Lower));
    assert_eq!(
        jar.host_path.as_deref(),
        Some(reader.image.join("opt/app.jar").to_str().unwrap())
    );
    assert_near(
        "image file bytes",
        jar.cached_bytes,
        8 * MIB,
        one_folio_of(&reader.image.join("opt/app.jar")),
    );
}

#[test]
fn log_deleted_while_held_open_shows_deleted_with_its_bytes() {
    let mut tracer = start_tracer();
    let rotating = OverlayContainer::start(
        "rotating",
        "exec 3>/tmp/old.log; dd if=/dev/zero bs=1M count=16 >&3 2>/dev/null; rm /tmp/old.log; \
         touch /tmp/done; sleep 600",
    );
    rotating.wait_for("/tmp/done", STARTUP);
    let report = tracer.snapshot().expect("snapshot");
    let old =
        file_at(&report, rotating.cgroup_id(), "/tmp/old.log").expect("deleted log still reported");
    assert!(old.deleted, "the log was unlinked while open: {old:?}");
    assert_near(
        "deleted log keeps its bytes",
        old.cached_bytes,
        16 * MIB,
        PMD_FOLIO,
    );
}

#[test]
fn renamed_file_shows_its_current_name() {
    let mut tracer = start_tracer();
    let rotating = OverlayContainer::start(
        "renamed",
        "dd if=/dev/zero of=/tmp/app.log bs=1M count=8 2>/dev/null; mv /tmp/app.log /tmp/app.log.1; \
         touch /tmp/done; sleep 600",
    );
    rotating.wait_for("/tmp/done", STARTUP);
    let report = tracer.snapshot().expect("snapshot");
    let rotated = file_at(&report, rotating.cgroup_id(), "/tmp/app.log.1")
        .expect("renamed file by its new name");
    assert!(!rotated.deleted);
    assert_near(
        "renamed file bytes",
        rotated.cached_bytes,
        8 * MIB,
        one_folio_of(&rotating.upper_path("/tmp/app.log.1")),
    );
    assert!(
        file_at(&report, rotating.cgroup_id(), "/tmp/app.log").is_none(),
        "old name still shown"
    );
}

#[test]
fn unknown_container_is_a_clear_error() {
    require_root();
    let out = memtrace(&[
        "watch",
        "--container",
        "no-such-container-xyz",
        "--count",
        "1",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no container matches `no-such-container-xyz`"),
        "unclear error: {err}"
    );
}

#[test]
fn a_memory_emptydir_inside_a_container_is_named_with_the_container() {
    let mut tracer = start_tracer();
    let pod = OverlayContainer::start_with_tmpfs(
        "emptydir",
        "dd if=/dev/zero of=/cache/data.bin bs=1M count=16 2>/dev/null; touch /tmp/done; sleep 600",
        &["/cache"],
    );
    pod.wait_for("/tmp/done", STARTUP);
    // The kernel's figure for the container: its memcg's shmem.
    let stat = std::fs::read_to_string(pod.memory_cgroup_dir().join("memory.stat"))
        .expect("the container's memory.stat");
    let shmem = stat
        .lines()
        .find_map(|l| l.strip_prefix("shmem "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("memory.stat shmem");
    assert_near("the container's shmem", shmem, 16 * MIB, 64 * 4096);

    // Only the container's mount namespace has this tmpfs: memtrace finds it there.
    assert!(!Path::new("/cache/data.bin").exists());
    let report = tracer.snapshot().expect("snapshot");
    let cg = cgroup_in(&report, pod.cgroup_id()).expect("the container's cgroup is reported");
    let container = cg.container.as_ref().expect("recognized as a container");
    assert_eq!(container.id, pod.id);
    let file = cg
        .files
        .iter()
        .find(|f| f.path.as_deref() == Some("/cache/data.bin"))
        .unwrap_or_else(|| panic!("the emptyDir file is named: {:?}", cg.files));
    assert_eq!(file.fs, Some("tmpfs"));
    assert_near(
        "its bytes vs memory.stat shmem",
        file.cached_bytes,
        shmem,
        64 * 4096,
    );
    assert!(report.shmem.mounts >= 1, "{:?}", report.shmem);
}

/// A pod uid, a 64-hex container id and the cgroup a kubelet with the systemd driver and
/// containerd gives such a container in a burstable pod; unique to this test process.
fn kubelet_placement(uid_prefix: &str, id_tag: u64) -> (String, String, String) {
    let pid = std::process::id();
    let uid = format!("{uid_prefix}-{pid:012x}");
    let id = format!("{:064x}", (id_tag << 16) + u64::from(pid));
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    (uid, id, path)
}

#[test]
fn a_container_in_a_kubelet_systemd_slice_is_recognized_with_its_pod() {
    let mut tracer = start_tracer();
    // As a kubelet with the systemd cgroup driver and containerd place a burstable pod's
    // container: runc is given the same path, so the cgroup is named exactly so.
    let (uid, id, cgroups_path) = kubelet_placement("5d1c6c4e-7a2b-4c3d-9e8f", 0xc0de);
    let pod = OverlayContainer::start_in_cgroup(
        &id,
        &cgroups_path,
        "dd if=/dev/zero of=/tmp/app.log bs=1M count=8 2>/dev/null; touch /tmp/done; sleep 600",
    );
    pod.wait_for("/tmp/done", STARTUP);
    let report = tracer.snapshot().expect("snapshot");
    let cg = cgroup_in(&report, pod.cgroup_id()).expect("the container's cgroup is reported");
    assert!(
        cg.path
            .as_deref()
            .is_some_and(|p| p.ends_with(&format!("cri-containerd-{id}.scope"))),
        "{:?}",
        cg.path
    );
    let container = cg.container.as_ref().expect("recognized as a container");
    assert_eq!(container.runtime, memtrace::model::Runtime::Containerd);
    assert_eq!(container.id, id);
    let pod_info = container.pod.as_ref().expect("the pod, from the slice");
    assert_eq!(pod_info.uid, uid);
    assert_eq!(pod_info.qos, "burstable");
    let log = file_at(&report, pod.cgroup_id(), "/tmp/app.log").expect("its log, by its path");
    assert_near(
        "its bytes",
        log.cached_bytes,
        8 * MIB,
        one_folio_of(&pod.upper_path("/tmp/app.log")),
    );
}

#[test]
fn explain_names_a_pods_log_written_before_memtrace_started() {
    // The story, with busybox as the logger (light enough for the VMs): a container in a
    // kubelet-style pod slice writes a log held open, and only then does memtrace start.
    let (uid, id, cgroups_path) = kubelet_placement("7e2f1a3b-4c5d-4e6f-8a9b", 0xe7a1);
    let pod = OverlayContainer::start_in_cgroup(
        &id,
        &cgroups_path,
        "exec 3>/tmp/spring.log; dd if=/dev/zero bs=1M count=48 >&3 2>/dev/null; \
         touch /tmp/done; sleep 600",
    );
    pod.wait_for("/tmp/done", STARTUP);
    let e = memtrace_tests::explain_json(&id);
    assert_eq!(e["target"]["container"]["id"].as_str(), Some(id.as_str()));
    assert_eq!(
        e["target"]["container"]["pod"]["uid"].as_str(),
        Some(uid.as_str())
    );
    let top = &e["files"][0];
    assert_eq!(
        top["path"].as_str(),
        Some("/tmp/spring.log"),
        "the log is named first: {e:#}"
    );
    let host = pod.upper_path("/tmp/spring.log");
    let mincore = resident_bytes(&File::open(&host).unwrap()).unwrap();
    let cached = top["cached_bytes"].as_u64().unwrap();
    assert_near("the log vs mincore (±5%)", cached, mincore, mincore / 20);
    assert!(cached >= 40 * MIB, "the log is 48 MiB: {cached}");
    let coverage = e["coverage"].as_f64().expect("coverage");
    assert!(
        coverage >= 0.95,
        "explain covers {:.1}% of the container's memory.stat page cache, expected ≥ 95%",
        coverage * 100.0
    );
    let holder = top["writers"].as_array().expect("writers");
    assert!(
        holder
            .iter()
            .any(|w| w["comm"] == "sleep" || w["comm"] == "sh"),
        "the process holding the log open for writing is named: {holder:?}"
    );
}
