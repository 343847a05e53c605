//! `cargo xtask vm-test`: the integration suite on other kernels, under qemu.
//!
//! For each kernel series it looks up Debian's newest build by name, downloads and unpacks it
//! once (cached under target/vm), builds an initramfs with busybox, bpftool, the test binaries,
//! their shared libraries and the modules for virtio disks formatted ext4, XFS and btrfs, boots
//! it under TCG with cgroup v2 and the memory controller, and reads the results from the serial
//! console. The attribution suite runs once per filesystem; the others on ext4.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::Write,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    setup::{apt_install, run},
    workspace, Tally,
};

/// Kernel series and the package-name pattern of Debian's builds of it.
pub(crate) const SERIES: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
];

/// Integration test binaries run in the guest: all but those that need setpriv, tmux,
/// Prometheus or a JVM, which the guest lacks.
const GUEST_TESTS: &[&str] = &[
    "attribution",
    "writers",
    "names",
    "observer",
    "btf_offsets",
    "tmpfs",
    "containers",
    "hits",
];
/// The suite that runs on every filesystem.
const PER_FILESYSTEM_TEST: &str = "attribution";
/// Disk filesystems in the guest: name, the mkfs command that makes one on an image file. The
/// first is the guest's /var/tmp, the others mount at /fs/<name>.
const GUEST_FILESYSTEMS: &[(&str, &[&str])] = &[
    // No metadata checksums: the guest has no modprobe to load crc32c on demand.
    ("ext4", &["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum"]),
    ("xfs", &["mkfs.xfs", "-q", "-f"]),
    ("btrfs", &["mkfs.btrfs", "-q", "-f"]),
];
/// Modules the guest loads for its disks: virtio block over PCI and the filesystems (their
/// dependencies, such as crc32c and the RAID helpers btrfs links, come with them).
const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "xfs",
    "btrfs",
    // Container roots.
    "overlay",
];
/// A guest's whole suite takes about 10 minutes; past 15 it has hung, and CI's 90 minutes must
/// hold both kernels. `--repeat` multiplies it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Which guest tests run: all of them once by default; a part, many times over, to chase a
/// failure that shows once in many runs.
#[derive(clap::Args)]
pub(crate) struct Selection {
    /// Only this suite (one of the guest suites, such as `attribution`).
    #[arg(long)]
    suite: Option<String>,
    /// Only the per-filesystem suite's runs on this filesystem (`ext4`, `xfs`, `btrfs`).
    #[arg(long)]
    filesystem: Option<String>,
    /// Only tests whose names contain this.
    #[arg(long)]
    filter: Option<String>,
    /// Run the selection this many times in one boot.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            suite: None,
            filesystem: None,
            filter: None,
            repeat: 1,
        }
    }
}

impl Selection {
    fn check(&self) -> Result<()> {
        if let Some(suite) = &self.suite {
            if !GUEST_TESTS.contains(&suite.as_str()) {
                bail!("no guest suite {suite:?}; the suites are {GUEST_TESTS:?}");
            }
        }
        if let Some(fs) = &self.filesystem {
            if !GUEST_FILESYSTEMS.iter().any(|(name, _)| name == fs) {
                bail!("no guest filesystem {fs:?}; use ext4, xfs or btrfs");
            }
        }
        if let Some(filter) = &self.filter {
            // It goes into the guest's shell script as one word.
            if filter.is_empty()
                || !filter
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            {
                bail!("--filter takes a test name or part of one (letters, digits, _ and :)");
            }
        }
        if self.repeat == 0 {
            bail!("--repeat must be at least 1");
        }
        Ok(())
    }

    /// The guest's `run_suite SUITE FILESYSTEM` lines, in order.
    fn runs(&self) -> String {
        let wanted = |suite: &str, fs: &str| {
            self.suite.as_deref().is_none_or(|s| s == suite)
                && self.filesystem.as_deref().is_none_or(|f| f == fs)
        };
        let (first_fs, _) = GUEST_FILESYSTEMS[0];
        let mut runs = Vec::new();
        for suite in GUEST_TESTS.iter().filter(|s| wanted(s, first_fs)) {
            runs.push(format!("run_suite {suite} {first_fs}"));
        }
        for (fs, _) in &GUEST_FILESYSTEMS[1..] {
            if wanted(PER_FILESYSTEM_TEST, fs) {
                runs.push(format!("run_suite {PER_FILESYSTEM_TEST} {fs}"));
            }
        }
        runs.join("\n")
    }
}

/// Runs the guest suite on every series (or `only` one); prints a pass/fail line per kernel and
/// returns the guests' test counts. Fails when any kernel fails.
pub(crate) fn vm_test(only: Option<&str>, selection: &Selection) -> Result<Tally> {
    selection.check()?;
    ensure_tools()?;
    let cache = workspace().join("target/vm");
    fs::create_dir_all(&cache)?;
    let binaries = build_guest_binaries()?;
    let mut failed = Vec::new();
    let mut total = Tally {
        success: true,
        ..Tally::default()
    };
    for (series, pattern) in SERIES.iter().filter(|(s, _)| only.is_none_or(|o| o == *s)) {
        let started = Instant::now();
        let outcome = run_series(series, pattern, &cache, &binaries, selection);
        let seconds = started.elapsed().as_secs();
        if let Ok(result) = &outcome {
            total.passed += result.tests_passed;
            total.failed += result.tests_failed;
        }
        match outcome {
            Ok(result) if result.passed => {
                println!(
                    "vm {series} ({}): PASS, {} tests passed, {seconds}s",
                    result.release, result.tests_passed
                );
                println!(
                    "[{series}] hooks: {}; filesystems: {}; suites: {} ({PER_FILESYSTEM_TEST} on each filesystem)",
                    result.hooks,
                    result.filesystems,
                    GUEST_TESTS.join(" ")
                );
            }
            Ok(result) => {
                println!(
                    "vm {series} ({}): FAIL, {} passed, {} failed, {seconds}s; log: {}",
                    result.release,
                    result.tests_passed,
                    result.tests_failed,
                    result.log.display()
                );
                failed.push(series.to_string());
            }
            Err(err) => {
                println!("vm {series}: FAIL: {err:#}");
                failed.push(series.to_string());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "VM tests failed on {} ({} guest tests passed, {} failed)",
            failed.join(", "),
            total.passed,
            total.failed
        );
    }
    Ok(total)
}

fn ensure_tools() -> Result<()> {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("bpftool", "bpftool"),
        ("runc", "runc"),
        ("xz", "xz-utils"),
        ("zstd", "zstd"),
    ] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            eprintln!("xtask: installing {package}: the VM tests need {tool}");
            missing.push(package);
        }
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        eprintln!("xtask: installing busybox-static: the guest's userland");
        missing.push("busybox-static");
    }
    apt_install(&missing)
}

/// Test binaries plus helpers they name by absolute path, built for the host (the guest runs
/// the same x86-64 userland, with the libraries copied in).
struct GuestBinaries {
    tests: Vec<(String, PathBuf)>,
    /// Files the tests run by compile-time path (`CARGO_BIN_EXE_*`): copied to the same path.
    helpers: Vec<PathBuf>,
}

fn build_guest_binaries() -> Result<GuestBinaries> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace())
        .args([
            "test",
            "--locked",
            "--no-run",
            "-p",
            "memtrace-tests",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit());
    for test in GUEST_TESTS {
        cmd.args(["--test", test]);
    }
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if GUEST_TESTS.contains(&name) && message["profile"]["test"] == true {
            tests.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    if tests.len() != GUEST_TESTS.len() {
        bail!(
            "expected test binaries {GUEST_TESTS:?}, found {:?}",
            tests.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
    }
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace())
            .args(["build", "--locked", "-p", "memtrace", "--bin", "memtrace"]),
    )?;
    let helpers = vec![
        workspace().join("target/debug/rate-writer"),
        workspace().join("target/debug/shm-holder"),
        workspace().join("target/debug/memtrace"),
        // The BTF offset test's independent reading of the kernel's types.
        PathBuf::from("/usr/sbin/bpftool"),
        // The containers suite's runtime.
        PathBuf::from("/usr/sbin/runc"),
    ];
    for helper in &helpers {
        if !helper.exists() {
            bail!("helper {} was not built", helper.display());
        }
    }
    Ok(GuestBinaries { tests, helpers })
}

struct SeriesResult {
    release: String,
    /// The guest's hooks, as `memtrace doctor` printed them.
    hooks: String,
    /// The filesystems the guest mounted and ran the attribution suite on.
    filesystems: String,
    passed: bool,
    tests_passed: u64,
    tests_failed: u64,
    log: PathBuf,
}

fn run_series(
    series: &str,
    pattern: &str,
    cache: &Path,
    binaries: &GuestBinaries,
    selection: &Selection,
) -> Result<SeriesResult> {
    let package =
        newest_package(pattern).with_context(|| format!("finding Debian's {series} kernel"))?;
    let root = fetch_kernel(&package, cache)?;
    let release = fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("kernel package has no lib/modules")?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let work = cache.join(format!("run-{series}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let initramfs = work.join("initramfs.gz");
    build_initramfs(
        &root,
        &release,
        binaries,
        selection,
        &work.join("stage"),
        &initramfs,
    )?;
    let mut disks = Vec::new();
    for (name, mkfs) in GUEST_FILESYSTEMS {
        let disk = work.join(format!("{name}.img"));
        run(Command::new("truncate").args(["-s", "2G"]).arg(&disk))?;
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&disk))?;
        disks.push(disk);
    }

    let log = work.join("console.log");
    eprintln!("xtask: booting {release} under qemu (TCG)");
    let console = fs::File::create(&log)?;
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3072"])
        .args([
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .args(disks.iter().flat_map(|disk| {
            [
                "-drive".to_owned(),
                format!("file={},format=raw,if=virtio", disk.display()),
            ]
        }))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let allowed = BOOT_TIMEOUT * selection.repeat;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = qemu.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > allowed {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(500));
    };
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mut tally = Tally::default();
    for line in text.lines() {
        tally.add_line(line);
    }
    let (tests_passed, tests_failed) = (tally.passed, tally.failed);
    // Echo the guest's test results, and a failed test's whole output (its figures and the
    // panic message), so a failure can be read where it happened.
    let mut in_failures = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line == "failures:" {
            in_failures = true;
        }
        let wanted = in_failures
            || line.starts_with("test ")
            || line.contains("MEMTRACE-VM")
            || line.contains("panicked")
            || line.contains(" large folios (")
            || line.starts_with("folio order:");
        if line.starts_with("test result:") {
            in_failures = false;
        }
        if wanted {
            println!("  [{series}] {line}");
        }
    }
    let passed = status.is_some()
        && text.contains("MEMTRACE-VM: PASS")
        && tests_failed == 0
        && tests_passed > 0;
    if status.is_none() {
        println!("  [{series}] qemu timed out after {}s", allowed.as_secs());
    }
    let hooks = text
        .lines()
        .find_map(|l| {
            l.split_once("MEMTRACE-VM: hooks: ")
                .map(|(_, h)| h.trim().to_owned())
        })
        .unwrap_or_else(|| "(not reported)".to_owned());
    let filesystems = text
        .lines()
        .filter_map(|l| {
            l.split_once("MEMTRACE-VM: mounted ")
                .map(|(_, fs)| fs.trim())
        })
        .collect::<Vec<_>>()
        .join(" ");
    Ok(SeriesResult {
        release,
        hooks,
        filesystems,
        passed,
        tests_passed,
        tests_failed,
        log,
    })
}

/// The newest package whose name matches `pattern`, by Debian version order.
fn newest_package(pattern: &str) -> Result<String> {
    let search = |update: bool| -> Result<Vec<String>> {
        if update {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect())
    };
    let mut names = search(false)?;
    if names.is_empty() {
        names = search(true)?;
    }
    names.sort_by_key(|name| version_key(name));
    names
        .pop()
        .with_context(|| format!("no package matches {pattern}"))
}

/// Numbers in a package name, for ordering `6.1.0-9` before `6.1.0-50`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Downloads and unpacks `package` once; returns the unpacked root.
fn fetch_kernel(package: &str, cache: &Path) -> Result<PathBuf> {
    let root = cache.join("kernels").join(package);
    let done = root.join(".unpacked");
    if done.exists() {
        return Ok(root);
    }
    let download = cache.join("debs");
    fs::create_dir_all(&download)?;
    eprintln!(
        "xtask: downloading {package} (Debian's kernel, cached in {})",
        cache.display()
    );
    run(Command::new("apt-get")
        .args(["download", package])
        .current_dir(&download))?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .context("downloaded .deb not found")?;
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;
    fs::write(&done, package)?;
    Ok(root)
}

/// Every module of the kernel by name, with its file.
fn module_index(modules: &Path) -> HashMap<String, PathBuf> {
    let mut index = HashMap::new();
    let mut pending = vec![modules.join("kernel")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko")) {
                    index.insert(stem.replace('-', "_"), path);
                }
            }
        }
    }
    index
}

/// A module's bytes, decompressed (busybox insmod passes them to init_module as they are).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        Some(tool) => {
            let out = Command::new(tool).arg("-dc").arg(path).output()?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
        None => Ok(fs::read(path)?),
    }
}

/// `depends=` of a module, from its .modinfo strings.
fn module_depends(bytes: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| {
            let rest = &bytes[at + needle.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the wanted modules and their dependencies into `dir`, returning the load order.
fn stage_modules(modules: &Path, wanted: &[&str], dir: &Path) -> Result<Vec<String>> {
    let index = module_index(modules);
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        dir: &Path,
        order: &mut Vec<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<()> {
        if order.iter().any(|o| o == name) || !visiting.insert(name.to_owned()) {
            return Ok(());
        }
        // Built into this kernel: nothing to load.
        let Some(path) = index.get(name) else {
            return Ok(());
        };
        let bytes = module_bytes(path)?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, dir, order, visiting)?;
        }
        fs::write(dir.join(format!("{name}.ko")), bytes)?;
        order.push(name.to_owned());
        Ok(())
    }
    fs::create_dir_all(dir)?;
    for name in wanted {
        visit(name, &index, dir, &mut order, &mut visiting)?;
    }
    Ok(order)
}

/// Shared libraries a binary needs, from ldd.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

fn copy_into(stage: &Path, file: &Path) -> Result<()> {
    let target = stage.join(file.strip_prefix("/").unwrap_or(file));
    fs::create_dir_all(target.parent().context("path has a parent")?)?;
    fs::copy(file, &target).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

fn build_initramfs(
    root: &Path,
    release: &str,
    binaries: &GuestBinaries,
    selection: &Selection,
    stage: &Path,
    out: &Path,
) -> Result<()> {
    let _ = fs::remove_dir_all(stage);
    for dir in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "var/tmp", "root", "tests", "modules", "etc",
        "run",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox")?;
    fs::copy(busybox, stage.join("bin/busybox"))?;
    symlink("busybox", stage.join("bin/sh"))?;

    let mut files: Vec<PathBuf> = binaries.helpers.clone();
    for (name, path) in &binaries.tests {
        fs::copy(path, stage.join("tests").join(name))?;
        files.extend(shared_libraries(path)?);
    }
    for helper in &binaries.helpers {
        files.extend(shared_libraries(helper)?);
    }
    files.sort();
    files.dedup();
    for file in &files {
        copy_into(stage, file)?;
    }

    let order = stage_modules(
        &root.join("lib/modules").join(release),
        GUEST_MODULES,
        &stage.join("modules"),
    )?;
    fs::write(stage.join("modules/order"), order.join("\n") + "\n")?;
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;

    let init = stage.join("init");
    let mut script = fs::File::create(&init)?;
    let memtrace = workspace().join("target/debug/memtrace");
    // Disks appear in the order qemu was given them: vda, vdb, ...
    let others = GUEST_FILESYSTEMS
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, (name, _))| format!("{name}:vd{}", (b'a' + i as u8) as char))
        .collect::<Vec<_>>()
        .join(" ");
    script.write_all(
        INIT.replace("@MEMTRACE_BIN@", &memtrace.display().to_string())
            .replace("@OTHER_FILESYSTEMS@", &others)
            .replace("@RUNS@", &selection.runs())
            .replace("@REPEAT@", &selection.repeat.to_string())
            .replace("@FILTER@", selection.filter.as_deref().unwrap_or(""))
            .as_bytes(),
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let cpio = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            stage.display(),
            out.display()
        ))
        .status()?;
    if !cpio.success() {
        bail!("packing the initramfs failed");
    }
    Ok(())
}

/// The guest's PID 1: mounts, cgroup v2 with the memory controller, an ext4 disk for the
/// tests' files and the other filesystems' disks, then the selected runs (by default every
/// suite on ext4 and the per-filesystem suite again on each other filesystem), then power off. A disk that does not mount fails the run.
const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin:/usr/bin HOME=/root MEMTRACE_BIN=@MEMTRACE_BIN@ MEMTRACE_REQUIRE_FEXIT=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "MEMTRACE-VM: insmod $m failed"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
status=0
if mount -t ext4 /dev/vda /var/tmp; then echo "MEMTRACE-VM: mounted ext4"; else status=1; echo "MEMTRACE-VM: no ext4 disk"; cat /proc/partitions; dmesg | grep -iE "virtio|vda|ext4|module" | tail -20; fi
others=""
for spec in @OTHER_FILESYSTEMS@; do
  fs=${spec%%:*}; disk=${spec##*:}
  mkdir -p /fs/$fs
  if mount -t $fs /dev/$disk /fs/$fs; then echo "MEMTRACE-VM: mounted $fs"; others="$others $fs"; else status=1; echo "MEMTRACE-VM: FAILED to mount $fs from /dev/$disk"; dmesg | grep -iE "$fs|$disk" | tail -10; fi
done
echo "MEMTRACE-VM: kernel $(uname -r), cgroup v2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "MEMTRACE-VM: hooks: $($MEMTRACE_BIN doctor | grep 'load and attach' | sed 's/.*load and attach *//')"
# run_suite SUITE FILESYSTEM: the first filesystem is /var/tmp, the others keep their scratch
# files under their mount (a disk that did not mount has already failed the run).
run_suite() {
  case "$2" in
    ext4) root= ;;
    *) case " $others " in *" $2 "*) root=/fs/$2/memtrace-tests ;; *) return ;; esac ;;
  esac
  echo "MEMTRACE-VM: running $1 on $2"
  env ${root:+MEMTRACE_SCRATCH_ROOT=$root} MEMTRACE_TEST_VM=1 RUST_BACKTRACE=1 /tests/$1 --test-threads=1 --show-output @FILTER@ || status=1
}
for round in $(seq @REPEAT@); do
@RUNS@
done
if [ $status = 0 ]; then echo "MEMTRACE-VM: PASS"; else echo "MEMTRACE-VM: FAIL"; fi
sync
poweroff -f
"#;
