//! Cgroups → containers and pods, offline, from cgroup paths and the runtimes' files on the node.
//!
//! The cgroup path says which runtime made the cgroup and the container id (and, under
//! Kubernetes, the pod UID and QoS class). Names come from runtime state: runc's state
//! directories (used by runc, containerd, Docker and CRI-O alike) lead to each container's OCI
//! bundle, whose annotations carry Kubernetes pod and container names; Docker's and podman's
//! own stores carry theirs. What each runtime leaves where is written once, in [`RUNTIMES`].

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use super::open::read_capped;
use crate::model::{Container, Pod, Runtime};

/// Where a runtime's container names come from, besides OCI annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NameSource {
    /// Only the bundle's Kubernetes annotations.
    Annotations,
    /// Docker's `config.v2.json`.
    DockerConfig,
    /// podman's `containers.json`.
    PodmanStore,
    /// Plain runc: the id it was started with is the only name.
    Id,
}

/// What one runtime leaves on a node.
struct RuntimeSpec {
    runtime: Runtime,
    /// Prefixes of its leaf cgroup (`<prefix><id>[.scope]`), as the systemd driver names them.
    leaf_prefixes: &'static [&'static str],
    /// runc-style state directories (`<dir>/<id>/state.json`); `/*` expands one level.
    state_roots: &'static [&'static str],
    names: NameSource,
}

/// Every runtime memtrace recognizes. Longer leaf prefixes come first (`crio-conmon-` before
/// `crio-`).
const RUNTIMES: &[RuntimeSpec] = &[
    RuntimeSpec {
        runtime: Runtime::Containerd,
        leaf_prefixes: &["cri-containerd-"],
        state_roots: &["/run/containerd/runc/*"],
        names: NameSource::Annotations,
    },
    RuntimeSpec {
        runtime: Runtime::CriOConmon,
        leaf_prefixes: &["crio-conmon-"],
        state_roots: &[],
        names: NameSource::Annotations,
    },
    RuntimeSpec {
        runtime: Runtime::CriO,
        leaf_prefixes: &["crio-"],
        state_roots: &[],
        names: NameSource::Annotations,
    },
    RuntimeSpec {
        runtime: Runtime::Docker,
        leaf_prefixes: &["docker-"],
        state_roots: &["/run/docker/runtime-runc/*"],
        names: NameSource::DockerConfig,
    },
    RuntimeSpec {
        runtime: Runtime::PodmanConmon,
        leaf_prefixes: &["libpod-conmon-"],
        state_roots: &[],
        names: NameSource::PodmanStore,
    },
    RuntimeSpec {
        runtime: Runtime::Podman,
        leaf_prefixes: &["libpod-"],
        state_roots: &[],
        names: NameSource::PodmanStore,
    },
    RuntimeSpec {
        runtime: Runtime::Runc,
        leaf_prefixes: &[],
        state_roots: &["/run/runc", "/run/crun"],
        names: NameSource::Id,
    },
];

fn spec_of(runtime: Runtime) -> Option<&'static RuntimeSpec> {
    RUNTIMES.iter().find(|s| s.runtime == runtime)
}

/// What a cgroup path alone says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub runtime: Runtime,
    pub id: String,
    pub pod: Option<(String, String)>, // (uid, qos)
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Recognizes the container cgroup naming schemes of Kubernetes (systemd and cgroupfs
/// drivers, all QoS classes), containerd, CRI-O, Docker and podman.
pub fn parse_cgroup_path(path: &str) -> Option<PathInfo> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let leaf = *parts.last()?;
    let (runtime, id) = container_leaf(leaf, parts.get(parts.len().wrapping_sub(2)).copied())?;
    let pod = parts.iter().rev().skip(1).find_map(|p| pod_of(p, &parts));
    Some(PathInfo {
        runtime,
        id: id.to_owned(),
        pod,
    })
}

/// The runtime and id a leaf cgroup name encodes.
fn container_leaf<'a>(leaf: &'a str, parent: Option<&str>) -> Option<(Runtime, &'a str)> {
    let scope = leaf.strip_suffix(".scope").unwrap_or(leaf);
    for spec in RUNTIMES {
        for prefix in spec.leaf_prefixes {
            if let Some(id) = scope.strip_prefix(prefix) {
                return is_container_id(id).then_some((spec.runtime, id));
            }
        }
    }
    // cgroupfs drivers name the leaf by the bare id.
    if is_container_id(leaf) {
        let runtime = match parent {
            Some("docker") => Runtime::Docker,
            Some(p) if p.starts_with("pod") || p.starts_with("kubepods") => Runtime::Kubernetes,
            _ => return None,
        };
        return Some((runtime, leaf));
    }
    None
}

/// Pod UID and QoS class from a pod-level cgroup name.
fn pod_of(part: &str, all: &[&str]) -> Option<(String, String)> {
    let qos_of = |name: &str| -> String {
        for qos in ["burstable", "besteffort"] {
            if name.contains(&format!("kubepods-{qos}")) || all.contains(&qos) {
                return qos.to_owned();
            }
        }
        "guaranteed".to_owned()
    };
    // systemd: kubepods-burstable-pod<uid_>.slice or kubepods-pod<uid_>.slice
    if let Some(slice) = part.strip_suffix(".slice") {
        let (_, uid) = slice.rsplit_once("pod")?;
        if slice.starts_with("kubepods") && uid.len() >= 32 {
            return Some((uid.replace('_', "-"), qos_of(slice)));
        }
        return None;
    }
    // cgroupfs: pod<uid>
    let uid = part.strip_prefix("pod")?;
    (uid.len() >= 32 && all.first() == Some(&"kubepods")).then(|| (uid.to_owned(), qos_of("")))
}

/// The systemd unit a non-container cgroup belongs to: its innermost `.service`/`.scope`.
pub fn systemd_unit(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        .map(str::to_owned)
}

/// Container state found in runtime directories, keyed by memory cgroup directory and by id.
#[derive(Debug, Default)]
pub struct RuntimeState {
    by_cgroup_dir: HashMap<PathBuf, Container>,
    by_id: HashMap<String, Container>,
}

impl RuntimeState {
    /// Reads every runtime's state on this node. Unreadable entries are skipped.
    pub fn scan() -> Self {
        let mut state = Self::default();
        for spec in RUNTIMES {
            for root in spec.state_roots {
                for dir in expand(root) {
                    let Ok(entries) = fs::read_dir(&dir) else {
                        continue;
                    };
                    for entry in entries.flatten() {
                        if let Some((container, cgroup_dirs)) =
                            read_runc_state(&entry.path(), spec.runtime)
                        {
                            for dir in cgroup_dirs {
                                state.by_cgroup_dir.insert(dir, container.clone());
                            }
                            state.by_id.insert(container.id.clone(), container);
                        }
                    }
                }
            }
        }
        state
    }

    /// The container whose memory cgroup is the directory `dir`.
    pub fn by_cgroup_dir(&self, dir: &Path) -> Option<&Container> {
        self.by_cgroup_dir.get(dir)
    }

    /// Every container with its memory cgroup directories.
    pub fn by_cgroup(&self) -> impl Iterator<Item = (&Path, &Container)> {
        self.by_cgroup_dir.iter().map(|(dir, c)| (dir.as_path(), c))
    }

    pub fn by_id(&self, id: &str) -> Option<&Container> {
        self.by_id.get(id)
    }

    /// The memory cgroup directory of the container whose root filesystem is `rootfs`.
    pub fn memcg_dir_of_rootfs(&self, rootfs: &Path) -> Option<PathBuf> {
        self.by_cgroup_dir
            .iter()
            .find(|(_, c)| c.rootfs.as_deref().is_some_and(|r| Path::new(r) == rootfs))
            .map(|(dir, _)| dir.clone())
    }

    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.by_id.values()
    }
}

/// `/run/containerd/runc/*` → each namespace directory.
fn expand(pattern: &str) -> Vec<PathBuf> {
    match pattern.strip_suffix("/*") {
        Some(parent) => fs::read_dir(parent)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
        None => vec![PathBuf::from(pattern)],
    }
}

/// Largest runtime state or OCI config memtrace reads: real ones are a few KiB.
const STATE_FILE_CAP: u64 = 4 << 20;

/// A runc `state.json`: the container, and its memory cgroup directories (v1 and v2).
fn read_runc_state(dir: &Path, runtime: Runtime) -> Option<(Container, Vec<PathBuf>)> {
    let text = read_capped(&dir.join("state.json"), STATE_FILE_CAP)?;
    let state = parse_runc_state(&text, runtime)?;
    let mut container = state.container;
    if let Some(bundle) = state.bundle {
        // The engine that asked runc for the container, before its annotations (which may
        // say it is Kubernetes' through that engine).
        if let Some(engine) = engine_of_bundle(&bundle) {
            container.runtime = engine;
        }
        if let Some(config) = read_capped(&bundle.join("config.json"), STATE_FILE_CAP) {
            apply_annotations(&mut container, &config);
        }
    }
    let runtime = container.runtime;
    name_from_runtime(&mut container, runtime);
    Some((container, state.cgroup_dirs))
}

/// The engine behind a runc container, from where its OCI bundle lives: runc keeps its state
/// wherever the engine's runtime told it to (podman's and CRI-O's in `/run/runc`, Docker's
/// in containerd's), but each engine keeps bundles in a place of its own.
pub fn engine_of_bundle(bundle: &Path) -> Option<Runtime> {
    let text = bundle.to_str()?;
    if text.contains("/overlay-containers/") && text.ends_with("/userdata") {
        return Some(Runtime::Podman);
    }
    // containerd's task directories, by namespace: Docker uses `moby`.
    let namespace = text
        .strip_prefix("/run/containerd/io.containerd.runtime.v2.task/")
        .or_else(|| text.strip_prefix("/run/containerd/io.containerd.runtime.v1.linux/"))
        .and_then(|rest| rest.split('/').next())?;
    Some(match namespace {
        "moby" => Runtime::Docker,
        _ => Runtime::Containerd,
    })
}

/// What a runc `state.json` says.
#[derive(Debug, PartialEq, Eq)]
pub struct RuncState {
    pub container: Container,
    pub cgroup_dirs: Vec<PathBuf>,
    /// The OCI bundle, whose config.json carries annotations.
    pub bundle: Option<PathBuf>,
}

/// Parses a runc `state.json` (untrusted text: anything malformed is `None`).
pub fn parse_runc_state(text: &str, runtime: Runtime) -> Option<RuncState> {
    let state: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = state["id"].as_str()?.to_owned();
    let mut cgroup_dirs = Vec::new();
    if let Some(paths) = state["cgroup_paths"].as_object() {
        for key in ["memory", ""] {
            if let Some(p) = paths.get(key).and_then(|p| p.as_str()) {
                cgroup_dirs.push(PathBuf::from(p));
            }
        }
    }
    let config = &state["config"];
    let bundle = config["labels"].as_array().and_then(|labels| {
        labels
            .iter()
            .filter_map(|l| l.as_str())
            .find_map(|l| l.strip_prefix("bundle="))
            .map(PathBuf::from)
    });
    let container = Container {
        runtime,
        id,
        rootfs: config["rootfs"].as_str().map(str::to_owned),
        verified: true,
        ..Container::default()
    };
    Some(RuncState {
        container,
        cgroup_dirs,
        bundle,
    })
}

/// Fills a missing name from `runtime`'s own store.
fn name_from_runtime(container: &mut Container, runtime: Runtime) {
    if container.name.is_some() {
        return;
    }
    container.name = match spec_of(runtime).map(|s| s.names) {
        Some(NameSource::DockerConfig) => docker_name(&container.id),
        Some(NameSource::PodmanStore) => podman_name(&container.id),
        Some(NameSource::Id) => Some(container.id.clone()),
        // Outside Kubernetes (`ctr run`, nerdctl without a name), the id is the name the
        // user gave.
        Some(NameSource::Annotations)
            if runtime == Runtime::Containerd && container.pod.is_none() =>
        {
            Some(container.id.clone())
        }
        Some(NameSource::Annotations) | None => None,
    };
}

/// Kubernetes names from an OCI bundle's config.json annotations (containerd CRI and CRI-O
/// spellings).
pub fn apply_annotations(container: &mut Container, config: &str) {
    let Ok(config) = serde_json::from_str::<serde_json::Value>(config) else {
        return;
    };
    let annotations = &config["annotations"];
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| annotations[*k].as_str().map(str::to_owned))
    };
    if let Some(name) = get(&[
        "io.kubernetes.cri.container-name",
        "io.kubernetes.container.name",
    ]) {
        container.name = Some(name);
    }
    if let Some(uid) = get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]) {
        container.pod = Some(Pod {
            namespace: get(&[
                "io.kubernetes.cri.sandbox-namespace",
                "io.kubernetes.pod.namespace",
            ]),
            name: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
            uid,
            qos: String::new(),
        });
    }
    // CRI-O keeps its runc state in /run/runc too; its annotations give it away.
    if annotations["io.kubernetes.pod.uid"].is_string() {
        container.runtime = Runtime::CriO;
    } else if annotations["io.kubernetes.cri.sandbox-uid"].is_string() {
        container.runtime = Runtime::Containerd;
    }
}

/// Docker's name for a container, from its config (`"/web"` → `web`).
fn docker_name(id: &str) -> Option<String> {
    let path = format!("/var/lib/docker/containers/{id}/config.v2.json");
    let text = read_capped(Path::new(&path), STATE_FILE_CAP)?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config["Name"]
        .as_str()
        .map(|n| n.trim_start_matches('/').to_owned())
}

/// Podman's names, from its container store.
fn podman_name(id: &str) -> Option<String> {
    let text = read_capped(
        Path::new("/var/lib/containers/storage/overlay-containers/containers.json"),
        STATE_FILE_CAP,
    )?;
    let list: serde_json::Value = serde_json::from_str(&text).ok()?;
    list.as_array()?
        .iter()
        .find(|c| c["id"].as_str() == Some(id))
        .and_then(|c| c["names"][0].as_str().map(str::to_owned))
}

/// The container behind a memory cgroup: runtime state first, the path's own evidence after.
pub fn identify(path: &str, cgroup_dir: Option<&Path>, state: &RuntimeState) -> Option<Container> {
    let from_path = parse_cgroup_path(path);
    // Only runtime state that names this very cgroup directory verifies a container. A cgroup
    // whose name carries an id (`docker-<id>.scope`) only claims it: anyone who can make a
    // cgroup can name it so.
    let mut container = cgroup_dir
        .and_then(|dir| state.by_cgroup_dir(dir).cloned())
        .or_else(|| {
            let claimed = from_path.as_ref()?;
            let mut container = state.by_id(&claimed.id).cloned().unwrap_or(Container {
                runtime: claimed.runtime,
                id: claimed.id.clone(),
                ..Container::default()
            });
            container.verified = false;
            Some(container)
        })?;
    // runc state says runc for any engine that keeps it where runc alone does (podman with
    // cgroupfs in `/run/runc`): the engine the path names is the better answer.
    if let Some(PathInfo { runtime, .. }) = &from_path {
        if container.runtime == Runtime::Runc
            && matches!(runtime, Runtime::Docker | Runtime::Podman)
        {
            container.runtime = *runtime;
            container.name = None;
        }
    }
    if let Some(PathInfo {
        runtime,
        pod: Some((uid, qos)),
        ..
    }) = &from_path
    {
        let pod = container.pod.get_or_insert_with(|| Pod {
            uid: uid.clone(),
            ..Pod::default()
        });
        pod.qos = qos.clone();
        if matches!(container.runtime, Runtime::Runc | Runtime::Kubernetes) {
            container.runtime = *runtime;
        }
    }
    if matches!(container.runtime, Runtime::Docker | Runtime::Podman) {
        let runtime = container.runtime;
        name_from_runtime(&mut container, runtime);
    }
    Some(container)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c2d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";
    const UID: &str = "5d1c6c4e-8f2a-4b3c-9d0e-1f2a3b4c5d6e";

    fn info(path: &str) -> PathInfo {
        parse_cgroup_path(path).unwrap_or_else(|| panic!("not recognized: {path}"))
    }

    #[test]
    fn kubernetes_systemd_driver_containerd_all_qos() {
        let uid_ = UID.replace('-', "_");
        for (qos, slice) in [
            (
                "burstable",
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
                ),
            ),
            (
                "besteffort",
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
                ),
            ),
            (
                "guaranteed",
                format!("/kubepods.slice/kubepods-pod{uid_}.slice"),
            ),
        ] {
            let i = info(&format!("{slice}/cri-containerd-{ID}.scope"));
            assert_eq!(i.runtime, "containerd");
            assert_eq!(i.id, ID);
            assert_eq!(i.pod, Some((UID.to_owned(), qos.to_owned())), "{qos}");
        }
    }

    #[test]
    fn kubernetes_systemd_driver_crio() {
        let uid_ = UID.replace('-', "_");
        let i = info(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"
        ));
        assert_eq!((i.runtime, i.id.as_str()), (Runtime::CriO, ID));
        assert_eq!(i.pod.unwrap().1, "burstable");
        assert_eq!(
            info(&format!(
                "/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"
            ))
            .runtime,
            "cri-o-conmon"
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver_all_qos() {
        for (qos, prefix) in [
            ("burstable", "/kubepods/burstable"),
            ("besteffort", "/kubepods/besteffort"),
            ("guaranteed", "/kubepods"),
        ] {
            let i = info(&format!("{prefix}/pod{UID}/{ID}"));
            assert_eq!(i.id, ID);
            assert_eq!(i.pod, Some((UID.to_owned(), qos.to_owned())), "{qos}");
        }
        let crio = info(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}"));
        assert_eq!(crio.runtime, "cri-o");
    }

    #[test]
    fn docker_and_podman() {
        assert_eq!(
            info(&format!("/system.slice/docker-{ID}.scope")).runtime,
            "docker"
        );
        assert_eq!(info(&format!("/docker/{ID}")).runtime, "docker");
        assert_eq!(
            info(&format!("/machine.slice/libpod-{ID}.scope")).runtime,
            "podman"
        );
        assert_eq!(
            info(&format!("/libpod_parent/libpod-{ID}")).runtime,
            "podman"
        );
        assert!(info(&format!("/docker/{ID}")).pod.is_none());
    }

    #[test]
    fn non_containers_are_not_recognized() {
        for path in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/kubepods.slice",
            "/docker",
            "/memtrace-tests/writer-12",
        ] {
            assert_eq!(parse_cgroup_path(path), None, "{path}");
        }
        assert_eq!(
            systemd_unit("/system.slice/sshd.service").as_deref(),
            Some("sshd.service")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(systemd_unit("/memtrace-tests/x"), None);
    }

    #[test]
    fn identify_merges_path_and_state() {
        let uid_ = UID.replace('-', "_");
        let path = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope");
        let c = identify(&path, None, &RuntimeState::default()).unwrap();
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.pod.as_ref().unwrap().uid, UID);
        assert_eq!(c.pod.as_ref().unwrap().qos, "besteffort");
        assert_eq!(c.name, None);

        let mut state = RuntimeState::default();
        let named = Container {
            runtime: Runtime::Runc,
            id: "web-1".into(),
            name: Some("web-1".into()),
            ..Container::default()
        };
        state.by_cgroup_dir.insert(
            PathBuf::from("/sys/fs/cgroup/memory/apps/web-1"),
            named.clone(),
        );
        let found = identify(
            "/apps/web-1",
            Some(Path::new("/sys/fs/cgroup/memory/apps/web-1")),
            &state,
        );
        assert_eq!(found, Some(named));
        assert_eq!(
            identify(
                "/apps/other",
                Some(Path::new("/sys/fs/cgroup/memory/apps/other")),
                &state
            ),
            None
        );
    }

    #[test]
    fn the_engine_is_told_by_where_it_keeps_the_bundle() {
        let engine = |p: &str| engine_of_bundle(Path::new(p));
        assert_eq!(
            engine(&format!(
                "/var/lib/containers/storage/overlay-containers/{ID}/userdata"
            )),
            Some(Runtime::Podman)
        );
        assert_eq!(
            engine(&format!(
                "/run/containerd/io.containerd.runtime.v2.task/moby/{ID}"
            )),
            Some(Runtime::Docker)
        );
        assert_eq!(
            engine("/run/containerd/io.containerd.runtime.v2.task/default/web"),
            Some(Runtime::Containerd)
        );
        assert_eq!(engine("/srv/bundles/web"), None);
    }

    #[test]
    fn an_engine_named_by_the_path_wins_over_runc_state() {
        // podman with the cgroupfs manager keeps runc's state in /run/runc.
        let dir = PathBuf::from(format!("/sys/fs/cgroup/memory/libpod_parent/libpod-{ID}"));
        let mut state = RuntimeState::default();
        state.by_cgroup_dir.insert(
            dir.clone(),
            Container {
                runtime: Runtime::Runc,
                id: ID.into(),
                name: Some(ID.into()),
                verified: true,
                ..Container::default()
            },
        );
        let found = identify(&format!("/libpod_parent/libpod-{ID}"), Some(&dir), &state).unwrap();
        assert_eq!(found.runtime, "podman");
        assert!(found.verified, "still verified by the runtime's state");
        assert_ne!(
            found.name.as_deref(),
            Some(ID),
            "the id is not podman's name"
        );
    }
}
