//! Real OCI containers under runc, on an overlay root laid out as engines lay it out: a
//! read-only image layer (busybox) below, the container's writable layer above.

use std::{
    fs,
    os::unix::fs::{symlink, MetadataExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

const BASE: &str = "/var/tmp/memtrace-tests/containers";
/// Applets the test scripts use, linked to busybox in the image layer.
const APPLETS: &[&str] = &[
    "sh", "dd", "sleep", "rm", "touch", "cat", "mv", "ls", "java",
];

/// A running container; killed, deleted and unmounted when dropped.
pub struct OverlayContainer {
    pub id: String,
    /// The image layer (lowerdir).
    pub image: PathBuf,
    /// The container's writable layer (upperdir).
    pub upper: PathBuf,
    /// The overlay mount: the container's root filesystem.
    pub rootfs: PathBuf,
    /// runc's `cgroupsPath`: `/memtrace-tests/<id>`, or where a kubelet would put it.
    pub cgroups_path: String,
    base: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OverlayContainer {
    /// Starts container `<name>-<pid>` running `sh -c script` in cgroup
    /// `/memtrace-tests/<id>` of every controller.
    pub fn start(name: &str, script: &str) -> Self {
        Self::start_with_image(name, script, |_| {})
    }

    /// Like `start`, letting `extend` add files to the image layer first.
    pub fn start_with_image(name: &str, script: &str, extend: impl FnOnce(&Path)) -> Self {
        Self::start_with(name, script, extend, &[])
    }

    /// Like `start`, with a memory-backed tmpfs (as a Kubernetes memory `emptyDir`) mounted at
    /// each of `tmpfs` in the container only.
    pub fn start_with_tmpfs(name: &str, script: &str, tmpfs: &[&str]) -> Self {
        let id = format!("{name}-{}", std::process::id());
        Self::start_full(id, None, script, |_| {}, &[], tmpfs)
    }

    /// Starts container `id` in the cgroup `cgroups_path` (as a kubelet's systemd driver
    /// would place it: `/kubepods.slice/.../cri-containerd-<id>.scope`).
    pub fn start_in_cgroup(id: &str, cgroups_path: &str, script: &str) -> Self {
        Self::start_full(
            id.to_owned(),
            Some(cgroups_path.to_owned()),
            script,
            |_| {},
            &[],
            &[],
        )
    }

    /// Like `start_with_image`, with host directories bind-mounted read-only (host, container).
    pub fn start_with(
        name: &str,
        script: &str,
        extend: impl FnOnce(&Path),
        binds: &[(&str, &str)],
    ) -> Self {
        let id = format!("{name}-{}", std::process::id());
        Self::start_full(id, None, script, extend, binds, &[])
    }

    fn start_full(
        id: String,
        cgroups_path: Option<String>,
        script: &str,
        extend: impl FnOnce(&Path),
        binds: &[(&str, &str)],
        tmpfs: &[&str],
    ) -> Self {
        let cgroups_path = cgroups_path.unwrap_or_else(|| format!("/memtrace-tests/{id}"));
        let base = Path::new(BASE).join(&id);
        if base.exists() {
            let _ = Command::new("umount").arg(base.join("merged")).status();
            let _ = fs::remove_dir_all(&base);
        }
        let image = base.join("image/fs");
        let upper = base.join("diff");
        let work = base.join("work");
        let rootfs = base.join("merged");
        let bundle = base.join("bundle");
        for dir in [&image, &upper, &work, &rootfs, &bundle] {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        build_busybox_image(&image);
        extend(&image);
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                upper.display(),
                work.display()
            ))
            .arg(&rootfs));
        let container = Self {
            id,
            image,
            upper,
            rootfs,
            cgroups_path,
            base,
        };
        container.write_config(&bundle, script, binds, tmpfs);
        // The container inherits runc's stdio and keeps it open: give it a file, not a pipe
        // a caller would wait on.
        let log_path = container.base.join("runc.log");
        let log = fs::File::create(&log_path).expect("create runc log");
        let mut runc = Command::new("runc");
        runc.args(["run", "-d"]);
        // A VM's initramfs root cannot be pivoted away from: runc must not try.
        if root_is_initramfs() {
            runc.arg("--no-pivot");
        }
        let status = runc
            .arg("--bundle")
            .arg(&bundle)
            .arg(&container.id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .status()
            .expect("runc is required (cargo xtask setup installs it)");
        assert!(
            status.success(),
            "runc run {} failed: {}",
            container.id,
            fs::read_to_string(&log_path).unwrap_or_default()
        );
        container
    }

    fn write_config(&self, bundle: &Path, script: &str, binds: &[(&str, &str)], tmpfs: &[&str]) {
        run(Command::new("runc").args(["spec", "--bundle"]).arg(bundle));
        let path = bundle.join("config.json");
        let mut config: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        config["root"] = serde_json::json!({ "path": self.rootfs, "readonly": false });
        let process = config["process"].as_object_mut().expect("process");
        // Setting rlimits needs CAP_SYS_RESOURCE, which this machine does not grant.
        process.remove("rlimits");
        process.insert("terminal".into(), Value::Bool(false));
        process.insert("args".into(), serde_json::json!(["sh", "-c", script]));
        config["linux"]["cgroupsPath"] = Value::String(self.cgroups_path.clone());
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        for (host, inside) in binds {
            mounts.push(serde_json::json!({
                "destination": inside, "type": "bind", "source": host, "options": ["rbind", "ro"]
            }));
        }
        for inside in tmpfs {
            mounts.push(serde_json::json!({
                "destination": inside, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=128m"]
            }));
        }
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    /// The container's memory cgroup directory, from runc's state.
    pub fn memory_cgroup_dir(&self) -> PathBuf {
        let state: Value = serde_json::from_str(
            &fs::read_to_string(format!("/run/runc/{}/state.json", self.id)).expect("runc state"),
        )
        .unwrap();
        let paths = &state["cgroup_paths"];
        let dir = paths["memory"]
            .as_str()
            .or_else(|| paths[""].as_str())
            .expect("memory cgroup path");
        PathBuf::from(dir)
    }

    /// The cgroup id memtrace reports for this container.
    pub fn cgroup_id(&self) -> u64 {
        fs::metadata(self.memory_cgroup_dir())
            .expect("stat cgroup")
            .ino()
    }

    /// Host path of a file in the writable layer.
    pub fn upper_path(&self, container_path: &str) -> PathBuf {
        self.upper.join(container_path.trim_start_matches('/'))
    }

    /// Runs `sh -c script` inside the running container and waits for it.
    pub fn exec(&self, script: &str) {
        run(Command::new("runc")
            .args(["exec", &self.id, "sh", "-c", script])
            .stdin(Stdio::null()));
    }

    /// Waits until the container creates `container_path` (its "done" marker).
    pub fn wait_for(&self, container_path: &str, timeout: Duration) {
        let marker = self.upper_path(container_path);
        let start = Instant::now();
        while !marker.exists() {
            assert!(
                start.elapsed() < timeout,
                "container {} did not create {container_path} within {timeout:?}",
                self.id
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OverlayContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["kill", &self.id, "KILL"])
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            let deleted = Command::new("runc")
                .args(["delete", "-f", &self.id])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if deleted {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg(&self.rootfs).status();
        let _ = fs::remove_dir_all(&self.base);
        // runc removes the container's own cgroup; slices made for it above that stay.
        if !self.cgroups_path.starts_with("/memtrace-tests/") {
            remove_parent_cgroups(&self.cgroups_path);
        }
    }
}

/// Whether `/` is the kernel's initial rootfs (an initramfs), where pivot_root is refused.
fn root_is_initramfs() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let fs_type = line
                .split(" - ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next());
            fields.get(4) == Some(&"/") && fs_type == Some("rootfs")
        })
    })
}

/// Removes the (now empty) parents of `cgroups_path` in every mounted hierarchy.
fn remove_parent_cgroups(cgroups_path: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    let mut parent = Path::new(cgroups_path).parent();
    while let Some(dir) = parent.filter(|p| p != &Path::new("/")) {
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        for root in roots.iter().chain([PathBuf::from("/sys/fs/cgroup")].iter()) {
            let _ = fs::remove_dir(root.join(relative));
        }
        parent = dir.parent();
    }
}

/// A minimal image: static busybox and the applets the scripts use.
pub fn build_busybox_image(root: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static is required (cargo xtask setup installs it)");
    for dir in ["bin", "tmp", "proc", "dev", "sys", "etc", "usr"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    // Merged-/usr layout, so a bind-mounted host /usr brings its libraries (the JVM test).
    for (link, target) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let _ = symlink(target, root.join(link));
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        let _ = symlink("busybox", root.join("bin").join(applet));
    }
}
