//! Page-cache workloads for `cargo xtask bench`, each printing one JSON line with its rate:
//!
//! - `churn DIR SECONDS`: write a 4 MiB file 4 KiB at a time, truncate it, repeat: one page
//!   added and one removed per 4 KiB.
//! - `churn-1m DIR SECONDS`: the same in 1 MiB writes (one `vfs_write` per 256 pages).
//! - `read-churn DIR SECONDS`: read a 16 MiB file, drop it with fadvise(DONTNEED), repeat.
//! - `many-files DIR CGROUP_DIR FILES CGROUPS`: FILES small files spread over CGROUPS memory
//!   cgroups created under CGROUP_DIR (this process moves itself into each in turn).

use std::{
    env, fs,
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::unix::io::AsRawFd,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

const PAGE: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["churn", dir, seconds] => churn(Path::new(dir), seconds_arg(seconds), PAGE),
        ["churn-1m", dir, seconds] => churn(Path::new(dir), seconds_arg(seconds), 1 << 20),
        ["read-churn", dir, seconds] => read_churn(Path::new(dir), seconds_arg(seconds)),
        ["many-files", dir, cgroups_dir, files, cgroups] => many_files(
            Path::new(dir),
            Path::new(cgroups_dir),
            files.parse().unwrap_or(100_000),
            cgroups.parse().unwrap_or(1_000),
        ),
        _ => Err("usage: page-churn churn|churn-1m|read-churn DIR SECONDS | many-files DIR CGROUP_DIR FILES CGROUPS".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("page-churn: {err}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn seconds_arg(text: &str) -> Duration {
    Duration::from_secs_f64(text.parse().unwrap_or(3.0))
}

fn report(kind: &str, pages: u64, operations: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "{{\"workload\":\"{kind}\",\"pages\":{pages},\"operations\":{operations},\"seconds\":{seconds:.6},\"pages_per_second\":{:.1}}}",
        pages as f64 / seconds
    );
}

fn churn(dir: &Path, duration: Duration, write_size: usize) -> Result<()> {
    let path = dir.join("churn.dat");
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let chunk = vec![0x5au8; write_size];
    let (mut pages, mut rounds) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..(4 << 20) / write_size {
            file.write_all(&chunk)?;
        }
        file.set_len(0)?;
        // Writes continue at the old offset otherwise, leaving a sparse hole behind.
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
        pages += 1024;
        rounds += 1;
    }
    let kind = if write_size == PAGE {
        "churn"
    } else {
        "churn-1m"
    };
    report(kind, pages, rounds, start.elapsed());
    fs::remove_file(path)?;
    Ok(())
}

fn read_churn(dir: &Path, duration: Duration) -> Result<()> {
    let path = dir.join("read-churn.dat");
    fs::write(&path, vec![0x33u8; 16 << 20])?;
    let mut file = File::open(&path)?;
    file.sync_all()?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut pages, mut rounds) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
        while file.read(&mut buffer)? > 0 {}
        // SAFETY: plain syscall on our fd.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        pages += (16 << 20) / PAGE as u64;
        rounds += 1;
    }
    report("read-churn", pages, rounds, start.elapsed());
    fs::remove_file(path)?;
    Ok(())
}

fn many_files(dir: &Path, cgroups_dir: &Path, files: usize, cgroups: usize) -> Result<()> {
    let start = Instant::now();
    let per_cgroup = files.div_ceil(cgroups);
    let data = vec![0x42u8; PAGE];
    let me = std::process::id().to_string();
    let mut written = 0u64;
    for c in 0..cgroups {
        let cgroup = cgroups_dir.join(format!("bench-{c}"));
        fs::create_dir_all(&cgroup)?;
        fs::write(cgroup.join("cgroup.procs"), &me)?;
        let sub = dir.join(format!("c{c}"));
        fs::create_dir_all(&sub)?;
        for f in 0..per_cgroup.min(files - written as usize) {
            fs::write(sub.join(format!("f{f}")), &data)?;
            written += 1;
        }
    }
    report("many-files", written, written, start.elapsed());
    Ok(())
}
