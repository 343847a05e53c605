//! A real pseudo-terminal for `memtrace top`: a tmux server of the test's own.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// A tmux server of its own with one session, `top`, of 120×32 cells.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` in session `top` of a server named after `name` and this process.
    pub fn start(name: &str, command: &str) -> Self {
        let tmux = Self {
            socket: format!("memtrace-{name}-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "32",
            command,
        ]);
        tmux
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is required (cargo xtask setup installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Waits until the screen satisfies `ready`; returns it.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what} never showed:\n{screen}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}
