//! Opening files memtrace did not create, as root, beside containers it does not trust.
//!
//! A path in a container's layer can be swapped for a symlink (root would then open any host
//! file and report it under the container's name), a FIFO (an open would block) or a device.
//! So: no symlink is followed anywhere in the path (`openat2` with `RESOLVE_NO_SYMLINKS`; the
//! paths memtrace builds come from mountinfo and directory walks, which contain none), nothing
//! blocks (`O_NONBLOCK`), no terminal becomes ours (`O_NOCTTY`), and the result is checked with
//! `fstat` to be a regular file, with the identity expected, before anything reads or maps it.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt},
        io::{AsRawFd, FromRawFd},
    },
    path::Path,
};

/// Why a file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a regular file (a {kind})")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is another file now (inode {found}, expected {expected})")]
    Replaced {
        path: String,
        found: u64,
        expected: u64,
    },
}

/// Flags for every untrusted open: read-only, never blocking, never our terminal.
const FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW;

/// Reads a small text file memtrace did not write (runtime state, OCI configs): opened as
/// `open_regular` does, and refused past `cap` bytes, so a huge or endless file costs nothing.
pub fn read_capped(path: &Path, cap: u64) -> Option<String> {
    use std::io::Read;
    let file = open_regular(path, None)
        .map_err(|err| log::debug!("not read: {err}"))
        .ok()?;
    let mut text = String::new();
    let read = file.take(cap + 1).read_to_string(&mut text).ok()?;
    if read as u64 > cap {
        log::debug!("{} is larger than {cap} bytes: not read", path.display());
        return None;
    }
    Some(text)
}

/// Opens the regular file at `path` without following any symlink in it; with `ino`, only if
/// it is still that inode.
pub fn open_regular(path: &Path, ino: Option<u64>) -> Result<File, OpenError> {
    let fail = |source| OpenError::Io {
        path: path.display().to_string(),
        source,
    };
    // O_NOATIME keeps memtrace from touching access times; only the owner or CAP_FOWNER may.
    let file = openat2_no_symlinks(path, FLAGS | libc::O_NOATIME)
        .or_else(|_| openat2_no_symlinks(path, FLAGS))
        .map_err(fail)?;
    check_regular(file, path, ino)
}

/// Opens what a `/proc/<pid>/fd/N` or `map_files` link refers to. Those are magic links, and
/// following them is the point: the process holds that file. It still must not block, and must
/// be a regular file before it is used.
pub fn open_proc_link(link: &Path) -> Result<File, OpenError> {
    let fail = |source| OpenError::Io {
        path: link.display().to_string(),
        source,
    };
    let c_path = CString::new(link.as_os_str().as_bytes())
        .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let flags = FLAGS & !libc::O_NOFOLLOW;
    // SAFETY: a NUL-terminated path; the returned fd is owned by the File below.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags) };
    if fd < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    check_regular(file, link, None)
}

fn check_regular(file: File, path: &Path, ino: Option<u64>) -> Result<File, OpenError> {
    let meta = file.metadata().map_err(|source| OpenError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "device"
        } else if kind.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(OpenError::NotRegular {
            path: path.display().to_string(),
            kind,
        });
    }
    if let Some(expected) = ino.filter(|&i| i != meta.ino()) {
        return Err(OpenError::Replaced {
            path: path.display().to_string(),
            found: meta.ino(),
            expected,
        });
    }
    Ok(file)
}

/// `openat2(2)` with no symlink (or magic link) followed in any component.
fn openat2_no_symlinks(path: &Path, flags: libc::c_int) -> io::Result<File> {
    openat2(
        None,
        path,
        flags,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// `openat2(2)` from `dir` (or the working directory), with exactly `flags` and `resolve`.
pub fn openat2(
    dir: Option<&File>,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain integer data, valid when zeroed.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    let dirfd = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: the kernel reads the path and `how` (size given), both alive for the call; the
    // returned fd is owned by the File below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_fifos_and_replaced_files() {
        let dir = std::env::temp_dir().join(format!("memtrace-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real.log");
        std::fs::write(&real, b"data").unwrap();
        let ino = std::fs::metadata(&real).unwrap().ino();
        assert!(open_regular(&real, Some(ino)).is_ok());
        assert!(matches!(
            open_regular(&real, Some(ino + 1)),
            Err(OpenError::Replaced { .. })
        ));

        let link = dir.join("link.log");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_regular(&link, None).is_err(), "a symlink leaf");
        let linked_dir = dir.join("linked-dir");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        assert!(
            open_regular(&linked_dir.join("real.log"), None).is_err(),
            "a symlink in the middle of the path"
        );

        let fifo = dir.join("fifo.log");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert!(matches!(
            open_regular(&fifo, None),
            Err(OpenError::NotRegular { kind: "FIFO", .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
