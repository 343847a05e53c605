//! Turning kernel identities (cgroup ids, device numbers) into names a person recognizes.

pub mod cgroups;
pub mod mounts;
