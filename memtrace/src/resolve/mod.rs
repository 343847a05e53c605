//! Turning kernel identities (cgroup ids, device and inode numbers) into names a person
//! recognizes: cgroup paths, containers and pods, file paths inside and outside containers.

pub mod cgroups;
pub mod containers;
pub mod memstat;
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

    /// The containers running here, by name (or short id), for error messages.
    pub fn container_list(&self) -> String {
        let mut names: Vec<String> = self
            .known_containers()
            .iter()
            .map(|c| {
                c.name
                    .clone()
                    .unwrap_or_else(|| c.id.chars().take(12).collect())
            })
            .collect();
        names.sort();
        if names.is_empty() {
            "(none found)".to_owned()
        } else {
            names.join(", ")
        }
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

    /// Finds what `query` names: a pid, a cgroup path, or a container name/id. Returns the kind,
    /// the memory cgroup (hierarchy, path) and the container if any.
    pub fn find_target(
        &mut self,
        query: &str,
    ) -> Result<(&'static str, u32, String, Option<Container>), String> {
        let hierarchy = self.cgroups.hierarchies.memory_hierarchy.unwrap_or(0);
        if let Ok(pid) = query.parse::<u32>() {
            let path = crate::collector::seed::memcg_path_of(pid, hierarchy)
                .ok_or_else(|| format!("no process {pid} (or its memory cgroup cannot be read)"))?;
            let container = self.container_of(hierarchy, &path);
            return Ok(("pid", hierarchy, path, container));
        }
        if query.starts_with('/') {
            let exists = self
                .cgroups
                .hierarchies
                .directory_of(hierarchy, query)
                .is_some_and(|dir| dir.is_dir());
            if !exists {
                return Err(format!("no memory cgroup at {query}"));
            }
            let container = self.container_of(hierarchy, query);
            return Ok(("cgroup", hierarchy, query.to_owned(), container));
        }
        let mut matches: Vec<(String, Container)> = Vec::new();
        for (h, _, name) in self.cgroups.known() {
            if h != hierarchy || name.removed {
                continue;
            }
            let dir = self.cgroups.hierarchies.directory_of(h, &name.path);
            if let Some(container) = identify(&name.path, dir.as_deref(), &self.runtime) {
                if crate::model::container_matches(&container, query) {
                    matches.push((name.path.clone(), container));
                }
            }
        }
        // Conmon and pod-level cgroups also carry ids: the container's own cgroup is the
        // shortest match only when paths nest; otherwise more than one is ambiguous.
        matches.sort_by_key(|(path, _)| path.len());
        match matches.len() {
            0 => Err(format!(
                "`{query}` is not a pid, a cgroup path or a container running here; containers: {}",
                self.container_list()
            )),
            1 => {
                let (path, container) = matches.remove(0);
                Ok(("container", hierarchy, path, Some(container)))
            }
            _ => Err(format!(
                "`{query}` matches {} containers ({}); give a longer id",
                matches.len(),
                matches
                    .iter()
                    .map(|(_, c)| c.id.chars().take(12).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn container_of(&self, hierarchy: u32, path: &str) -> Option<Container> {
        let dir = self.cgroups.hierarchies.directory_of(hierarchy, path);
        identify(path, dir.as_deref(), &self.runtime)
    }

    /// Every overlay layer directory on the node (writable and image layers), with the memory
    /// cgroup directory of the container running on it, when runtime state says.
    pub fn overlay_layers(&self) -> Vec<(std::path::PathBuf, Option<std::path::PathBuf>)> {
        let mut layers = Vec::new();
        for overlay in self.paths.overlays() {
            let memcg_dir = self.runtime.memcg_dir_of_rootfs(&overlay.mount_point);
            for dir in overlay.upper.iter().chain(&overlay.lowers) {
                if !layers.iter().any(|(d, _)| d == dir) {
                    layers.push((dir.clone(), memcg_dir.clone()));
                }
            }
        }
        layers
    }

    /// Cgroup paths, containers and units.
    pub fn name_cgroups(&mut self, cgroups: &mut [CgroupUsage]) {
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
        }
    }

    /// File paths (looked up lazily: call it after cutting what will not be shown).
    pub fn name_files(&mut self, cgroups: &mut [CgroupUsage]) {
        for cgroup in cgroups.iter_mut() {
            for file in cgroup.files.iter_mut() {
                let resolved = self.paths.resolve(file.dev.0, file.ino);
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
