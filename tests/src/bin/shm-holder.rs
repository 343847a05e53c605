//! Holds shared memory the way programs do, for the tmpfs/shmem tests:
//! `shm-holder sysv|memfd|anon MIB READY_FILE`. Fills MIB MiB of a SysV segment (attached, and
//! marked for removal so it goes when this process does), of a memfd (held open) or of a
//! shared anonymous mapping (as PostgreSQL keeps its shared buffers), writes READY_FILE, then
//! sleeps until killed (at most ten minutes).

use std::{env, ffi::CString, fs, process::ExitCode, thread, time::Duration};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    let [_, kind, mib, ready] = args.as_slice() else {
        eprintln!("usage: shm-holder sysv|memfd|anon MIB READY_FILE");
        return ExitCode::from(2);
    };
    let Ok(mib) = mib.parse::<usize>() else {
        eprintln!("shm-holder: MIB must be a number");
        return ExitCode::from(2);
    };
    let size = mib << 20;
    let held = match kind.as_str() {
        "sysv" => sysv(size),
        "memfd" => memfd(size),
        "anon" => shared_anonymous(size),
        _ => Err(format!("unknown kind {kind}")),
    };
    if let Err(err) = held {
        eprintln!("shm-holder: {err}");
        return ExitCode::FAILURE;
    }
    if let Err(err) = fs::write(ready, b"ready") {
        eprintln!("shm-holder: {ready}: {err}");
        return ExitCode::FAILURE;
    }
    thread::sleep(Duration::from_secs(600));
    ExitCode::SUCCESS
}

fn sysv(size: usize) -> Result<(), String> {
    // SAFETY: plain syscalls; the segment is attached for the rest of this process and filled
    // within its size.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600);
        if id < 0 {
            return Err(format!("shmget: {}", std::io::Error::last_os_error()));
        }
        let addr = libc::shmat(id, std::ptr::null(), 0);
        if addr as isize == -1 {
            return Err(format!("shmat: {}", std::io::Error::last_os_error()));
        }
        // Removed once nobody is attached: when this process exits.
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        std::ptr::write_bytes(addr.cast::<u8>(), 0x5a, size);
    }
    Ok(())
}

fn shared_anonymous(size: usize) -> Result<(), String> {
    // SAFETY: a fresh mapping of our own, kept for the rest of the process and filled within
    // its size.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        std::ptr::write_bytes(addr.cast::<u8>(), 0x5a, size);
    }
    Ok(())
}

fn memfd(size: usize) -> Result<(), String> {
    let name = CString::new("memtrace-test").expect("no NUL");
    // SAFETY: plain syscalls on a descriptor we own and keep open for the rest of the process.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), 0);
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..size >> 20 {
            if libc::write(fd, chunk.as_ptr().cast(), chunk.len()) != chunk.len() as isize {
                return Err(format!("write: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}
