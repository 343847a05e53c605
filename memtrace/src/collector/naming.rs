//! Fills the model's names from the resolvers: cgroup paths, containers and units, file paths.

use std::sync::Arc;

use memtrace_common::{CacheCounters, CacheKey};
use rustc_hash::FxHashMap as HashMap;

use crate::{
    loader::Tracer,
    model::CgroupUsage,
    resolve::{containers::systemd_unit, paths::KernelPath, Resolvers},
};

/// Cgroup paths, containers and units.
pub(crate) fn name_cgroups<'a>(
    resolvers: &mut Resolvers,
    cgroups: impl Iterator<Item = &'a mut CgroupUsage>,
) {
    for cgroup in cgroups {
        if let Some(name) = resolvers.cgroups.lookup(cgroup.hierarchy, cgroup.id) {
            cgroup.path = Some(name.path.clone());
            cgroup.removed = name.removed;
        }
        if let Some(path) = cgroup.path.as_deref() {
            cgroup.container =
                resolvers.container_of_cgroup(cgroup.hierarchy, cgroup.id, path, cgroup.removed);
            if cgroup.container.is_none() {
                cgroup.unit = systemd_unit(path);
            }
        }
    }
}

/// Where each file's inode is and which incarnation it is, as the kernel last showed it: what
/// the drains showed, kept between reports and updated by each drain (a hundred thousand
/// files are not gone over again for every report), with what the half still counting shows
/// on top.
pub(crate) struct InodeIdentities {
    pub(crate) drained: Arc<HashMap<(u32, u64), InodeIdentity>>,
    pub(crate) counting: HashMap<(u32, u64), InodeIdentity>,
}

/// Records the inode each entry shows (where it shows one) as its file's latest.
pub(crate) fn record_identities<'a>(
    identities: &mut HashMap<(u32, u64), InodeIdentity>,
    entries: impl IntoIterator<Item = &'a (CacheKey, CacheCounters)>,
) {
    // One batch can hold two inodes under one number: a file deleted (its pages' removals)
    // and the file that took its number (charged to another memcg, say). The one still
    // holding pages, else the one that added any, is the inode that number names now;
    // whichever came last in the batch is not.
    let mut ranked: HashMap<(u32, u64), (bool, bool)> = HashMap::default();
    for (key, entry) in entries {
        if entry.inode == 0 {
            continue;
        }
        let file = (key.dev, key.ino);
        let rank = (
            entry.pages_added > entry.pages_removed,
            entry.pages_added > 0,
        );
        if ranked.get(&file).is_some_and(|&seen| seen > rank) {
            continue;
        }
        ranked.insert(file, rank);
        identities.insert(
            file,
            InodeIdentity {
                inode: entry.inode,
                // `i_generation` is 32 bits: the kernel's value survives the cut whole.
                generation: entry.generation as u32,
            },
        );
    }
}

impl InodeIdentities {
    pub(crate) fn get(&self, file: &(u32, u64)) -> Option<&InodeIdentity> {
        // What is still counting is newer than any drain.
        self.counting.get(file).or_else(|| self.drained.get(file))
    }
}

/// One file's inode as the kernel last showed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InodeIdentity {
    /// The inode's kernel address.
    pub inode: u64,
    /// `i_generation` (32 bits in the kernel).
    pub generation: u32,
}

/// The kernel's answer for the path of (dev, ino), asked through the inode's address.
pub(crate) fn ask_kernel(
    tracer: &Tracer,
    inodes: &InodeIdentities,
    dev: u32,
    ino: u64,
) -> Option<KernelPath> {
    let inode = inodes.get(&(dev, ino))?.inode;
    tracer.name_inode(inode, dev, ino, KernelPath::from_name)
}

/// What a memcg's files not tracked one by one are shown as.
pub(crate) const OVERFLOW_NAME: &str =
    "[files not tracked one by one: the (memcg, file) map was full; their pages are counted here]";

/// File paths of one cgroup's files (looked up lazily: call it after cutting what will not be
/// shown).
pub(crate) fn name_files(
    resolvers: &mut Resolvers,
    cgroup: &mut CgroupUsage,
    tracer: &Tracer,
    inodes: &InodeIdentities,
) {
    for file in cgroup.files.iter_mut() {
        let (dev, ino) = (file.dev.0, file.ino);
        if crate::model::aggregate::is_overflow_file(dev, ino) {
            file.path = Some(OVERFLOW_NAME.into());
            continue;
        }
        let generation = inodes
            .get(&(dev, ino))
            .map_or(0, |i| u64::from(i.generation));
        if file.generation != 0 && generation != 0 && u64::from(file.generation) != generation {
            // An earlier file that had this inode number, deleted since: the name found for
            // the number is the later file's, not its own.
            file.path = None;
            file.host_path = None;
            file.deleted = true;
            continue;
        }
        let resolved = resolvers.paths.resolve(dev, ino, generation, || {
            ask_kernel(tracer, inodes, dev, ino)
        });
        file.path = resolved.path;
        file.host_path = resolved.host_path;
        file.path_hex = resolved.path_hex;
        file.host_path_hex = resolved.host_path_hex;
        file.path_complete = resolved.complete;
        file.deleted = resolved.deleted;
        file.layer = resolved.layer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::key;

    #[test]
    fn a_reused_inode_number_names_the_file_that_holds_pages_whatever_the_batch_order() {
        let entry = |added, removed, generation| CacheCounters {
            pages_added: added,
            pages_removed: removed,
            inode: 0xffff_8880_0000_1000,
            generation,
            ..CacheCounters::default()
        };
        // The new file (memcg 2) holds 2,048 pages; the old one (memcg 1) only lost its own.
        let (new, old) = (
            (key(2, 9), entry(2048, 0, 7)),
            (key(1, 9), entry(0, 512, 3)),
        );
        for batch in [vec![new, old], vec![old, new]] {
            let mut identities = HashMap::default();
            record_identities(&mut identities, &batch);
            assert_eq!(identities[&(key(2, 9).dev, 9)].generation, 7, "{batch:?}");
        }
    }
}
