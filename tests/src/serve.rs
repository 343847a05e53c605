//! `memtrace serve` for a test, on a free port.

use std::{
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    http::{free_port, get},
    memtrace,
};

/// memtrace serve, stopped when dropped.
pub struct Serve {
    child: Child,
    /// Where it listens: `127.0.0.1:PORT`.
    pub addr: String,
}

impl Serve {
    /// Starts `memtrace serve` on a free port with `extra` arguments; returns once it answers
    /// `/healthz`.
    pub fn start(extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = memtrace(&["serve", "--listen", &addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("memtrace serve");
        let serve = Self { child, addr };
        let started = Instant::now();
        while get(&serve.addr, "/healthz").is_none_or(|(status, _)| status != 200) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "memtrace serve did not answer /healthz"
            );
            thread::sleep(Duration::from_millis(200));
        }
        serve
    }

    /// One scrape of `/metrics`, asserted to succeed.
    pub fn metrics(&self) -> String {
        let (status, body) = get(&self.addr, "/metrics").expect("a scrape");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
