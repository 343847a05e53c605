//! Running the census programs (see `census` in the kernel crate): the superblocks, their
//! inodes that hold pages, and each inode's pages per memcg, a bounded batch per run.

use std::io;

use aya::{
    maps::{Array, MapData},
    programs::ProgramFd,
    Ebpf,
};
use memtrace_common::{
    census_status, names, CacheKey, CensusCursor, CensusInode, CensusPages, CensusSuperblock,
};

use super::{load_on_demand, prog_run::run_raw_tracepoint, take_typed_map, LoadError};

/// Superblocks the census follows at most: far more than any node mounts.
const MAX_SUPERBLOCKS: usize = 1 << 20;
/// Walks of one superblock's inode list begun again (its cursor inode left the list between
/// runs) before the census gives up on it.
const MAX_RESTARTS: u32 = 8;
/// Runs over one file at most: one xarray node's 64 slots each (less where memcgs alternate),
/// so at least 64 GiB of 4 KiB pages.
const MAX_PAGE_RUNS: u32 = 1 << 24;

/// How one superblock's inode list was walked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeWalk {
    /// The walk reached the list's end.
    pub complete: bool,
    /// Walks begun again from the head because the cursor inode left the list.
    pub restarts: u32,
}

/// How one file's pages were counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagesWalk {
    /// Every slot was visited; `lost_pages` were counted but their memcg could not be read.
    Complete { lost_pages: u64 },
    /// The inode is no longer (dev, ino): evicted and its memory reused.
    Stale,
    /// A kernel read failed partway (the file changing under the walk): what was counted
    /// stays in the map, the rest is missing.
    Partial,
}

/// The three programs and their answer maps.
pub struct Census {
    superblocks: ProgramFd,
    inodes: ProgramFd,
    pages: ProgramFd,
    cursor: Array<MapData, CensusCursor>,
    superblock_list: Array<MapData, CensusSuperblock>,
    inode_list: Array<MapData, CensusInode>,
}

impl Census {
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            superblocks: load_on_demand(ebpf, names::PROG_CENSUS_SUPERBLOCKS)?,
            inodes: load_on_demand(ebpf, names::PROG_CENSUS_INODES)?,
            pages: load_on_demand(ebpf, names::PROG_CENSUS_PAGES)?,
            cursor: take_typed_map(ebpf, names::CENSUS_CURSOR)?,
            superblock_list: take_typed_map(ebpf, names::CENSUS_SBS)?,
            inode_list: take_typed_map(ebpf, names::CENSUS_INODE_LIST)?,
        })
    }

    fn run(&self, program: &ProgramFd, args: &[u64]) -> io::Result<(u32, CensusCursor)> {
        run_raw_tracepoint(program, args)?;
        let cursor = self.cursor.get(&0, 0).map_err(io::Error::other)?;
        Ok((cursor.status, cursor))
    }

    /// Every superblock on the kernel's list, the caller's root filesystem's first.
    pub fn superblocks(&self) -> io::Result<Vec<CensusSuperblock>> {
        let mut found: Vec<CensusSuperblock> = Vec::new();
        let (mut after, mut origin) = (0, 0);
        loop {
            let (status, cursor) = self.run(&self.superblocks, &[after, origin])?;
            for at in 0..cursor.found {
                let sb = self.superblock_list.get(&at, 0).map_err(io::Error::other)?;
                if origin == 0 {
                    origin = sb.sb;
                }
                found.push(sb);
            }
            match status {
                census_status::MORE if found.len() < MAX_SUPERBLOCKS && cursor.next != after => {
                    after = cursor.next;
                }
                census_status::MORE | census_status::DONE => break,
                other => {
                    return Err(io::Error::other(format!(
                        "the superblock list could not be read (status {other})"
                    )))
                }
            }
        }
        found.sort_unstable_by_key(|s| s.sb);
        found.dedup_by_key(|s| s.sb);
        Ok(found)
    }

    /// The inodes of superblock `sb` whose own mapping holds pages, in batches handed to
    /// `each`. A walk begun again hands some inodes twice.
    pub fn inodes(&self, sb: u64, mut each: impl FnMut(&[CensusInode])) -> io::Result<InodeWalk> {
        let mut walk = InodeWalk::default();
        let mut after = 0;
        let mut batch = Vec::with_capacity(memtrace_common::CENSUS_INODES as usize);
        loop {
            let (status, cursor) = self.run(&self.inodes, &[sb, after])?;
            log::trace!("census_inodes({sb:#x}, {after:#x}) = {status}, {cursor:?}");
            batch.clear();
            for at in 0..cursor.found {
                batch.push(self.inode_list.get(&at, 0).map_err(io::Error::other)?);
            }
            each(&batch);
            match status {
                census_status::MORE if cursor.next != after => after = cursor.next,
                census_status::DONE => {
                    walk.complete = true;
                    return Ok(walk);
                }
                census_status::RESTART if walk.restarts < MAX_RESTARTS => {
                    walk.restarts += 1;
                    after = 0;
                }
                _ => return Ok(walk),
            }
        }
    }

    /// Adds the pages of the inode at `inode.inode` (still `dev`, `inode.ino`) to `into`,
    /// per memcg.
    pub fn pages(
        &self,
        inode: &CensusInode,
        dev: u32,
        into: &mut impl FnMut(CacheKey, CensusPages),
    ) -> io::Result<PagesWalk> {
        let mut start = 0;
        let mut lost_pages = 0;
        for _ in 0..MAX_PAGE_RUNS {
            let (status, cursor) = self.run(
                &self.pages,
                &[inode.inode, u64::from(dev), inode.ino, start],
            )?;
            lost_pages += u64::from(cursor.lost_pages);
            if cursor.pages.pages != 0 {
                let key = CacheKey {
                    cgroup_id: cursor.cgroup_id,
                    ino: inode.ino,
                    dev,
                    hierarchy: cursor.hierarchy,
                };
                into(key, cursor.pages);
            }
            match status {
                census_status::DONE => return Ok(PagesWalk::Complete { lost_pages }),
                census_status::MORE if cursor.next > start => start = cursor.next,
                census_status::STALE => return Ok(PagesWalk::Stale),
                _ => return Ok(PagesWalk::Partial),
            }
        }
        Ok(PagesWalk::Partial)
    }
}
