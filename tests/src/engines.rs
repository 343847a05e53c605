//! Containers run by the engines people use: Docker (dockerd over containerd), podman
//! (cgroupfs manager) and containerd's own `ctr`, with an image imported from a local busybox
//! root (no network). `cargo xtask test` installs the engines and starts their daemons.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::container::build_busybox_image;

/// The image every engine runs, imported once per test process.
const IMAGE: &str = "memtrace-busybox:test";
/// Debian's docker CLI: another `docker` earlier on PATH may be too new for its daemon.
const DOCKER: &str = "/usr/bin/docker";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
    /// containerd's `ctr`, namespace `default`.
    Ctr,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Docker, Engine::Podman, Engine::Ctr];

    /// The runtime memtrace must report.
    pub fn runtime(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
            Engine::Ctr => "containerd",
        }
    }

    /// Where the engine keeps containers' writable layers on the host.
    pub fn layer_store(self) -> &'static str {
        match self {
            Engine::Docker => "/var/lib/docker/overlay2/",
            Engine::Podman => "/var/lib/containers/storage/overlay/",
            Engine::Ctr => "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/",
        }
    }
}

/// Runs `cmd` and returns its stdout, failing loudly with what it said.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (cargo xtask test installs the engines)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Imports the busybox image into every engine, once.
fn ensure_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        assert!(
            Path::new("/run/containerd/containerd.sock").exists()
                && Path::new("/var/run/docker.sock").exists(),
            "containerd and dockerd are not running: `cargo xtask test` starts them"
        );
        let root = PathBuf::from(format!(
            "/var/tmp/memtrace-tests/engine-image-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        build_busybox_image(&root);
        let tar = |importer: &str| {
            output(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("tar -C {} -c . | {importer}", root.display())),
            )
        };
        tar(&format!("{DOCKER} import - {IMAGE}"));
        tar(&format!("podman import - {IMAGE}"));
        output(Command::new("sh").arg("-c").arg(format!(
            "{DOCKER} save {IMAGE} | ctr -n default images import -"
        )));
        let _ = std::fs::remove_dir_all(&root);
    });
}

/// A container run by an engine; removed when dropped (unless already removed).
pub struct EngineContainer {
    pub engine: Engine,
    pub name: String,
    pub id: String,
    removed: bool,
}

impl EngineContainer {
    /// Starts `sh -c script` in a new container named `<name>-<pid>`, detached, no network.
    /// `bind` mounts a host directory at the same path inside.
    pub fn run(engine: Engine, name: &str, script: &str, bind: Option<&Path>) -> Self {
        ensure_images();
        let name = format!("{name}-{}", std::process::id());
        let volume = bind.map(|dir| format!("{0}:{0}", dir.display()));
        let id = match engine {
            Engine::Docker | Engine::Podman => {
                let mut cmd = match engine {
                    Engine::Docker => Command::new(DOCKER),
                    _ => Command::new("podman"),
                };
                cmd.args(["run", "-d", "--name", &name, "--network", "none"]);
                if engine == Engine::Podman {
                    // This machine's hard limits are below podman's defaults.
                    cmd.args([
                        "--cgroup-manager",
                        "cgroupfs",
                        "--ulimit",
                        "nofile=1024:1024",
                        "--ulimit",
                        "nproc=1024:1024",
                    ]);
                }
                if let Some(volume) = &volume {
                    cmd.args(["-v", volume]);
                }
                let image = match engine {
                    Engine::Podman => format!("localhost/{IMAGE}"),
                    _ => IMAGE.to_owned(),
                };
                cmd.args([image.as_str(), "sh", "-c", script]);
                output(&mut cmd)
            }
            Engine::Ctr => {
                let mut cmd = Command::new("ctr");
                cmd.args(["-n", "default", "run", "-d"]);
                if let Some(dir) = bind {
                    cmd.args([
                        "--mount",
                        &format!("type=bind,src={0},dst={0},options=rbind:rw", dir.display()),
                    ]);
                }
                cmd.args([
                    &format!("docker.io/library/{IMAGE}"),
                    &name,
                    "sh",
                    "-c",
                    script,
                ]);
                output(&mut cmd);
                name.clone()
            }
        };
        Self {
            engine,
            name,
            id,
            removed: false,
        }
    }

    /// The pid of the container's first process, as the engine says it.
    pub fn pid(&self) -> u32 {
        let text = match self.engine {
            Engine::Docker => {
                output(Command::new(DOCKER).args(["inspect", "-f", "{{.State.Pid}}", &self.id]))
            }
            Engine::Podman => {
                output(Command::new("podman").args(["inspect", "-f", "{{.State.Pid}}", &self.id]))
            }
            Engine::Ctr => {
                let tasks = output(Command::new("ctr").args(["-n", "default", "tasks", "ls"]));
                tasks
                    .lines()
                    .find_map(|l| {
                        let mut fields = l.split_whitespace();
                        (fields.next() == Some(self.name.as_str()))
                            .then(|| fields.next().map(str::to_owned))?
                    })
                    .expect("ctr lists the task")
            }
        };
        text.parse().unwrap_or_else(|_| panic!("not a pid: {text}"))
    }

    /// The container's writable layer on the host, as the engine (docker, podman) or the
    /// container's own root mount (ctr) says it: an oracle independent of memtrace.
    pub fn upper_dir(&self) -> PathBuf {
        let format = "{{.GraphDriver.Data.UpperDir}}";
        match self.engine {
            Engine::Docker => PathBuf::from(output(
                Command::new(DOCKER).args(["inspect", "-f", format, &self.id]),
            )),
            Engine::Podman => PathBuf::from(output(
                Command::new("podman").args(["inspect", "-f", format, &self.id]),
            )),
            Engine::Ctr => {
                let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid()))
                    .expect("the container's mountinfo");
                let root = mountinfo
                    .lines()
                    .find(|l| l.split_whitespace().nth(4) == Some("/"))
                    .expect("the container's root mount");
                let upper = root
                    .split([',', ' '])
                    .find_map(|o| o.strip_prefix("upperdir="))
                    .expect("an overlay root with an upperdir");
                PathBuf::from(upper)
            }
        }
    }

    /// Waits until `path` exists inside the container (the script's way to say it is done).
    pub fn wait_for(&self, path: &str, timeout: Duration) {
        let inside = PathBuf::from(format!("/proc/{}/root{path}", self.pid()));
        let started = Instant::now();
        while !inside.exists() {
            assert!(
                started.elapsed() < timeout,
                "{:?} container {} did not create {path} in {timeout:?}",
                self.engine,
                self.name
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops and removes the container (its cgroup goes; cache outside its layer stays).
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let _ = match self.engine {
            Engine::Docker => Command::new(DOCKER).args(["rm", "-f", &self.id]).output(),
            Engine::Podman => Command::new("podman")
                .args(["rm", "-f", "-t", "0", &self.id])
                .output(),
            Engine::Ctr => {
                let _ = Command::new("ctr")
                    .args(["-n", "default", "tasks", "kill", "-s", "KILL", &self.name])
                    .output();
                for _ in 0..50 {
                    let done = Command::new("ctr")
                        .args(["-n", "default", "tasks", "delete", &self.name])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if done {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                Command::new("ctr")
                    .args(["-n", "default", "containers", "delete", &self.name])
                    .output()
            }
        };
    }
}

impl Drop for EngineContainer {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The images containerd's CRI needs, in its `k8s.io` namespace: the busybox image, and the
/// same tagged as the configured sandbox (pause) image, sleeping; once per test process.
pub fn ensure_cri_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    ensure_images();
    DONE.get_or_init(|| {
        let root = PathBuf::from(format!(
            "/var/tmp/memtrace-tests/pause-image-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        build_busybox_image(&root);
        output(Command::new("sh").arg("-c").arg(format!(
            "tar -C {} -c . | {DOCKER} import --change 'CMD [\"/bin/sleep\",\"1000000\"]' - {PAUSE_IMAGE}",
            root.display()
        )));
        let _ = std::fs::remove_dir_all(&root);
        for image in [IMAGE, PAUSE_IMAGE] {
            output(Command::new("sh").arg("-c").arg(format!(
                "{DOCKER} save {image} | ctr -n k8s.io images import -"
            )));
        }
    });
}

/// The sandbox image containerd is configured with (`cargo xtask test` writes its config).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";
/// The busybox image as CRI names it.
pub const CRI_IMAGE: &str = "docker.io/library/memtrace-busybox:test";
