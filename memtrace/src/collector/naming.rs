//! Fills the model's names from the resolvers: cgroup paths, containers and units, file paths.

use crate::{model::CgroupUsage, resolve::containers::systemd_unit, resolve::Resolvers};

/// Cgroup paths, containers and units.
pub(crate) fn name_cgroups(resolvers: &mut Resolvers, cgroups: &mut [CgroupUsage]) {
    for cgroup in cgroups.iter_mut() {
        if let Some(name) = resolvers.cgroups.lookup(cgroup.hierarchy, cgroup.id) {
            cgroup.path = Some(name.path.clone());
            cgroup.removed = name.removed;
        }
        if let Some(path) = cgroup.path.as_deref() {
            cgroup.container = resolvers.container_of(cgroup.hierarchy, path);
            if cgroup.container.is_none() {
                cgroup.unit = systemd_unit(path);
            }
        }
    }
}

/// File paths (looked up lazily: call it after cutting what will not be shown).
pub(crate) fn name_files(resolvers: &mut Resolvers, cgroups: &mut [CgroupUsage]) {
    for cgroup in cgroups.iter_mut() {
        for file in cgroup.files.iter_mut() {
            let resolved = resolvers.paths.resolve(file.dev.0, file.ino);
            file.path = resolved.path;
            file.host_path = resolved.host_path;
            file.deleted = resolved.deleted;
            file.layer = resolved.layer;
        }
    }
}
