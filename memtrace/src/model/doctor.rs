//! What `doctor` found: a list of checks and whether memtrace can run.

use serde::Serialize;

/// One thing checked.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// Whether memtrace cannot work without it.
    pub required: bool,
}

impl Check {
    pub fn new(
        name: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
        required: bool,
    ) -> Self {
        Self {
            name: name.into(),
            ok,
            detail: detail.into(),
            required,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    /// Every required check passed.
    pub healthy: bool,
}

impl DoctorReport {
    pub fn new(checks: Vec<Check>) -> Self {
        let healthy = checks.iter().all(|c| c.ok || !c.required);
        Self { checks, healthy }
    }
}
