//! The container engines the integration tests drive (Docker, podman, containerd's `ctr`),
//! started for the run when their daemons are not already up, and stopped after it. No
//! network: dockerd runs without a bridge or iptables, images are imported from a local root.

use std::{
    fs::File,
    io::{Read, Write},
    os::unix::net::UnixStream,
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

/// Starts containerd and dockerd unless their sockets answer already, and waits until they
/// answer. A socket file alone proves nothing: /run is on disk on these machines, so a daemon
/// killed with the session before leaves its socket behind, and clients then fail with
/// "connection refused" instead of a run that starts its own daemon.
pub(crate) fn start(logs: &Path) -> Result<Running> {
    std::fs::create_dir_all(logs)?;
    let mut running = Running {
        started: Vec::new(),
    };
    if !clear_unless_answering(CONTAINERD_SOCKET, containerd_answers)? {
        let config = logs.join("containerd.toml");
        std::fs::write(&config, CONTAINERD_CONFIG)?;
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&config);
        running.spawn("containerd", containerd, logs)?;
        running.wait_until_answering(CONTAINERD_SOCKET, containerd_answers, logs)?;
    }
    if !clear_unless_answering(DOCKER_SOCKET, dockerd_answers)? {
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
        running.wait_until_answering(DOCKER_SOCKET, dockerd_answers, logs)?;
    }
    Ok(running)
}

/// Whether a daemon answers on `socket`; if not, removes what a dead one left there so a new
/// one can listen (dockerd refuses to start beside a pid file naming a live process, and a
/// dead one's is overwritten).
fn clear_unless_answering(socket: &str, answers: fn(&str) -> bool) -> Result<bool> {
    if answers(socket) {
        return Ok(true);
    }
    for stale in [socket.to_string(), format!("{socket}.ttrpc")] {
        match std::fs::remove_file(&stale) {
            Ok(()) => eprintln!("xtask: {stale} did not answer; removed it (a stopped daemon's)"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("cannot remove stale {stale}")),
        }
    }
    Ok(false)
}

/// containerd speaks gRPC; a connection accepted is a daemon listening.
fn containerd_answers(socket: &str) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// dockerd answers `GET /_ping` with `OK` once it serves its API.
fn dockerd_answers(socket: &str) -> bool {
    let ping = || -> std::io::Result<bool> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"))
    };
    ping().unwrap_or(false)
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

    /// Waits for the daemon started last to answer on `socket`; fails at once if it exits.
    fn wait_until_answering(
        &mut self,
        socket: &str,
        answers: fn(&str) -> bool,
        logs: &Path,
    ) -> Result<()> {
        let Some((name, child)) = self.started.last_mut() else {
            bail!("no daemon was started to wait for");
        };
        let began = Instant::now();
        while !answers(socket) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}) before answering on {socket}; see {}/{name}.log",
                    logs.display()
                );
            }
            if began.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{name} did not answer on {socket} within 60 s; see {}/{name}.log",
                    logs.display()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
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
