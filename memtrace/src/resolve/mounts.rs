//! `/proc/<pid>/mountinfo`, parsed.

use std::{fs, io, os::unix::ffi::OsStringExt, path::PathBuf};

/// One line of mountinfo (see proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent_id: u32,
    /// `major:minor` of the mounted filesystem: the kernel's `s_dev`.
    pub major: u32,
    pub minor: u32,
    /// The directory inside the filesystem that is mounted (not always `/`).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options, e.g. `lowerdir=...,upperdir=...` for overlayfs.
    pub super_options: String,
}

impl Mount {
    /// Whether a per-superblock option is set (`memory` for a v1 memory cgroup mount).
    pub fn has_super_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

pub fn read_mountinfo(pid: Option<u32>) -> io::Result<Vec<Mount>> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/mountinfo"),
        None => "/proc/self/mountinfo".to_owned(),
    };
    // A mount point that is not UTF-8 must not cost every other mount: read bytes, and let
    // only such lines lose their odd bytes.
    Ok(parse_mountinfo(&String::from_utf8_lossy(&fs::read(path)?)))
}

/// Parses mountinfo text; malformed lines are skipped (the kernel writes none).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let id = head.next()?.parse().ok()?;
    let parent_id = head.next()?.parse().ok()?;
    let (major, minor) = head.next()?.split_once(':')?;
    let root = path_of(unescape_bytes(head.next()?));
    let mount_point = path_of(unescape_bytes(head.next()?));
    let mut tail = tail.split(' ');
    let fs_type = tail.next()?.to_owned();
    let source = unescape(tail.next()?);
    let super_options = tail.next().unwrap_or("").to_owned();
    Some(Mount {
        id,
        parent_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        fs_type,
        source,
        super_options,
    })
}

fn path_of(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`), as text.
pub fn unescape(field: &str) -> String {
    String::from_utf8_lossy(&unescape_bytes(field)).into_owned()
}

/// Undoes the kernel's octal escapes, keeping the bytes as they are (paths need not be UTF-8).
pub fn unescape_bytes(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
35 22 0:31 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
36 22 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
40 22 0:45 / /run/c1/rootfs rw,relatime - overlay overlay rw,lowerdir=/img/a:/img/b,upperdir=/var/c1/upper,workdir=/var/c1/work
41 22 254:0 /data/with\\040space /mnt/my\\040dir rw - ext4 /dev/vda rw
";

    #[test]
    fn parses_fields() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].major, 254);
        assert_eq!(mounts[0].minor, 0);
        assert_eq!(mounts[0].fs_type, "ext4");
        assert!(mounts[1].has_super_option("memory"));
        assert!(!mounts[2].has_super_option("memory"));
        assert_eq!(mounts[2].fs_type, "cgroup2");
        assert!(mounts[3].super_options.contains("upperdir=/var/c1/upper"));
    }

    #[test]
    fn unescapes_octal() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts[4].root, PathBuf::from("/data/with space"));
        assert_eq!(mounts[4].mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }
}
