//! (device, inode) → the paths a person recognizes.
//!
//! The kernel gives a file's path from the root of its filesystem when asked (`name_inode`,
//! run for the files a report shows). Here it is mapped onto the mounts (`s_dev` → mount, mount root, mount point), then
//! onto overlay layers (a container's writable layer or its image), and checked against the
//! filesystem: a renamed file is found by inode in its directory, a file gone from its
//! directory is marked deleted (its cache can only outlive the unlink while it is held open).

use std::{
    borrow::Cow,
    ffi::OsStr,
    fs,
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::{DirEntryExt, MetadataExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use memtrace_common::{InodeName, PATH_NO_DENTRY};
use rustc_hash::FxHashMap;

use crate::model::{host_path_of, name_text, Dev, Layer};

use super::mounts::{read_mountinfo, unescape_bytes, Mount};

const S_IFMT: u32 = 0o170000;
const S_IFBLK: u32 = 0o060000;

/// Most names re-checked in one report (a path walk each; 4,096 cost 10 ms of a report at
/// 100,000 files). A name is checked only when its directory changed since it was last
/// checked (see [`DirStamp`]), so the budget goes to the directories where names move; past
/// it, the rest keep their name until a later report checks it.
const RECHECKS_PER_REPORT: usize = 2048;
/// A directory stamp is trusted only if the directory last changed this long before the
/// stamp was taken: timestamps are coarse (a clock tick), so a change in the same tick as
/// the `lstat` would leave the mtime as it was.
const DIR_STAMP_SETTLED_NS: i64 = 1_000_000_000;

/// What the kernel said about a file when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPath {
    /// The path from the filesystem root, `/a/b/c`, as bytes (names need not be UTF-8). When
    /// `complete` is false, only its tail: the components nearest the file.
    pub fs_path: Box<[u8]>,
    /// The walk reached the filesystem root.
    pub complete: bool,
    pub no_dentry: bool,
    pub mode: u32,
    /// For block-device inodes, the device (kernel encoding).
    pub rdev: u32,
    pub nlink: u32,
}

impl KernelPath {
    pub fn from_name(name: &InodeName) -> Self {
        let used = (name.used as usize).min(name.text.len());
        let components: Vec<&[u8]> = name.text[..used]
            .split(|&b| b == 0)
            .take(name.depth as usize)
            .collect();
        let mut fs_path = Vec::with_capacity(used + 1);
        for component in components.iter().rev() {
            fs_path.push(b'/');
            fs_path.extend_from_slice(component);
        }
        if fs_path.is_empty() {
            fs_path.push(b'/');
        }
        Self {
            fs_path: fs_path.into(),
            complete: name.flags & !PATH_NO_DENTRY == 0,
            no_dentry: name.flags & PATH_NO_DENTRY != 0,
            mode: name.mode,
            rdev: name.rdev,
            nlink: name.nlink,
        }
    }

    pub fn is_block_device(&self) -> bool {
        self.mode & S_IFMT == S_IFBLK
    }
}

/// Nanoseconds since the epoch, as directory stamps are.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// An overlay mount: a container's root filesystem, as engines lay it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay {
    pub mount_point: PathBuf,
    pub upper: Option<PathBuf>,
    pub lowers: Vec<PathBuf>,
}

impl Overlay {
    /// Reads an overlay's layers from its mountinfo super options. The kernel shows them with
    /// octal escapes (`\054` for a comma, `\040` a space, `\134` a backslash) over overlayfs's
    /// own backslash escapes (`\:` is a colon inside a lower layer's path), so options split on
    /// raw commas, values lose the octal escapes, and then the layer paths are split and
    /// unescaped as overlayfs does.
    pub fn from_mount(mount: &Mount) -> Option<Self> {
        if mount.fs_type != "overlay" {
            return None;
        }
        let mut upper = None;
        let mut lowers = Vec::new();
        for option in mount.super_options.split(',') {
            let Some((key, raw)) = option.split_once('=') else {
                continue;
            };
            let value = unescape_bytes(raw);
            match key {
                "upperdir" => upper = split_layers(&value).into_iter().next(),
                "lowerdir" => lowers.extend(split_layers(&value)),
                // Layers appended one by one (6.7+).
                "lowerdir+" => lowers.extend(split_layers(&value).into_iter().take(1)),
                _ => {}
            }
        }
        Some(Self {
            mount_point: mount.mount_point.clone(),
            upper,
            lowers,
        })
    }

    /// Where `host_path` sits in this overlay: its layer and the path inside the container.
    pub fn locate(&self, host_path: &Path) -> Option<(Layer, PathBuf)> {
        let inside = |root: &Path| {
            host_path
                .strip_prefix(root)
                .ok()
                .map(|rest| Path::new("/").join(rest))
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

/// Splits an overlayfs layer list on `:`, undoing overlayfs's escapes: a backslash makes the
/// next byte literal (`\:`, `\,`, `\\`).
fn split_layers(value: &[u8]) -> Vec<PathBuf> {
    let mut layers = vec![Vec::new()];
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        let current = layers.last_mut().expect("never empty");
        match b {
            b'\\' => current.extend(bytes.next()),
            b':' => layers.push(Vec::new()),
            b => current.push(b),
        }
    }
    layers
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(std::ffi::OsString::from_vec(l)))
        .collect()
}

/// A file's names, as reported. Shared, not copied, into every report that names the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPath {
    /// The path a process sees: inside its container for overlay files, else the host path.
    pub path: Option<Arc<str>>,
    /// The path on the host (for overlay files, the layer's file).
    pub host_path: Option<Arc<str>>,
    /// The exact bytes of `path` and `host_path`, in hex, when they are not UTF-8.
    pub path_hex: Option<Arc<str>>,
    pub host_path_hex: Option<Arc<str>>,
    /// False when only the end of the path is known (`path` then starts with `…/`).
    pub complete: bool,
    pub deleted: bool,
    pub layer: Option<Layer>,
    /// Mount point of the overlay the file belongs to (a container's root filesystem).
    pub overlay_root: Option<Arc<str>>,
}

impl Default for ResolvedPath {
    fn default() -> Self {
        Self {
            path: None,
            host_path: None,
            path_hex: None,
            host_path_hex: None,
            complete: true,
            deleted: false,
            layer: None,
            overlay_root: None,
        }
    }
}

impl ResolvedPath {
    /// The file's path on the host, as bytes (its exact ones when they are not UTF-8), if it
    /// has one.
    pub fn host(&self) -> Option<PathBuf> {
        self.host_path
            .as_deref()
            .map(|text| host_path_of(text, self.host_path_hex.as_deref()))
    }

    /// Names from a path as a process or the host sees it.
    fn named(path: &Path, host_path: Option<&Path>) -> Self {
        let path_os = path;
        let (path, path_hex) = name_text(path.as_os_str().as_bytes());
        let (host_path, host_path_hex) = match host_path {
            // Outside containers the two are one path: one copy of it, shared.
            Some(host) if host.as_os_str() == path_os.as_os_str() => {
                (Some(path.clone()), path_hex.clone())
            }
            Some(host) => {
                let (text, hex) = name_text(host.as_os_str().as_bytes());
                (Some(text), hex)
            }
            None => (None, None),
        };
        Self {
            path: Some(path),
            host_path,
            path_hex,
            host_path_hex,
            ..Self::default()
        }
    }
}

/// A file's names as the table keeps them, for a hundred thousand files: 40 bytes, not the
/// 130 a `ResolvedPath` with its check time takes.
struct Checked {
    names: StoredNames,
    /// The report that placed or last checked the names (`PathTable::report`).
    report: u32,
    /// The inode generation the name was found for (0: unknown). The kernel's
    /// `i_generation` is 32 bits.
    generation: u32,
    /// `PathTable::overlays_version` when it was placed.
    overlays_version: u32,
    /// The directory of its host path when it was checked, if settled, as
    /// [`DirStamp::fingerprint`]; 0: none (checked again at each report).
    dir: u32,
}

/// A directory as one `lstat` saw it. Adding, removing or renaming an entry in it changes its
/// mtime; the directory renamed, or another put in its place, changes what is at its path. So
/// while the stamp holds, every name in it still names the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirStamp {
    ino: u64,
    mtime_ns: i64,
}

impl DirStamp {
    /// 32 bits that change with the stamp (kept per file, for a hundred thousand files);
    /// never 0. Two stamps alike by chance: one in four billion.
    fn fingerprint(self) -> u32 {
        use std::hash::{Hash, Hasher};
        let mut hasher = rustc_hash::FxHasher::default();
        (self.ino, self.mtime_ns).hash(&mut hasher);
        let hash = hasher.finish();
        ((hash >> 32) as u32 ^ hash as u32).max(1)
    }
}

/// The directory holding `host` as it is now: one `lstat` per directory per report.
fn dir_now(dirs: &mut FxHashMap<PathBuf, Option<DirStamp>>, host: &Path) -> Option<DirStamp> {
    let dir = host.parent()?;
    if let Some(stamp) = dirs.get(dir) {
        return *stamp;
    }
    let stamp = fs::symlink_metadata(dir).ok().map(|m| DirStamp {
        ino: m.ino(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
    });
    dirs.insert(dir.to_owned(), stamp);
    stamp
}

/// Most files have one path, the same on the host and in view, and nothing else to say.
enum StoredNames {
    Plain {
        path: Arc<str>,
        complete: bool,
        deleted: bool,
    },
    Full(Box<ResolvedPath>),
}

impl StoredNames {
    fn of(resolved: &ResolvedPath) -> Self {
        match resolved {
            ResolvedPath {
                path: Some(path),
                host_path: Some(host_path),
                path_hex: None,
                host_path_hex: None,
                complete,
                deleted,
                layer: None,
                overlay_root: None,
            } if Arc::ptr_eq(path, host_path) => Self::Plain {
                path: path.clone(),
                complete: *complete,
                deleted: *deleted,
            },
            _ => Self::Full(Box::new(resolved.clone())),
        }
    }

    /// The host path, borrowed where it is kept as it is (a hundred thousand files are
    /// checked in place at each report).
    fn host(&self) -> Option<Cow<'_, Path>> {
        match self {
            Self::Plain { path, .. } => Some(Cow::Borrowed(Path::new(&**path))),
            Self::Full(resolved) => resolved.host().map(Cow::Owned),
        }
    }

    fn resolved(&self) -> ResolvedPath {
        match self {
            Self::Plain {
                path,
                complete,
                deleted,
            } => ResolvedPath {
                path: Some(path.clone()),
                host_path: Some(path.clone()),
                complete: *complete,
                deleted: *deleted,
                ..ResolvedPath::default()
            },
            Self::Full(resolved) => (**resolved).clone(),
        }
    }
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

/// The names of every file shown so far, and the mounts to place them.
#[derive(Default)]
pub struct PathTable {
    seen: FxHashMap<(u32, u64), SeenName>,
    mounts: Vec<Mount>,
    overlays: Vec<Overlay>,
    checked: FxHashMap<(u32, u64), Checked>,
    /// Re-checks this report may still make.
    rechecks_left: usize,
    /// Bumped whenever the overlay mounts change: a name placed under other overlays is
    /// placed again when checked.
    overlays_version: u32,
    /// Reports begun so far: names checked in this one are trusted until it ends.
    report: u32,
    /// Directories as this report found them (see [`DirStamp`]).
    dirs_now: FxHashMap<PathBuf, Option<DirStamp>>,
    /// When this report began, in nanoseconds since the epoch.
    report_began_ns: i64,
}

impl PathTable {
    pub fn new() -> Self {
        let mut table = Self {
            rechecks_left: RECHECKS_PER_REPORT,
            ..Self::default()
        };
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
        let overlays: Vec<Overlay> = mounts.iter().filter_map(Overlay::from_mount).collect();
        if overlays != self.overlays {
            self.overlays_version = self.overlays_version.wrapping_add(1);
        }
        self.overlays = overlays;
        self.mounts = mounts;
    }

    /// Keeps the names of the files `keep` says are still of interest.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, u64) -> bool) {
        self.checked.retain(|&(dev, ino), _| keep(dev, ino));
        self.seen.retain(|&(dev, ino), _| keep(dev, ino));
    }

    /// Starts a report: names whose directory changed are checked again, within its budget.
    pub fn begin_report(&mut self) {
        self.rechecks_left = RECHECKS_PER_REPORT;
        self.report = self.report.wrapping_add(1);
        self.dirs_now.clear();
        self.report_began_ns = now_ns();
    }

    /// Starts naming files between reports ([`Self::name_ahead`]): directories are looked at
    /// afresh, and "recently changed" is reckoned from now.
    pub fn begin_naming_ahead(&mut self) {
        self.dirs_now.clear();
        self.report_began_ns = now_ns();
    }

    /// Names file (dev, ino) before a report needs it, if it has no name yet: as
    /// [`Self::resolve`] would, and kept as named in the last report (the next one checks it as
    /// it checks any name from an earlier report).
    pub fn name_ahead(
        &mut self,
        dev: u32,
        ino: u64,
        generation: u64,
        ask_kernel: impl FnOnce() -> Option<KernelPath>,
    ) {
        if !self.checked.contains_key(&(dev, ino)) {
            self.resolve(dev, ino, generation, ask_kernel);
        }
    }

    /// Remembers a name found by scanning; a kernel path, when one arrives, takes precedence.
    pub fn remember(&mut self, dev: u32, ino: u64, name: SeenName) {
        self.checked.remove(&(dev, ino));
        self.seen.insert((dev, ino), name);
    }

    pub fn overlays(&self) -> &[Overlay] {
        &self.overlays
    }

    /// The names of file (dev, ino), checked against the filesystem now and then. `ask_kernel`
    /// walks the file's dentries in the kernel (`name_inode`); it is called the first time a
    /// file is named, and again when a name no longer holds (the file moved, or was unnamed).
    ///
    /// `generation` is the inode's `i_generation` as the kernel last saw it (0 when unknown):
    /// a name found for another generation belongs to a file that had this inode number
    /// before, so the file is named anew.
    pub fn resolve(
        &mut self,
        dev: u32,
        ino: u64,
        generation: u64,
        ask_kernel: impl FnOnce() -> Option<KernelPath>,
    ) -> ResolvedPath {
        let key = (dev, ino);
        // `i_generation` is 32 bits: the kernel's value survives the cut whole.
        let generation = generation as u32;
        let report = self.report;
        // One lookup for the common case: a name checked in this report, or in a directory
        // that has not changed since (or no re-checks left).
        let previous = match self.checked.get_mut(&key) {
            Some(c) if generation != 0 && c.generation != 0 && c.generation != generation => {
                // Another file that had this inode number before.
                self.checked.remove(&key);
                self.seen.remove(&key);
                None
            }
            Some(c) if c.report == report => return c.names.resolved(),
            Some(c) => {
                let in_place = c.dir != 0
                    && c.overlays_version == self.overlays_version
                    && c.names.host().is_some_and(|host| {
                        dir_now(&mut self.dirs_now, &host).map(DirStamp::fingerprint) == Some(c.dir)
                    });
                let names = c.names.resolved();
                if in_place {
                    c.report = report;
                    return names;
                }
                if self.rechecks_left == 0 {
                    return names;
                }
                self.rechecks_left -= 1;
                Some((names, c.overlays_version))
            }
            None => None,
        };
        let resolved = match previous {
            // A deleted file stays deleted; a partial path is as good as it gets.
            Some((resolved, _))
                if resolved.deleted || (!resolved.complete && resolved.path.is_some()) =>
            {
                resolved
            }
            // A name as a process sees it (found by the scan at start): kept until the kernel
            // can name the file.
            Some((kept, _)) if kept.host_path.is_none() && kept.path.is_some() => {
                let anew = self.name_anew(dev, ino, ask_kernel);
                if anew.path.is_some() {
                    anew
                } else {
                    kept
                }
            }
            Some((resolved, overlays_version)) if resolved.host_path.is_some() => {
                match resolved.host().filter(|h| is_same_file(h, ino)) {
                    // Still there, under the same overlays: placed as before.
                    Some(_) if overlays_version == self.overlays_version => resolved,
                    Some(host) => self.resolve_host_path(host, ino, false),
                    // Renamed or moved: ask the kernel where it is now.
                    None => self.name_anew(dev, ino, ask_kernel),
                }
            }
            _ => self.name_anew(dev, ino, ask_kernel),
        };
        // No name yet (a file first seen through the writers map, before the kernel's counters
        // gave its inode's address): not remembered, so the next report asks again.
        if resolved.path.is_none() {
            self.checked.remove(&key);
            return resolved;
        }
        let settled_before = self.report_began_ns - DIR_STAMP_SETTLED_NS;
        let dir = resolved
            .host()
            .filter(|_| !resolved.deleted)
            .and_then(|host| dir_now(&mut self.dirs_now, &host))
            .filter(|stamp| stamp.mtime_ns < settled_before)
            .map_or(0, DirStamp::fingerprint);
        self.checked.insert(
            key,
            Checked {
                names: StoredNames::of(&resolved),
                report,
                generation,
                overlays_version: self.overlays_version,
                dir,
            },
        );
        resolved
    }

    /// A name from the kernel, else from a scan at start.
    fn name_anew(
        &mut self,
        dev: u32,
        ino: u64,
        ask_kernel: impl FnOnce() -> Option<KernelPath>,
    ) -> ResolvedPath {
        let mut no_dentry = false;
        if let Some(kernel) = ask_kernel() {
            no_dentry = kernel.no_dentry;
            let resolved = self.resolve_kernel_path(dev, ino, &kernel);
            // A filesystem no host mount shows (a container's own tmpfs) gets only its
            // filesystem-relative path from the kernel: the path a process sees, found by a
            // scan, says more.
            let seen_says_more = resolved.host_path.is_none()
                && self.seen.get(&(dev, ino)).is_some_and(|seen| !seen.on_host);
            if resolved.path.is_some() && !seen_says_more {
                self.seen.remove(&(dev, ino));
                return resolved;
            }
        }
        match self.seen.remove(&(dev, ino)) {
            Some(seen) if seen.on_host => self.resolve_host_path(seen.path, ino, seen.deleted),
            Some(seen) => ResolvedPath {
                deleted: seen.deleted,
                ..ResolvedPath::named(&seen.path, None)
            },
            // The inode has no dentry to walk: a filesystem's own inode (ext4 creates some
            // while allocating), or a file whose dentries were reclaimed while its pages stay.
            // Said so, rather than left blank; asked again at the next re-check.
            None if no_dentry => ResolvedPath {
                path: Some(
                    format!(
                        "[inode {ino} on {}: no directory entry in the kernel's cache]",
                        Dev(dev)
                    )
                    .into(),
                ),
                ..ResolvedPath::default()
            },
            None => ResolvedPath::default(),
        }
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
        let fs_path = Path::new(OsStr::from_bytes(&kernel.fs_path));
        if !kernel.complete {
            // Only the end of the path is known (deeper than 128 components, longer than
            // 8 KiB, or a read failed midway): say what is known, and that it is partial.
            let tail = Path::new("…").join(fs_path.strip_prefix("/").unwrap_or(fs_path));
            return ResolvedPath {
                complete: false,
                deleted: kernel.nlink == 0,
                ..ResolvedPath::named(&tail, None)
            };
        }
        let Some(host) = self.host_path(dev, fs_path) else {
            // Not mounted anywhere we can see: the filesystem-relative path is the best name.
            return ResolvedPath {
                deleted: kernel.nlink == 0,
                ..ResolvedPath::named(fs_path, None)
            };
        };
        self.place(host, ino, kernel.nlink == 0, false)
    }

    /// Checks a host path against the file's inode (finding a renamed file in its directory),
    /// then places it in an overlay layer if it is in one.
    fn resolve_host_path(&self, host: PathBuf, ino: u64, deleted: bool) -> ResolvedPath {
        self.place(host, ino, deleted, true)
    }

    /// Places a host path in an overlay layer if it is in one. With `search_renamed`, a path
    /// that no longer names the file is looked for by inode in its directory (a name found
    /// earlier, now possibly stale); a path the kernel just gave is current, and its
    /// `nlink` says whether it is deleted.
    fn place(
        &self,
        mut host: PathBuf,
        ino: u64,
        mut deleted: bool,
        search_renamed: bool,
    ) -> ResolvedPath {
        if search_renamed && !deleted && !is_same_file(&host, ino) {
            match find_in_directory(&host, ino) {
                Some(current) => host = current,
                None => deleted = true,
            }
        }
        let overlay = self
            .overlays
            .iter()
            .find_map(|o| o.locate(&host).map(|(layer, path)| (o, layer, path)));
        match overlay {
            Some((overlay, layer, container_path)) => ResolvedPath {
                deleted,
                layer: Some(layer),
                overlay_root: Some(overlay.mount_point.to_string_lossy().into()),
                ..ResolvedPath::named(&container_path, Some(&host))
            },
            None => ResolvedPath {
                deleted,
                ..ResolvedPath::named(&host, Some(&host))
            },
        }
    }

    /// Host path of a filesystem-relative path on device `dev`, through a mount of it.
    fn host_path(&self, dev: u32, fs_path: &Path) -> Option<PathBuf> {
        let (major, minor) = (dev >> 20, dev & 0xf_ffff);
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

    #[test]
    fn names_kept_compact_come_back_as_they_went_in() {
        let plain = ResolvedPath::named(
            Path::new("/var/log/app.log"),
            Some(Path::new("/var/log/app.log")),
        );
        assert!(matches!(StoredNames::of(&plain), StoredNames::Plain { .. }));
        assert_eq!(StoredNames::of(&plain).resolved(), plain);
        let deleted = ResolvedPath {
            deleted: true,
            complete: false,
            ..plain.clone()
        };
        assert_eq!(StoredNames::of(&deleted).resolved(), deleted);
        let in_container = ResolvedPath {
            layer: Some(Layer::Upper),
            overlay_root: Some(Arc::from("/run/c/rootfs")),
            ..ResolvedPath::named(
                Path::new("/tmp/spring.log"),
                Some(Path::new("/var/lib/c/upper/tmp/spring.log")),
            )
        };
        assert!(matches!(
            StoredNames::of(&in_container),
            StoredNames::Full(_)
        ));
        assert_eq!(StoredNames::of(&in_container).resolved(), in_container);
        let seen_by_a_process = ResolvedPath::named(Path::new("/data/x"), None);
        assert_eq!(
            StoredNames::of(&seen_by_a_process).resolved(),
            seen_by_a_process
        );
        assert!(
            size_of::<Checked>() <= 40,
            "a name kept for each of 100,000 files stays small"
        );
    }

    /// What `name_inode` writes for a file whose components, leaf first, are `names`.
    fn kernel_name(names_leaf_first: &[&[u8]], dev: u32, ino: u64, flags: u32) -> InodeName {
        let mut name = InodeName {
            ino,
            dev,
            mode: 0o100644,
            rdev: 0,
            nlink: 1,
            depth: names_leaf_first.len() as u32,
            flags,
            used: 0,
            status: 0,
            text: [0; memtrace_common::NAME_TEXT_BYTES + memtrace_common::NAME_COMPONENT_MAX],
        };
        let mut at = 0;
        for component in names_leaf_first {
            name.text[at..at + component.len()].copy_from_slice(component);
            at += component.len() + 1;
        }
        name.used = at as u32;
        name
    }

    const MOUNTS: &str = "\
22 1 254:0 / / rw - ext4 /dev/vda rw
40 22 0:45 / /run/runc/c1/rootfs rw - overlay overlay rw,lowerdir=/img/l2:/img/l1,upperdir=/var/lib/c1/upper,workdir=/var/lib/c1/work
41 22 254:0 /var/lib/data /data rw - ext4 /dev/vda rw
";

    #[test]
    fn kernel_path_reverses_components_and_keeps_bytes() {
        let kp = KernelPath::from_name(&kernel_name(&[b"spring.log", b"tmp", b"upper"], 1, 2, 0));
        assert_eq!(&*kp.fs_path, b"/upper/tmp/spring.log");
        assert!(kp.complete);
        let odd = KernelPath::from_name(&kernel_name(&[b"caf\xe9.log", b"d"], 1, 2, 0));
        assert_eq!(&*odd.fs_path, b"/d/caf\xe9.log");
        let long = [b'x'; 255];
        let deep = KernelPath::from_name(&kernel_name(
            &[b"deep.log", &long],
            1,
            2,
            memtrace_common::PATH_TOO_DEEP,
        ));
        assert!(!deep.complete, "a walk that stopped early is a tail");
    }

    #[test]
    fn a_partial_path_is_shown_as_a_tail_never_as_a_full_path() {
        let table = PathTable::default();
        let name = kernel_name(
            &[b"deep.log", b"d29"],
            3,
            77,
            memtrace_common::PATH_TOO_DEEP,
        );
        let resolved = table.resolve_kernel_path(3, 77, &KernelPath::from_name(&name));
        assert_eq!(resolved.path.as_deref(), Some("…/d29/deep.log"));
        assert!(!resolved.complete);
        assert!(
            !resolved.deleted,
            "not deleted just because the path is long"
        );
        assert_eq!(resolved.host_path, None);
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
        assert_eq!(
            split_layers(b"a\\:b:c"),
            vec![PathBuf::from("a:b"), PathBuf::from("c")]
        );
        assert_eq!(
            overlay.locate(Path::new("/var/lib/c1/upper/tmp/spring.log")),
            Some((Layer::Upper, PathBuf::from("/tmp/spring.log")))
        );
        assert_eq!(
            overlay.locate(Path::new("/img/l1/usr/lib/libc.so")),
            Some((Layer::Lower, PathBuf::from("/usr/lib/libc.so")))
        );
        assert_eq!(overlay.locate(Path::new("/var/lib/c1/work/x")), None);
    }

    #[test]
    fn overlay_options_as_linux_6_18_shows_them() {
        // Captured from this kernel: lowerdir=/tmp/ovt/lo\:w\, er:/tmp/ovt/lo2 as mounted.
        let line = r"45 27 0:39 / /tmp/ovt/merged rw,relatime - overlay overlay rw,lowerdir=/tmp/ovt/lo\134:w\134\054\040er:/tmp/ovt/lo2,upperdir=/tmp/ovt/up\040per,workdir=/tmp/ovt/work,uuid=on";
        let overlay = Overlay::from_mount(&parse_mountinfo(line)[0]).unwrap();
        assert_eq!(
            overlay.lowers,
            vec![
                PathBuf::from("/tmp/ovt/lo:w, er"),
                PathBuf::from("/tmp/ovt/lo2")
            ]
        );
        assert_eq!(overlay.upper, Some(PathBuf::from("/tmp/ovt/up per")));
    }

    #[test]
    fn host_path_prefers_the_root_mount_over_bind_mounts() {
        let mut table = PathTable::default();
        table.set_mounts(parse_mountinfo(MOUNTS));
        let dev = 254 << 20;
        assert_eq!(
            table.host_path(dev, Path::new("/var/lib/data/x")),
            Some(PathBuf::from("/var/lib/data/x"))
        );
        assert_eq!(
            table.host_path(dev, Path::new("/etc/hosts")),
            Some(PathBuf::from("/etc/hosts"))
        );
        assert_eq!(table.host_path((7 << 20) | 1, Path::new("/x")), None);
    }

    #[test]
    fn block_device_inodes_are_named_as_metadata() {
        let mut table = PathTable::default();
        let mut name = kernel_name(&[], 3, 99, 0);
        name.mode = 0o060600;
        name.rdev = 254 << 20;
        let kernel = KernelPath::from_name(&name);
        assert_eq!(
            table.resolve(3, 99, 0, || Some(kernel)).path.as_deref(),
            Some("[metadata of block device 254:0]")
        );
    }
}
