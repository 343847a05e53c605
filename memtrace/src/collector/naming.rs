//! Fills the model's names from the resolvers: cgroup paths, containers and units, file paths.

use crate::{
    model::CgroupUsage,
    resolve::{containers::systemd_unit, paths::KernelPath, Resolvers},
};

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

/// File paths (looked up lazily: call it after cutting what will not be shown). `ask_kernel`
/// asks the kernel for the path of (dev, ino).
pub(crate) fn name_files(
    resolvers: &mut Resolvers,
    cgroups: &mut [CgroupUsage],
    mut ask_kernel: impl FnMut(u32, u64) -> Option<KernelPath>,
) {
    for cgroup in cgroups.iter_mut() {
        for file in cgroup.files.iter_mut() {
            let (dev, ino) = (file.dev.0, file.ino);
            let resolved = resolvers.paths.resolve(dev, ino, || ask_kernel(dev, ino));
            file.path = resolved.path;
            file.host_path = resolved.host_path;
            file.path_hex = resolved.path_hex;
            file.host_path_hex = resolved.host_path_hex;
            file.path_complete = resolved.complete;
            file.deleted = resolved.deleted;
            file.layer = resolved.layer;
        }
    }
}
