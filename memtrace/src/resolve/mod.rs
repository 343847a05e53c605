//! Turning kernel identities (cgroup ids, device and inode numbers) into names a person
//! recognizes: cgroup paths, containers and pods, file paths inside and outside containers.

pub mod cgroups;
pub mod containers;
pub mod mounts;
pub mod paths;

use memtrace_common::{CgroupEvent, FileEvent};

use self::{
    cgroups::{CgroupTable, Hierarchies},
    containers::{identify, systemd_unit, Container, RuntimeState},
    paths::PathTable,
};
use crate::model::CgroupUsage;

/// Everything that names things, kept across snapshots.
pub struct Resolvers {
    pub cgroups: CgroupTable,
    pub paths: PathTable,
    pub runtime: RuntimeState,
}

impl Resolvers {
    pub fn new() -> Self {
        Self {
            cgroups: CgroupTable::new(Hierarchies::discover()),
            paths: PathTable::new(),
            runtime: RuntimeState::scan(),
        }
    }

    pub fn on_cgroup_event(&mut self, event: &CgroupEvent) {
        self.cgroups.apply(event);
    }

    pub fn on_file_event(&mut self, event: &FileEvent) {
        self.paths.apply(event);
    }

    /// Re-reads what changes as containers come and go: mounts and runtime state.
    pub fn refresh(&mut self) {
        self.paths.refresh_mounts();
        self.runtime = RuntimeState::scan();
        self.cgroups.begin_lookups();
    }

    /// Every container visible now: from runtime state and from cgroup paths.
    pub fn known_containers(&self) -> Vec<Container> {
        let mut found: Vec<Container> = self.runtime.containers().cloned().collect();
        for (hierarchy, _, name) in self.cgroups.known() {
            let dir = self.cgroups.hierarchies.directory_of(hierarchy, &name.path);
            if let Some(container) = identify(&name.path, dir.as_deref(), &self.runtime) {
                if !found.iter().any(|c| c.id == container.id) {
                    found.push(container);
                }
            }
        }
        found
    }

    /// Fills in names: cgroup paths, containers, units, file paths.
    pub fn annotate(&mut self, cgroups: &mut [CgroupUsage]) {
        for cgroup in cgroups.iter_mut() {
            if let Some(name) = self.cgroups.lookup(cgroup.hierarchy, cgroup.id) {
                cgroup.path = Some(name.path.clone());
                cgroup.removed = name.removed;
            }
            if let Some(path) = cgroup.path.as_deref() {
                let dir = self
                    .cgroups
                    .hierarchies
                    .directory_of(cgroup.hierarchy, path);
                cgroup.container = identify(path, dir.as_deref(), &self.runtime);
                if cgroup.container.is_none() {
                    cgroup.unit = systemd_unit(path);
                }
            }
            for file in cgroup.files.iter_mut() {
                let resolved = self.paths.resolve(file.dev_raw, file.ino);
                file.path = resolved.path;
                file.host_path = resolved.host_path;
                file.deleted = resolved.deleted;
                file.layer = resolved.layer;
            }
        }
    }
}

impl Default for Resolvers {
    fn default() -> Self {
        Self::new()
    }
}
