//! Runs the host's `cargo test` so that no test can hold CI past its time: a deadline for the
//! whole run, and no process a test left behind (a child of a test that panicked) kept alive.
//!
//! A leftover that inherited cargo's stdout keeps the pipe open, and a reader waiting for its
//! end waits for ever: one CI run spent its 90 minutes so, on a shell loop whose test had
//! panicked. Every process of the run carries one environment entry, so leftovers are found
//! wherever they were reparented.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

/// The host's tests take about 17 minutes on this kind of machine; past 35 one has hung. The
/// VM runs after them must still fit CI's 90 minutes.
pub(crate) const HOST_TESTS_DEADLINE: Duration = Duration::from_secs(35 * 60);

/// How long output may still come after cargo has exited before its holders count as leftovers.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// The environment entry every process of one run inherits.
const RUN_MARK: &str = "MEMTRACE_XTASK_TEST_RUN";

#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) ignored: u64,
    pub(crate) success: bool,
}

impl Tally {
    /// Adds a libtest summary line (`test result: ok. 6 passed; 0 failed; 1 ignored; ...`).
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// The tests libtest said were slow and has not yet said ended, to name them if time runs out.
#[derive(Default)]
struct Slow {
    running: BTreeSet<String>,
}

impl Slow {
    fn see(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" has been running for over 60 seconds"))
        {
            self.running.insert(name.to_owned());
        } else if let Some((name, _)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            self.running.remove(name);
        }
    }
}

/// Runs a `cargo test` command, passing its output through and adding up its result lines.
/// Past `deadline` the run is killed and counts as failed; whatever it left running when it
/// ended is named and killed.
pub(crate) fn run_tests(cmd: &mut Command, deadline: Duration) -> Result<Tally> {
    let mark = run_mark();
    let mut child = cmd
        .env(RUN_MARK, &mark)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    // Detached: a leftover that outlives the kill below must not hold xtask too.
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut tally = Tally::default();
    let mut slow = Slow::default();
    let mut take = |line: String, slow: &mut Slow| {
        println!("{line}");
        tally.add_line(&line);
        slow.see(&line);
    };
    let started = Instant::now();
    let mut ended: Option<(ExitStatus, Instant)> = None;
    let mut timed_out = false;
    loop {
        match lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => take(line, &mut slow),
            Err(RecvTimeoutError::Disconnected) => {
                if ended.is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(200));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        match ended {
            None => {
                if let Some(status) = child.try_wait().context("waiting for cargo test")? {
                    ended = Some((status, Instant::now()));
                } else if started.elapsed() > deadline {
                    eprintln!(
                        "xtask: the tests ran past {} minutes, so one has hung; killing them. Still running: {}",
                        deadline.as_secs() / 60,
                        if slow.running.is_empty() {
                            "(no test said it was slow)".to_owned()
                        } else {
                            slow.running.iter().cloned().collect::<Vec<_>>().join(", ")
                        }
                    );
                    let _ = child.kill();
                    let status = child.wait().context("waiting for cargo test")?;
                    timed_out = true;
                    ended = Some((status, Instant::now()));
                    kill_leftovers(&mark);
                }
            }
            // Output still open after cargo's end: a leftover holds it.
            Some((_, at)) if at.elapsed() > OUTPUT_GRACE => {
                kill_leftovers(&mark);
                while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
                    take(line, &mut slow);
                }
                break;
            }
            Some(_) => {}
        }
    }
    // Leftovers that closed their output are leftovers too.
    kill_leftovers(&mark);
    let (status, _) = ended.context("cargo test's end was not seen")?;
    tally.success = status.success() && !timed_out;
    Ok(tally)
}

fn run_mark() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// SIGKILLs every process that carries this run's mark, until none is left (a shell loop may
/// fork between two scans), and names them loudly: a test that leaves a process running is a
/// defect to mend.
fn kill_leftovers(mark: &str) {
    let entry = format!("{RUN_MARK}={mark}");
    let mut named = BTreeSet::new();
    for _ in 0..50 {
        let found = marked_processes(&entry);
        if found.is_empty() {
            break;
        }
        for (pid, name) in found {
            // SAFETY: kill(2) on a pid just read from /proc; at worst it has exited.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            named.insert(format!("{pid} {name}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
    if !named.is_empty() {
        eprintln!(
            "xtask: WARNING: the tests left {} process(es) running, now killed (a test that panicked, or one that does not stop its children): {}",
            named.len(),
            named.into_iter().collect::<Vec<_>>().join("; ")
        );
    }
}

/// Processes whose environment holds `entry`, with their command names made printable.
fn marked_processes(entry: &str) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        })
        .map(|pid| {
            let comm = fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
            let name: String = String::from_utf8_lossy(comm.trim_ascii_end())
                .chars()
                .flat_map(char::escape_default)
                .collect();
            (pid, name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_line_adds_its_counts() {
        let mut tally = Tally::default();
        tally.add_line("test result: ok. 6 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.00s");
        tally
            .add_line("test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!((tally.passed, tally.failed, tally.ignored), (10, 1, 2));
    }

    #[test]
    fn a_slow_test_is_named_until_it_ends() {
        let mut slow = Slow::default();
        slow.see("test a::b has been running for over 60 seconds");
        slow.see("test c has been running for over 60 seconds");
        slow.see("test a::b ... ok");
        assert_eq!(slow.running.iter().collect::<Vec<_>>(), ["c"]);
    }

    /// A child that keeps cargo's output open after cargo ends (here a shell that exits at
    /// once, leaving `sleep` behind) must neither hold the run nor survive it.
    #[test]
    fn a_leftover_holding_the_output_is_killed_and_the_run_ends() {
        let pid_file = std::env::temp_dir().join(format!("xtask-leftover-{}", std::process::id()));
        let started = Instant::now();
        let tally = run_tests(
            Command::new("sh").arg("-c").arg(format!(
                "echo 'test result: ok. 1 passed; 0 failed; 0 ignored'; sleep 600 & echo $! > {}; exit 0",
                pid_file.display()
            )),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(tally.success);
        assert_eq!(tally.passed, 1);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run waited {:?} on its leftover",
            started.elapsed()
        );
        let leftover = fs::read_to_string(&pid_file).unwrap();
        let _ = fs::remove_file(&pid_file);
        // Killed, then reaped by init: give it a moment to go.
        let gone = (0..50).any(|_| {
            thread::sleep(Duration::from_millis(100));
            fs::read_to_string(format!("/proc/{}/stat", leftover.trim()))
                .map_or(true, |stat| stat.contains(") Z "))
        });
        assert!(gone, "the leftover sleep {} still runs", leftover.trim());
    }

    #[test]
    fn a_run_past_its_deadline_is_killed_and_fails() {
        let tally = run_tests(
            Command::new("sh").args(["-c", "echo started; sleep 600"]),
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(!tally.success);
    }
}
