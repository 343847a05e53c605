//! Containers of the engines people use (Docker, podman, containerd's `ctr`), found by the
//! engine's own name and id: runtime, the path inside the container, the host path in the
//! engine's layer store (the engine's own `inspect` is the oracle), bytes equal to fincore,
//! `explain NAME`, `watch --container NAME`, and a removed container's cache kept under its
//! name.

use std::{fs, path::Path, time::Duration};

use memtrace_tests::{
    cgroup_in,
    engines::{Engine, EngineContainer},
    explain_json,
    files::fincore_bytes,
    start_tracer, watch_container_json,
};

const STARTUP: Duration = Duration::from_secs(60);

fn check_engine(engine: Engine) {
    let volume = Path::new("/var/tmp/memtrace-tests").join(format!(
        "engine-volume-{}-{}",
        engine.runtime(),
        std::process::id()
    ));
    fs::create_dir_all(&volume).unwrap();
    let mut tracer = start_tracer();
    let mut container = EngineContainer::run(
        engine,
        &format!("mt-{}", engine.runtime()),
        &format!(
            "dd if=/dev/zero of=/tmp/spring.log bs=1M count=24 2>/dev/null; \
             dd if=/dev/zero of={}/kept.log bs=1M count=8 2>/dev/null; touch /tmp/done; sleep 600",
            volume.display()
        ),
        Some(&volume),
    );
    container.wait_for("/tmp/done", STARTUP);
    let upper = container.upper_dir();
    assert!(
        upper.starts_with(engine.layer_store()),
        "{engine:?}: the engine puts the layer at {}",
        upper.display()
    );

    // watch --container NAME, as a user runs it: only this container, named by the engine.
    let cgroup = &watch_container_json(&container.name);
    let found = &cgroup["container"];
    assert_eq!(
        found["name"],
        container.name.as_str(),
        "{engine:?}: {found}"
    );
    assert_eq!(found["id"], container.id.as_str(), "{engine:?}: {found}");
    assert_eq!(found["runtime"], engine.runtime(), "{engine:?}: {found}");
    assert_eq!(found["verified"], true, "{engine:?}: {found}");
    let log = cgroup["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/tmp/spring.log")
        .unwrap_or_else(|| panic!("{engine:?}: /tmp/spring.log by the path inside: {cgroup}"));
    let host = upper.join("tmp/spring.log");
    assert_eq!(
        log["host_path"].as_str(),
        host.to_str(),
        "{engine:?}: host path in the engine's layer store"
    );
    assert_eq!(
        log["cached_bytes"].as_u64(),
        Some(fincore_bytes(&host)),
        "{engine:?}: bytes equal to fincore"
    );

    // explain NAME.
    let explained = explain_json(&container.name);
    assert_eq!(explained["target"]["kind"], "container", "{explained}");
    assert_eq!(
        explained["target"]["container"]["name"],
        container.name.as_str(),
        "{engine:?}: explain finds it by name"
    );
    // ... and measures the dirty bytes of the files it lists (issue 19 saw `?` for Docker).
    let listed = explained["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/tmp/spring.log")
        .unwrap_or_else(|| panic!("{engine:?}: explain lists the log: {explained}"));
    assert!(
        listed["dirty_bytes"]
            .as_u64()
            .is_some_and(|dirty| dirty <= fincore_bytes(&host)),
        "{engine:?}: the log's dirty bytes are measured: {listed}"
    );

    // Removed: its cgroup goes, the cache of its volume file stays, under its name.
    let cgroup_id = cgroup["id"].as_u64().expect("cgroup id");
    tracer.snapshot().expect("snapshot");
    container.remove();
    let report = tracer.snapshot().expect("snapshot");
    let kept = volume.join("kept.log");
    let gone = cgroup_in(&report, cgroup_id)
        .unwrap_or_else(|| panic!("{engine:?}: the removed container's cgroup is still reported"));
    let named = gone.container.as_ref().and_then(|c| c.name.as_deref());
    assert_eq!(
        named,
        Some(container.name.as_str()),
        "{engine:?}: still under its name"
    );
    let file = gone
        .files
        .iter()
        .find(|f| f.host_path.as_deref().or(f.path.as_deref()) == kept.to_str())
        .unwrap_or_else(|| panic!("{engine:?}: the volume file: {:?}", gone.files));
    assert_eq!(
        file.cached_bytes,
        fincore_bytes(&kept),
        "{engine:?}: its bytes"
    );
    let _ = fs::remove_dir_all(&volume);
}

#[test]
fn a_docker_container_is_found_by_its_name_with_its_layer_and_bytes() {
    check_engine(Engine::Docker);
}

#[test]
fn a_podman_container_is_found_by_its_name_with_its_layer_and_bytes() {
    check_engine(Engine::Podman);
}

#[test]
fn a_containerd_ctr_container_is_found_by_its_name_with_its_layer_and_bytes() {
    check_engine(Engine::Ctr);
}
