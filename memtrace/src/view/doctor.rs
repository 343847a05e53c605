//! `doctor` as text: a line per check, then the verdict.

use std::io::{self, Write};

use crate::model::doctor::DoctorReport;

pub fn write(out: &mut impl Write, report: &DoctorReport) -> io::Result<()> {
    for c in &report.checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        writeln!(out, "{mark} {:<42} {}", c.name, c.detail)?;
    }
    writeln!(
        out,
        "{}",
        if report.healthy {
            "memtrace can run here."
        } else {
            "memtrace cannot run here: fix the FAIL lines above."
        }
    )?;
    out.flush()
}
