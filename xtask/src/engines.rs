//! The container engines the integration tests drive (Docker, podman, containerd's `ctr`),
//! started for the run when their daemons are not already up, and stopped after it. No
//! network: dockerd runs without a bridge or iptables, images are imported from a local root.

use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// containerd's CRI as the tests drive it: the sandbox image is one they import (no
/// registry), and root here lacks CAP_SYS_RESOURCE, so a sandbox's oom_score_adj (-998) is
/// kept to what the process may set instead of failing runc's child.
const CONTAINERD_CONFIG: &str = r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  restrict_oom_score_adj = true
"#;

/// Daemons this run started; stopped when dropped.
pub(crate) struct Running {
    started: Vec<(&'static str, Child)>,
}

/// Starts containerd and dockerd unless their sockets answer already, and waits for them.
pub(crate) fn start(logs: &Path) -> Result<Running> {
    std::fs::create_dir_all(logs)?;
    let mut running = Running {
        started: Vec::new(),
    };
    if !Path::new(CONTAINERD_SOCKET).exists() {
        let config = logs.join("containerd.toml");
        std::fs::write(&config, CONTAINERD_CONFIG)?;
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&config);
        running.spawn("containerd", containerd, logs)?;
        wait_for_socket(CONTAINERD_SOCKET, "containerd", logs)?;
    }
    if !Path::new(DOCKER_SOCKET).exists() {
        let mut dockerd = Command::new("dockerd");
        dockerd.args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            "--containerd",
            CONTAINERD_SOCKET,
        ]);
        running.spawn("dockerd", dockerd, logs)?;
        wait_for_socket(DOCKER_SOCKET, "dockerd", logs)?;
    }
    Ok(running)
}

impl Running {
    fn spawn(&mut self, name: &'static str, mut cmd: Command, logs: &Path) -> Result<()> {
        let log = File::create(logs.join(format!("{name}.log")))?;
        eprintln!(
            "xtask: starting {name} for the container-engine tests (log in {})",
            logs.display()
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.started.push((name, child));
        Ok(())
    }
}

fn wait_for_socket(socket: &str, name: &str, logs: &Path) -> Result<()> {
    let started = Instant::now();
    while !Path::new(socket).exists() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "{name} did not open {socket} within 60 s; see {}/{name}.log",
                logs.display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

impl Drop for Running {
    fn drop(&mut self) {
        // dockerd first: it talks to containerd as it stops.
        for (name, child) in self.started.iter_mut().rev() {
            // SAFETY: a plain kill of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let began = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && began.elapsed() < Duration::from_secs(20)
            {
                thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("xtask: {name} did not stop on SIGTERM; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
