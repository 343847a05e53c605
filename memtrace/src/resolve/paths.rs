//! (device, inode) → the paths a person recognizes.
//!
//! The kernel sends each file's path from the root of its filesystem once, when the file is
//! first seen. Here it is mapped onto the mounts (`s_dev` → mount, mount root, mount point), then
//! onto overlay layers (a container's writable layer or its image), and checked against the
//! filesystem: a renamed file is found by inode in its directory, a file gone from its
//! directory is marked deleted (its cache can only outlive the unlink while it is held open).

use std::{
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use memtrace_common::{FileEvent, NAME_LEN, PATH_NO_DENTRY, PATH_READ_FAILED, PATH_TOO_DEEP};
use rustc_hash::FxHashMap;

use crate::model::{Dev, Layer};

use super::mounts::{read_mountinfo, Mount};

const S_IFMT: u32 = 0o170000;
const S_IFBLK: u32 = 0o060000;

/// How long a checked path is trusted before it is checked again.
const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// What the kernel said about a file when it first saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPath {
    /// The path from the filesystem root, `/a/b/c`: one allocation per file, not one per
    /// component (a node can have hundreds of thousands of files).
    pub fs_path: Box<str>,
    /// The leaf name was cut to fit: look it up by inode.
    pub leaf_truncated: bool,
    /// The walk did not reach the root (too deep, or a read failed).
    pub incomplete: bool,
    pub no_dentry: bool,
    pub mode: u32,
    /// For block-device inodes, the device (kernel encoding).
    pub rdev: u32,
    pub nlink: u32,
}

impl KernelPath {
    pub fn from_event(event: &FileEvent) -> Self {
        let depth = (event.depth as usize).min(event.names.len());
        let mut leaf_truncated = false;
        let mut fs_path = String::new();
        for (i, raw) in event.names[..depth].iter().enumerate().rev() {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            if i == 0 && end >= NAME_LEN - 1 {
                leaf_truncated = true;
            }
            fs_path.push('/');
            fs_path.push_str(&String::from_utf8_lossy(&raw[..end]));
        }
        if fs_path.is_empty() {
            fs_path.push('/');
        }
        Self {
            fs_path: fs_path.into(),
            leaf_truncated,
            incomplete: event.flags & (PATH_TOO_DEEP | PATH_READ_FAILED) != 0,
            no_dentry: event.flags & PATH_NO_DENTRY != 0,
            mode: event.mode,
            rdev: event.rdev,
            nlink: event.nlink,
        }
    }

    pub fn is_block_device(&self) -> bool {
        self.mode & S_IFMT == S_IFBLK
    }
}

/// An overlay mount: a container's root filesystem, as engines lay it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay {
    pub mount_point: PathBuf,
    pub upper: Option<PathBuf>,
    pub lowers: Vec<PathBuf>,
}

impl Overlay {
    pub fn from_mount(mount: &Mount) -> Option<Self> {
        if mount.fs_type != "overlay" {
            return None;
        }
        let mut upper = None;
        let mut lowers = Vec::new();
        for option in split_options(&mount.super_options) {
            if let Some(dir) = option.strip_prefix("upperdir=") {
                upper = Some(PathBuf::from(dir));
            } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
                lowers.extend(split_unescaped(dirs, ':').into_iter().map(PathBuf::from));
            } else if let Some(dir) = option.strip_prefix("lowerdir+=") {
                lowers.push(PathBuf::from(dir));
            }
        }
        Some(Self {
            mount_point: mount.mount_point.clone(),
            upper,
            lowers,
        })
    }

    /// Where `host_path` sits in this overlay: its layer and the path inside the container.
    pub fn locate(&self, host_path: &Path) -> Option<(Layer, String)> {
        let inside = |root: &Path| {
            host_path
                .strip_prefix(root)
                .ok()
                .map(|rest| format!("/{}", rest.display()))
        };
        if let Some(path) = self.upper.as_deref().and_then(inside) {
            return Some((Layer::Upper, path));
        }
        self.lowers
            .iter()
            .find_map(|l| inside(l))
            .map(|path| (Layer::Lower, path))
    }
}

/// Splits mount options on commas not escaped with a backslash.
fn split_options(options: &str) -> Vec<String> {
    split_unescaped(options, ',')
}

fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == separator && !escaped => parts.push(String::new()),
            c => {
                if escaped && c != separator {
                    parts.last_mut().expect("non-empty").push('\\');
                }
                parts.last_mut().expect("non-empty").push(c);
                escaped = false;
            }
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// A file's names, as reported. Shared, not copied, into every report that names the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedPath {
    /// The path a process sees: inside its container for overlay files, else the host path.
    pub path: Option<Arc<str>>,
    /// The path on the host (for overlay files, the layer's file).
    pub host_path: Option<Arc<str>>,
    pub deleted: bool,
    pub layer: Option<Layer>,
    /// Mount point of the overlay the file belongs to (a container's root filesystem).
    pub overlay_root: Option<Arc<str>>,
}

struct Checked {
    resolved: ResolvedPath,
    at: Instant,
}

/// A name userspace found for a file (scanning at start), when the kernel has sent none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenName {
    pub path: PathBuf,
    /// `path` is a host path (else: as a process sees it, from /proc/<pid>/fd).
    pub on_host: bool,
    /// /proc said "(deleted)".
    pub deleted: bool,
}

/// Every file the kernel has named, and the mounts to place them.
#[derive(Default)]
pub struct PathTable {
    kernel: FxHashMap<(u32, u64), KernelPath>,
    seen: FxHashMap<(u32, u64), SeenName>,
    mounts: Vec<Mount>,
    overlays: Vec<Overlay>,
    checked: FxHashMap<(u32, u64), Checked>,
}

impl PathTable {
    pub fn new() -> Self {
        let mut table = Self::default();
        table.refresh_mounts();
        table
    }

    /// Re-reads the host's mounts (containers come and go).
    pub fn refresh_mounts(&mut self) {
        // PID 1's view is the host's even when memtrace itself runs in a container with hostPID.
        let mounts = read_mountinfo(Some(1))
            .or_else(|_| read_mountinfo(None))
            .unwrap_or_default();
        self.set_mounts(mounts);
    }

    pub fn set_mounts(&mut self, mounts: Vec<Mount>) {
        self.overlays = mounts.iter().filter_map(Overlay::from_mount).collect();
        self.mounts = mounts;
    }

    pub fn apply(&mut self, event: &FileEvent) {
        let key = (event.dev, event.ino);
        self.checked.remove(&key);
        self.kernel.insert(key, KernelPath::from_event(event));
    }

    /// Remembers a name found by scanning; a kernel path, when one arrives, takes precedence.
    pub fn remember(&mut self, dev: u32, ino: u64, name: SeenName) {
        self.checked.remove(&(dev, ino));
        self.seen.insert((dev, ino), name);
    }

    pub fn overlays(&self) -> &[Overlay] {
        &self.overlays
    }

    /// The names of file (dev, ino), checked against the filesystem now and then. What the
    /// kernel or a scan said is turned into names once and then dropped: only the names stay.
    pub fn resolve(&mut self, dev: u32, ino: u64) -> ResolvedPath {
        let key = (dev, ino);
        let resolved = if let Some(kernel) = self.kernel.remove(&key) {
            self.resolve_kernel_path(dev, ino, &kernel)
        } else if let Some(seen) = self.seen.remove(&key) {
            if seen.on_host {
                self.resolve_host_path(seen.path, ino, seen.deleted)
            } else {
                ResolvedPath {
                    path: Some(seen.path.to_string_lossy().into()),
                    deleted: seen.deleted,
                    ..ResolvedPath::default()
                }
            }
        } else {
            match self.checked.get(&key) {
                None => return ResolvedPath::default(),
                Some(checked) if checked.at.elapsed() < RECHECK_AFTER => {
                    return checked.resolved.clone();
                }
                // A live file on the host may have been renamed or deleted since: look again.
                Some(Checked {
                    resolved:
                        ResolvedPath {
                            host_path: Some(host),
                            deleted: false,
                            ..
                        },
                    ..
                }) => {
                    let host = PathBuf::from(&**host);
                    self.resolve_host_path(host, ino, false)
                }
                Some(checked) => checked.resolved.clone(),
            }
        };
        self.checked.insert(
            key,
            Checked {
                resolved: resolved.clone(),
                at: Instant::now(),
            },
        );
        resolved
    }

    fn resolve_kernel_path(&self, dev: u32, ino: u64, kernel: &KernelPath) -> ResolvedPath {
        if kernel.is_block_device() {
            let name = format!("[metadata of block device {}]", Dev(kernel.rdev));
            return ResolvedPath {
                path: Some(name.into()),
                ..ResolvedPath::default()
            };
        }
        if kernel.no_dentry {
            return ResolvedPath::default();
        }
        let fs_path = kernel.fs_path.to_string();
        let Some(host) = self.host_path(dev, &fs_path) else {
            // Not mounted anywhere we can see: the filesystem-relative path is the best name.
            return ResolvedPath {
                path: Some(fs_path.into()),
                deleted: kernel.nlink == 0,
                ..ResolvedPath::default()
            };
        };
        // A cut leaf name never matches on disk, so it is found by inode like a renamed file.
        self.resolve_host_path(host, ino, kernel.nlink == 0)
    }

    /// Checks a host path against the file's inode (finding a renamed file in its directory),
    /// then places it in an overlay layer if it is in one.
    fn resolve_host_path(&self, mut host: PathBuf, ino: u64, mut deleted: bool) -> ResolvedPath {
        if !deleted && !is_same_file(&host, ino) {
            match find_in_directory(&host, ino) {
                Some(current) => host = current,
                None => deleted = true,
            }
        }
        let overlay = self
            .overlays
            .iter()
            .find_map(|o| o.locate(&host).map(|(layer, path)| (o, layer, path)));
        let host_path: Arc<str> = host.to_string_lossy().into();
        match overlay {
            Some((overlay, layer, container_path)) => ResolvedPath {
                path: Some(container_path.into()),
                host_path: Some(host_path),
                deleted,
                layer: Some(layer),
                overlay_root: Some(overlay.mount_point.to_string_lossy().into()),
            },
            None => ResolvedPath {
                path: Some(host_path.clone()),
                host_path: Some(host_path),
                deleted,
                layer: None,
                overlay_root: None,
            },
        }
    }

    /// Host path of a filesystem-relative path on device `dev`, through a mount of it.
    fn host_path(&self, dev: u32, fs_path: &str) -> Option<PathBuf> {
        let (major, minor) = (dev >> 20, dev & 0xf_ffff);
        let fs_path = Path::new(fs_path);
        self.mounts
            .iter()
            .filter(|m| m.major == major && m.minor == minor)
            .filter_map(|m| {
                let rest = fs_path.strip_prefix(&m.root).ok()?;
                Some((m, m.mount_point.join(rest)))
            })
            // The shortest mount point is the host's own mount, not a bind mount into a
            // container or a nested one.
            .min_by_key(|(m, _)| {
                (
                    m.root.components().count() != 1,
                    m.mount_point.as_os_str().len(),
                )
            })
            .map(|(_, path)| path)
    }
}

fn is_same_file(path: &Path, ino: u64) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino)
}

/// The entry with inode `ino` in `path`'s directory: a renamed or rotated file.
fn find_in_directory(path: &Path, ino: u64) -> Option<PathBuf> {
    let dir = path.parent()?;
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.ino() == ino)
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::mounts::parse_mountinfo;

    fn event(names_leaf_first: &[&str], dev: u32, ino: u64) -> FileEvent {
        let mut event = FileEvent {
            ino,
            dev,
            mode: 0o100644,
            rdev: 0,
            nlink: 1,
            depth: names_leaf_first.len() as u32,
            flags: 0,
            names: [[0; NAME_LEN]; memtrace_common::PATH_DEPTH],
        };
        for (slot, name) in event.names.iter_mut().zip(names_leaf_first) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        event
    }

    const MOUNTS: &str = "\
22 1 254:0 / / rw - ext4 /dev/vda rw
40 22 0:45 / /run/runc/c1/rootfs rw - overlay overlay rw,lowerdir=/img/l2:/img/l1,upperdir=/var/lib/c1/upper,workdir=/var/lib/c1/work
41 22 254:0 /var/lib/data /data rw - ext4 /dev/vda rw
";

    #[test]
    fn kernel_path_reverses_components() {
        let kp = KernelPath::from_event(&event(&["spring.log", "tmp", "upper"], 1, 2));
        assert_eq!(&*kp.fs_path, "/upper/tmp/spring.log");
        assert!(!kp.leaf_truncated);
    }

    #[test]
    fn overlay_options_parse_with_escapes() {
        let mounts = parse_mountinfo(MOUNTS);
        let overlay = Overlay::from_mount(&mounts[1]).unwrap();
        assert_eq!(
            overlay.upper.as_deref(),
            Some(Path::new("/var/lib/c1/upper"))
        );
        assert_eq!(
            overlay.lowers,
            vec![PathBuf::from("/img/l2"), PathBuf::from("/img/l1")]
        );
        assert_eq!(split_unescaped("a\\:b:c", ':'), vec!["a:b", "c"]);
        assert_eq!(
            overlay.locate(Path::new("/var/lib/c1/upper/tmp/spring.log")),
            Some((Layer::Upper, "/tmp/spring.log".to_owned()))
        );
        assert_eq!(
            overlay.locate(Path::new("/img/l1/usr/lib/libc.so")),
            Some((Layer::Lower, "/usr/lib/libc.so".to_owned()))
        );
        assert_eq!(overlay.locate(Path::new("/var/lib/c1/work/x")), None);
    }

    #[test]
    fn host_path_prefers_the_root_mount_over_bind_mounts() {
        let mut table = PathTable::default();
        table.set_mounts(parse_mountinfo(MOUNTS));
        let dev = 254 << 20;
        assert_eq!(
            table.host_path(dev, "/var/lib/data/x"),
            Some(PathBuf::from("/var/lib/data/x"))
        );
        assert_eq!(
            table.host_path(dev, "/etc/hosts"),
            Some(PathBuf::from("/etc/hosts"))
        );
        assert_eq!(table.host_path((7 << 20) | 1, "/x"), None);
    }

    #[test]
    fn block_device_inodes_are_named_as_metadata() {
        let mut table = PathTable::default();
        let mut ev = event(&[], 3, 99);
        ev.mode = 0o060600;
        ev.rdev = 254 << 20;
        table.apply(&ev);
        assert_eq!(
            table.resolve(3, 99).path.as_deref(),
            Some("[metadata of block device 254:0]")
        );
    }
}
