//! `memtrace top` in a real pseudo-terminal (tmux): a fresh cgroup's file shows up with its
//! size, `/` narrows the list to it, Enter shows the file, `q` exits 0 and gives the terminal
//! back.

use memtrace_tests::{
    cgroup::MemCgroup,
    files::{dd_write, folio_census, Scratch},
    memtrace_bin, require_root,
    tmux::Tmux,
    MIB,
};

#[test]
fn top_shows_a_fresh_cgroup_filters_to_it_drills_into_its_file_and_quits_cleanly() {
    require_root();
    let tmux = Tmux::start(
        "top",
        &format!(
            "{} top --no-seed --interval 500ms; echo EXIT=$?; sleep 60",
            memtrace_bin().display()
        ),
    );
    tmux.wait_for("the view", |s| {
        s.contains("memtrace top") && s.contains("CGROUP")
    });

    let cgroup = MemCgroup::create("top");
    let leaf = cgroup.path.rsplit('/').next().unwrap().to_owned();
    let scratch = Scratch::new("top");
    let file = scratch.path("top-view.log");
    cgroup.run(dd_write(&file, 24).arg("conv=fsync"));
    let kernel = cgroup.page_cache_bytes();
    assert!(
        kernel >= 24 * MIB,
        "memory.stat charged {kernel} B for 24 MiB"
    );
    // The row shows the cgroup's cache as the first column (`24.0 MiB`): memory.stat's, to
    // one folio of the file (kpageflags says how large its folios are) and the display's
    // rounding to a tenth of a MiB.
    let one_folio = folio_census(&std::fs::File::open(&file).unwrap())
        .expect("folio census")
        .largest_folio_bytes();
    let tolerance = (one_folio as f64 + 0.05 * MIB as f64) / MIB as f64;
    let kernel_mib = kernel as f64 / MIB as f64;
    let shown_mib = |line: &str| -> Option<f64> {
        let mut fields = line.split_whitespace();
        let value: f64 = fields.next()?.parse().ok()?;
        (fields.next()? == "MiB").then_some(value)
    };
    let screen = tmux.wait_for(
        &format!("the cgroup at memory.stat's {kernel_mib:.2} MiB ± {tolerance:.2}"),
        |s| {
            s.lines().any(|l| {
                l.contains(&leaf)
                    && shown_mib(l).is_some_and(|mib| (mib - kernel_mib).abs() <= tolerance)
            })
        },
    );
    assert!(screen.contains(&cgroup.path), "{screen}");

    tmux.run(&["send-keys", "-t", "top", "/"]);
    tmux.run(&["send-keys", "-t", "top", "-l", &leaf]);
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let screen = tmux.wait_for("the filter", |s| s.contains(&format!("filter {leaf}")));
    let rows: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.starts_with("CACHED"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 1, "only the cgroup named:\n{screen}");
    assert!(rows[0].contains(&leaf), "{screen}");

    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    tmux.wait_for("the file", |s| {
        s.contains("top-view.log") && s.contains("files of")
    });

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait_for("the exit", |s| s.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "q exits 0:\n{screen}");
    assert_eq!(
        tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim(),
        "0",
        "the terminal is given back (alternate screen off)"
    );
    assert!(
        !screen.contains("CGROUP"),
        "the view is gone from the screen:\n{screen}"
    );
}
