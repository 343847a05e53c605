//! Loads the kernel programs into the running kernel and attaches them.
//!
//! Order matters and every step names what failed: privileges, BTF, kernel version, struct
//! offsets, tracepoints, then load and attach.

pub mod batch;
pub mod btf;
pub mod census;
mod namer;
pub mod preflight;
mod prog_info;
mod prog_run;
pub(crate) mod runs;
mod syscall;

use self::{
    btf::{BtfError, KernelBtf},
    namer::Namer,
    preflight::PreflightError,
};
use crate::model::{Hook, ProgramStats, WritesSource};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, ProgramError, ProgramFd, RawTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use memtrace_common::{
    names, CacheCounters, CacheKey, InodeName, OverflowCounters, OverflowKey, PendingCache,
    PendingWrite, Stat, WriterKey, WriterStats, DEFAULT_CACHE_ENTRIES,
};

/// The compiled kernel programs, embedded at build time.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("cannot resolve kernel struct offsets")]
    Btf(#[from] BtfError),
    #[error("the kernel has no tracepoint `{0}` in its BTF; memtrace needs Linux 6.1+ with CONFIG_MEMCG and tracepoints enabled")]
    MissingTracepoint(&'static str),
    #[error("cannot load memtrace's eBPF object into the kernel")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel cannot allocate the (memcg, file) map with {entries} entries; lower --max-entries (the default is {DEFAULT_CACHE_ENTRIES})")]
    MapTooLarge {
        entries: u32,
        #[source]
        source: aya::EbpfError,
    },
    #[error("cannot parse the kernel's BTF for aya")]
    AyaBtf(#[source] aya::BtfError),
    #[error("the kernel refused program `{program}` ({hook}){hint}")]
    Program {
        program: &'static str,
        hook: &'static str,
        hint: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("program `{0}` is missing from the eBPF object (a build mismatch: rebuild memtrace)")]
    MissingProgram(&'static str),
    #[error("map `{0}` is missing from the eBPF object (a build mismatch: rebuild memtrace)")]
    MissingMap(&'static str),
    #[error("map `{name}` has an unexpected type")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Options for loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the (memcg, file) map.
    pub max_entries: u32,
    /// Attach the cache-hit counter (see [`HITS_OFF`]).
    pub count_hits: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_CACHE_ENTRIES,
            count_hits: false,
        }
    }
}

/// Why the cache-hit counter is off unless asked for: attaching fentry to
/// `folio_mark_accessed`, the hottest page-cache function, while readers run crashed a 6.12
/// test VM (an int3 oops at the patched entry) and locked up a 6.1 one, under QEMU's emulation,
/// in 2 of 4 boots. Until that is understood it is opt-in.
pub const HITS_OFF: &str =
    "off unless --count-hits (attaching it under load crashed emulated test VMs; see docs)";

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    TpBtf,
    FEntry,
    FExit,
}

impl ProgramKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::FEntry => "fentry",
            Self::FExit => "fexit",
        }
    }
}

/// Whether memtrace can do without a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Without it memtrace cannot do its job.
    Required,
    /// Degrades what memtrace shows when missing.
    Optional,
    /// Attached only when the named hook could not be.
    FallbackFor(&'static str),
}

/// A kernel function or tracepoint memtrace hooks, the program that does the work there, and
/// the empty program that measures the cost of hooking it at all.
#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    pub program: &'static str,
    pub floor_program: &'static str,
    pub target: &'static str,
    pub kind: ProgramKind,
    pub purpose: &'static str,
    pub need: Need,
}

/// Every hook memtrace uses: the one place a hook's name, kind, purpose and fallback are
/// written. Loading, `doctor` and `calibrate` all read it; a fallback follows its primary.
pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        program: names::PROG_FILEMAP_ADD,
        floor_program: names::FLOOR_FILEMAP_ADD,
        target: "mm_filemap_add_to_page_cache",
        kind: ProgramKind::TpBtf,
        purpose: "page-cache insertions per (memcg, file)",
        need: Need::Required,
    },
    HookSpec {
        program: names::PROG_FILEMAP_DELETE,
        floor_program: names::FLOOR_FILEMAP_DELETE,
        target: "mm_filemap_delete_from_page_cache",
        kind: ProgramKind::TpBtf,
        purpose: "page-cache removals per (memcg, file)",
        need: Need::Required,
    },
    HookSpec {
        program: names::PROG_FOLIO_ACCESSED,
        floor_program: names::FLOOR_FOLIO_ACCESSED,
        target: "folio_mark_accessed",
        kind: ProgramKind::FEntry,
        purpose: "cache hits per (memcg, file): pages reads found cached",
        need: Need::Optional,
    },
    HookSpec {
        program: names::PROG_CGROUP_MKDIR,
        floor_program: names::FLOOR_CGROUP_MKDIR,
        target: "cgroup_mkdir",
        kind: ProgramKind::TpBtf,
        purpose: "names of cgroups created while tracing",
        need: Need::Optional,
    },
    HookSpec {
        program: names::PROG_CGROUP_RMDIR,
        floor_program: names::FLOOR_CGROUP_RMDIR,
        target: "cgroup_rmdir",
        kind: ProgramKind::TpBtf,
        purpose: "cgroups removed while tracing",
        need: Need::Optional,
    },
    HookSpec {
        program: names::PROG_VFS_WRITE,
        floor_program: names::FLOOR_VFS_WRITE,
        target: "vfs_write",
        kind: ProgramKind::FExit,
        purpose: "bytes written per (writer's memcg, file, process)",
        need: Need::Optional,
    },
    HookSpec {
        program: names::PROG_DIRTY_FOLIO,
        floor_program: names::FLOOR_DIRTY_FOLIO,
        target: "writeback_dirty_folio",
        kind: ProgramKind::TpBtf,
        purpose: "fallback for vfs_write: pages dirtied per (writer's memcg, file, process)",
        need: Need::FallbackFor("vfs_write"),
    },
];

/// Which of a hook's two programs to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Programs {
    /// memtrace's own.
    Working,
    /// The empty ones, for `calibrate`.
    Floor,
}

/// memtrace's programs, loaded and attached. Dropping it detaches everything.
pub struct Tracer {
    _ebpf: Ebpf,
    /// The two halves of the (memcg, file) map, and which one the programs count into.
    page_cache: [HashMap<MapData, CacheKey, CacheCounters>; 2],
    active_half: Array<MapData, u32>,
    counting_into: usize,
    /// Per CPU and half, the run of events not yet in the map.
    pending_cache: PerCpuArray<MapData, PendingCache>,
    /// Per CPU, the writer fallback's run of dirtied folios not yet in `writers`.
    pending_write: PerCpuArray<MapData, PendingWrite>,
    /// Folio insertions and removals counted in halves already drained.
    drained_events: (u64, u64),
    /// When the programs last switched halves.
    flipped_at: Option<std::time::Instant>,
    /// Per half, the keys the programs had inserted into it (since load) when it last became
    /// the half counted into: what it holds now is the count since.
    inserted_when_counting: [u64; 2],
    /// Per memcg, runs the half being counted into had no room for.
    overflow: HashMap<MapData, OverflowKey, OverflowCounters>,
    pub(crate) stats: PerCpuArray<MapData, u64>,
    pub(crate) cgroup_events: RingBuf<MapData>,
    /// `name_inode`, run on demand; `None` where the kernel refused it (files go unnamed).
    namer: Option<Namer>,
    /// The census programs, run on demand; `None` where the kernel refused them (cache from
    /// before start is then found by walking directories).
    census: Option<census::Census>,
    /// The two halves of the writers map; they flip with `page_cache`.
    writers: [HashMap<MapData, WriterKey, WriterStats>; 2],
    memcg_epoch: Array<MapData, u64>,
    pub writes_source: Option<WritesSource>,
    pub hooks: Vec<Hook>,
    pub max_entries: u32,
}

impl Tracer {
    /// Runs the pre-flight checks, resolves offsets, loads and attaches the programs.
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        let (mut ebpf, aya_btf) = open_object(options.max_entries)?;

        let hooks = attach_hooks(&mut ebpf, &aya_btf, Programs::Working, options.count_hits)?;
        let attached = |name: &str| hooks.iter().any(|h| h.name == name && h.attached);
        let writes_source = if attached("vfs_write") {
            Some(WritesSource::VfsWrite)
        } else if attached("writeback_dirty_folio") {
            Some(WritesSource::DirtiedPages)
        } else {
            None
        };

        let page_cache = [
            take_typed_map(&mut ebpf, names::CACHE_MAP)?,
            take_typed_map(&mut ebpf, names::CACHE_MAP_B)?,
        ];
        let active_half = take_typed_map(&mut ebpf, names::ACTIVE_MAP)?;
        let pending_cache = take_typed_map(&mut ebpf, names::PENDING_CACHE)?;
        let pending_write = take_typed_map(&mut ebpf, names::PENDING_WRITE)?;
        let stats = take_typed_map(&mut ebpf, names::STATS_MAP)?;
        let cgroup_events = take_typed_map(&mut ebpf, names::CGROUP_EVENTS)?;
        let namer = match load_namer(&mut ebpf) {
            Ok(namer) => Some(namer),
            Err(err) => {
                log::warn!(
                    "files cannot be named on this kernel: {}",
                    error_chain(&err)
                );
                None
            }
        };
        let census = match census::Census::load(&mut ebpf) {
            Ok(census) => Some(census),
            Err(err) => {
                log::warn!(
                    "no census on this kernel; cache from before start is found by walking directories: {}",
                    error_chain(&err)
                );
                None
            }
        };
        let writers = [
            take_typed_map(&mut ebpf, names::WRITERS_MAP)?,
            take_typed_map(&mut ebpf, names::WRITERS_MAP_B)?,
        ];
        let memcg_epoch = take_typed_map(&mut ebpf, names::MEMCG_EPOCH)?;
        let overflow = take_typed_map(&mut ebpf, names::CACHE_OVERFLOW)?;

        Ok(Self {
            _ebpf: ebpf,
            page_cache,
            active_half,
            counting_into: 0,
            pending_cache,
            pending_write,
            drained_events: (0, 0),
            flipped_at: None,
            inserted_when_counting: [0; 2],
            overflow,
            stats,
            cgroup_events,
            namer,
            census,
            writers,
            memcg_epoch,
            writes_source,
            hooks,
            max_entries: options.max_entries,
        })
    }
}

/// Runs the pre-flight checks, resolves this kernel's offsets and loads the object (maps
/// created, programs not yet loaded). Returns it with the BTF the programs load against.
fn open_object(max_entries: u32) -> Result<(Ebpf, Btf), LoadError> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    preflight::check_kernel_version()?;
    preflight::raise_memlock_rlimit();

    let kernel_btf = KernelBtf::from_sys_fs()?;
    for hook in HOOKS.iter().filter(|h| h.need == Need::Required) {
        if !kernel_btf.has_tracepoint(hook.target) {
            return Err(LoadError::MissingTracepoint(hook.target));
        }
    }
    let offsets = kernel_btf.kernel_offsets()?;
    log::debug!("kernel offsets: {offsets:?}");

    let aya_btf = Btf::from_sys_fs().map_err(LoadError::AyaBtf)?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global(names::OFFSETS_GLOBAL, &offsets, true)
        .map_max_entries(names::CACHE_MAP, max_entries)
        .map_max_entries(names::CACHE_MAP_B, max_entries)
        .load(EBPF_OBJECT)
        .map_err(|source| match &source {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error })
                if (name == names::CACHE_MAP || name == names::CACHE_MAP_B)
                    && matches!(io_error.raw_os_error(), Some(libc::ENOMEM | libc::E2BIG)) =>
            {
                LoadError::MapTooLarge {
                    entries: max_entries,
                    source,
                }
            }
            _ => LoadError::Object(source),
        })?;
    Ok((ebpf, aya_btf))
}

/// Empty programs on the tracepoints memtrace uses (`calibrate`): the floor of what tracing
/// these hooks costs here. Dropping it detaches them.
pub struct Floor {
    _ebpf: Ebpf,
    /// The hooks attached, by the same table and fallback rules as memtrace's own programs.
    pub hooks: Vec<Hook>,
}

impl Floor {
    pub fn load() -> Result<Self, LoadError> {
        let (mut ebpf, aya_btf) = open_object(DEFAULT_CACHE_ENTRIES)?;
        let mut hooks = attach_hooks(&mut ebpf, &aya_btf, Programs::Floor, false)?;
        hooks.retain(|h| h.attached);
        Ok(Self { _ebpf: ebpf, hooks })
    }
}

/// Attaches one program per hook of [`HOOKS`], in order: a required hook that fails stops the
/// load, an optional one is reported, and a fallback is attached only when its primary is not.
fn attach_hooks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    programs: Programs,
    count_hits: bool,
) -> Result<Vec<Hook>, LoadError> {
    let mut hooks: Vec<Hook> = Vec::new();
    for spec in HOOKS {
        if spec.program == names::PROG_FOLIO_ACCESSED && !count_hits {
            hooks.push(spec.hook(false, Some(HITS_OFF.to_owned())));
            continue;
        }
        if let Need::FallbackFor(primary) = spec.need {
            if hooks.iter().any(|h| h.name == primary && h.attached) {
                hooks.push(spec.hook(false, Some(format!("not needed: {primary} is attached"))));
                continue;
            }
        }
        let program = match programs {
            Programs::Working => spec.program,
            Programs::Floor => spec.floor_program,
        };
        match attach(ebpf, btf, spec, program) {
            Ok(()) => {
                log::info!("hook {} attached", spec.target);
                hooks.push(spec.hook(true, None));
            }
            Err(err) if spec.need != Need::Required => {
                let why = short_reason(&error_chain(&err));
                log::info!("hook {} not attached: {why}", spec.target);
                hooks.push(spec.hook(false, Some(why)));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(hooks)
}

/// Loads `name_inode` and maps its answer.
fn load_namer(ebpf: &mut Ebpf) -> Result<Namer, LoadError> {
    let program = load_on_demand(ebpf, names::PROG_NAME_INODE)?;
    let answer = take_typed_map(ebpf, names::NAME_BUF)?;
    Ok(Namer::new(program, answer))
}

/// Loads raw-tracepoint program `name` to be run with `BPF_PROG_RUN`, never attached.
fn load_on_demand(ebpf: &mut Ebpf, name: &'static str) -> Result<ProgramFd, LoadError> {
    let fail = |source: ProgramError| LoadError::Program {
        program: name,
        hook: "BPF_PROG_RUN",
        hint: program_error_hint(&source),
        source: Box::new(source),
    };
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(fail)?;
    program.load().map_err(fail)?;
    program
        .fd()
        .map_err(fail)?
        .try_clone()
        .map_err(|e| fail(ProgramError::IOError(e)))
}

/// What one flip emptied out of the kernel: each (memcg, file)'s counters, and each writer's.
pub(crate) struct Drained {
    pub(crate) cache: Vec<(CacheKey, CacheCounters)>,
    pub(crate) writers: Vec<(WriterKey, WriterStats)>,
}

/// Reads and empties a map half that no program counts into any more, in batches: a burst of
/// new files leaves tens of thousands of keys, and three calls a key (next key, lookup,
/// delete) take 3-4 µs a key. Entries that cannot be read are counted in `errors`.
fn drain_half<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    errors: &mut u64,
) -> Vec<(K, V)> {
    let (mut entries, failed) = batch::drain(map);
    if let Some(err) = failed {
        // What the batch calls removed is in `entries`; read the rest key by key.
        log::debug!("batch drain stopped ({err}); draining the rest key by key");
        let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
        for key in keys {
            match map.get(&key, 0) {
                Ok(value) => entries.push((key, value)),
                Err(_) => *errors += 1,
            }
            let _ = map.remove(&key);
        }
    }
    entries
}

/// How long programs that read the old half before a flip may still be counting into it: they
/// run for microseconds, this leaves them three orders of magnitude more.
const FLIP_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

impl Tracer {
    /// Empties the half of the (memcg, file) map the programs stopped counting into at the
    /// previous call (waiting out what is left of the grace for programs still on it, which at
    /// one call per report is nothing), then makes the programs count into it: what it held,
    /// entry by entry, and what the writers map's half held. The half they counted into until
    /// now is read with `read_counting` (and `read_writers`) and emptied at the next call.
    /// Entries that cannot be read are counted in `errors`.
    pub(crate) fn flip_and_drain(&mut self, errors: &mut u64) -> Drained {
        if let Some(flipped) = self.flipped_at {
            if let Some(rest) = FLIP_GRACE.checked_sub(flipped.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let old = 1 - self.counting_into;
        let writers = drain_half(&mut self.writers[old], errors);
        let mut entries = drain_half(&mut self.page_cache[old], errors);
        // The runs the programs had not yet added to the old half, then the slots emptied for
        // the half's next turn (nothing counts into them now).
        let half = old as u32;
        match self.pending_cache.get(&half, 0) {
            Ok(slots) => {
                for slot in slots.iter() {
                    self.drained_events.0 += slot.add_events;
                    self.drained_events.1 += slot.delete_events;
                }
                // A slot caught mid-change here would mean a program still on this half past
                // the grace: counted as an entry that could not be read.
                *errors += slots.iter().filter(|slot| !slot.is_whole()).count() as u64;
                entries.extend(runs::cache_runs(&slots));
                let empty = PerCpuValues::try_from(vec![PendingCache::default(); slots.len()]);
                let reset = empty
                    .map_err(aya::maps::MapError::from)
                    .and_then(|empty| self.pending_cache.set(half, empty, 0));
                if let Err(err) = reset {
                    // Left as they are, the runs would be counted again at the next drain.
                    log::warn!("cannot empty the per-CPU runs of the drained half: {err}");
                    *errors += 1;
                }
            }
            Err(err) => {
                log::warn!("cannot read the per-CPU runs of the drained half: {err}");
                *errors += 1;
            }
        }
        // The emptied half takes the counting over.
        let inserted_before = self.keys_inserted(old);
        match self.active_half.set(0, old as u32, 0) {
            Ok(()) => {
                self.counting_into = old;
                self.inserted_when_counting[old] = inserted_before;
                self.flipped_at = Some(std::time::Instant::now());
            }
            Err(err) => log::warn!("cannot switch the (memcg, file) map halves: {err}"),
        }
        Drained {
            cache: runs::merge_entries(entries),
            writers,
        }
    }

    /// What the writers map's halves not yet drained hold now (the programs keep counting).
    pub(crate) fn read_writers(&self, errors: &mut u64) -> Vec<(WriterKey, WriterStats)> {
        let [earlier, now] = self.undrained_halves();
        let mut entries = read_all(&self.writers[earlier], errors);
        entries.extend(read_all(&self.writers[now], errors));
        entries
    }

    /// The halves not yet drained, the one counted into first: the one counted into until the
    /// last flip (programs may still be finishing on it) and the one counted into now.
    fn undrained_halves(&self) -> [usize; 2] {
        [1 - self.counting_into, self.counting_into]
    }

    /// The runs the programs keep for the undrained halves (they keep counting).
    fn undrained_runs(&self) -> Vec<(CacheKey, CacheCounters)> {
        let mut found = Vec::new();
        for half in self.undrained_halves() {
            match self.pending_cache.get(&(half as u32), 0) {
                Ok(slots) => found.extend(runs::cache_runs(&slots)),
                Err(err) => log::debug!("cannot read the per-CPU runs: {err}"),
            }
        }
        found
    }

    /// What the halves not yet drained hold now (the programs keep counting), runs included.
    pub(crate) fn read_counting(&self, errors: &mut u64) -> Vec<(CacheKey, CacheCounters)> {
        let [earlier, now] = self.undrained_halves();
        let mut entries = read_all(&self.page_cache[earlier], errors);
        entries.extend(read_all(&self.page_cache[now], errors));
        runs::merge_entries(entries.into_iter().chain(self.undrained_runs()))
    }

    /// What the halves not yet drained hold for each of `keys` now, runs included (the
    /// counters of a key they hold nothing for are zero); `None` when a map cannot be read.
    /// Cheap for a few keys: a lookup per half and key, and one read of each half's runs.
    pub(crate) fn counting_for(&self, keys: &[CacheKey]) -> Option<Vec<CacheCounters>> {
        let mut found = vec![CacheCounters::default(); keys.len()];
        for half in self.undrained_halves() {
            for (key, into) in keys.iter().zip(found.iter_mut()) {
                match self.page_cache[half].get(key, 0) {
                    Ok(entry) => runs::merge(into, &entry),
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(_) => return None,
                }
            }
        }
        for half in self.undrained_halves() {
            let slots = self.pending_cache.get(&(half as u32), 0).ok()?;
            // A slot caught while its run was being replaced cannot be told apart from one
            // that held a run of `keys`: no answer rather than a wrong one.
            if slots.iter().any(|slot| !slot.is_whole()) {
                return None;
            }
            for (key, run) in runs::cache_runs(&slots) {
                if let Some(at) = keys.iter().position(|k| *k == key) {
                    runs::merge(&mut found[at], &run);
                }
            }
        }
        Some(found)
    }

    /// Keys the programs inserted into half `half` since load.
    fn keys_inserted(&self, half: usize) -> u64 {
        let stat = if half == 1 {
            Stat::KeysInsertedB
        } else {
            Stat::KeysInsertedA
        };
        self.stats
            .get(&(stat as u32), 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }

    /// Keys in the half counted into now: the programs' inserts since it became that half
    /// (it was empty then).
    pub(crate) fn counting_half_keys(&self) -> u64 {
        self.keys_inserted(self.counting_into)
            .saturating_sub(self.inserted_when_counting[self.counting_into])
    }

    /// Every memcg's runs that found the map full, since load (the overflow map is never
    /// emptied: it holds one entry per memcg that ever overflowed).
    pub(crate) fn read_overflow(&self, errors: &mut u64) -> Vec<(OverflowKey, OverflowCounters)> {
        read_all(&self.overflow, errors)
    }

    /// Folio insertions and removals the programs saw since load.
    pub(crate) fn page_events(&self) -> (u64, u64) {
        let (mut added, mut removed) = self.drained_events;
        for half in self.undrained_halves() {
            if let Ok(slots) = self.pending_cache.get(&(half as u32), 0) {
                for slot in slots.iter() {
                    added += slot.add_events;
                    removed += slot.delete_events;
                }
            }
        }
        (added, removed)
    }

    /// The writer fallback's runs of dirtied folios not yet added to the writers map, one per
    /// CPU at most.
    pub(crate) fn writer_runs(&self) -> Vec<(WriterKey, WriterStats)> {
        match self.pending_write.get(&0, 0) {
            Ok(slots) => runs::write_runs(&slots).collect(),
            Err(err) => {
                log::debug!("cannot read the writers' per-CPU runs: {err}");
                Vec::new()
            }
        }
    }

    /// The path of the file whose inode was at `inode` (as the page-cache map recorded it),
    /// if it is still (dev, ino) and has a dentry: the kernel's answer, handed to `read`.
    pub fn name_inode<R>(
        &self,
        inode: u64,
        dev: u32,
        ino: u64,
        read: impl FnOnce(&InodeName) -> R,
    ) -> Option<R> {
        let namer = self.namer.as_ref()?;
        if inode == 0 {
            return None;
        }
        namer.name(inode, dev, ino, read)
    }

    /// The census programs, where the kernel took them.
    pub fn census(&self) -> Option<&census::Census> {
        self.census.as_ref()
    }

    /// Runs of memtrace's programs the kernel skipped because the same program was already
    /// active on that CPU (a program interrupted or preempted mid-run blocks it there): the
    /// sum of `bpf_prog_info.recursion_misses`, counted by the kernel whatever the BPF stats
    /// setting.
    pub fn missed_runs(&self) -> u64 {
        self._ebpf
            .programs()
            .filter_map(|(_, program)| program.fd().ok())
            .map(|fd| {
                let raw = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(fd));
                prog_info::recursion_misses(raw).unwrap_or(0)
            })
            .sum()
    }

    /// Run time and run count of each attached program, from the kernel's BPF stats (only
    /// counted while `kernel.bpf_stats_enabled` is 1: `None` otherwise).
    pub fn program_stats(&self) -> Option<Vec<ProgramStats>> {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|v| v.trim() == "1");
        if !enabled {
            return None;
        }
        let mut stats = Vec::new();
        for (name, program) in self._ebpf.programs() {
            let Ok(fd) = program.fd() else { continue };
            let raw = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(fd));
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            stats.push(ProgramStats {
                name: name.to_owned(),
                run_time_ns: field("run_time_ns:"),
                run_count: field("run_cnt:"),
            });
        }
        Some(stats)
    }

    /// Makes the kernel re-check its cached memcg identities. Cgroup creation already does;
    /// this also covers memcgs created without a mkdir (a controller enabled on an existing v2
    /// cgroup), within one snapshot interval.
    pub fn bump_memcg_epoch(&mut self) {
        let next = self
            .memcg_epoch
            .get(&0, 0)
            .unwrap_or(0)
            .wrapping_add(1 << 32);
        if let Err(err) = self.memcg_epoch.set(0, next, 0) {
            log::debug!("cannot bump the memcg epoch: {err}");
        }
    }
}

/// Takes map `name` out of the object as the typed map `T`.
fn take_typed_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

impl HookSpec {
    fn hook(&self, attached: bool, detail: Option<String>) -> Hook {
        Hook {
            name: self.target,
            kind: self.kind.as_str(),
            attached,
            purpose: self.purpose,
            detail,
        }
    }
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    spec: &HookSpec,
    program_name: &'static str,
) -> Result<(), LoadError> {
    let fail = |source: ProgramError| LoadError::Program {
        program: program_name,
        hook: spec.target,
        hint: program_error_hint(&source),
        source: Box::new(source),
    };
    let program = ebpf
        .program_mut(program_name)
        .ok_or(LoadError::MissingProgram(program_name))?;
    match spec.kind {
        ProgramKind::TpBtf => {
            let program: &mut BtfTracePoint = program.try_into().map_err(fail)?;
            program.load(spec.target, btf).map_err(fail)?;
            program.attach().map_err(fail)?;
        }
        ProgramKind::FEntry => {
            let program: &mut FEntry = program.try_into().map_err(fail)?;
            program.load(spec.target, btf).map_err(fail)?;
            program.attach().map_err(fail)?;
        }
        ProgramKind::FExit => {
            let program: &mut FExit = program.try_into().map_err(fail)?;
            program.load(spec.target, btf).map_err(fail)?;
            program.attach().map_err(fail)?;
        }
    }
    Ok(())
}

/// A refusal in a line or two: the verifier's log is cut to its verdict.
fn short_reason(chain: &str) -> String {
    match chain.split_once("Verifier output:") {
        Some((head, log)) => {
            let verdict: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with(':')
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed ")
                })
                .collect();
            let tail = verdict.len().saturating_sub(1);
            format!(
                "{}{}",
                head.trim_end_matches([' ', '.']),
                verdict[tail..]
                    .iter()
                    .map(|l| format!("; verifier: {l}"))
                    .collect::<String>()
            )
        }
        None => chain.to_owned(),
    }
}

/// An error and its sources on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A short, actionable reading of a program error.
fn program_error_hint(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError { io_error, .. }
            if io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            ": permission denied (run as root; kernel lockdown or a security module may forbid this program type)".to_owned()
        }
        ProgramError::LoadError { .. } => {
            ": the verifier rejected it; please report this kernel version with `memtrace doctor` output".to_owned()
        }
        _ => String::new(),
    }
}

/// All entries of a hash map: batched where the kernel can, key by key otherwise. Entries
/// that vanish mid-walk are counted in `errors`.
pub(crate) fn read_all<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    errors: &mut u64,
) -> Vec<(K, V)> {
    match batch::dump(map) {
        Ok(entries) => entries,
        Err(err) => {
            if err.kind() != std::io::ErrorKind::Unsupported {
                log::debug!("batch lookup failed ({err}); reading key by key");
            }
            map.iter()
                .filter_map(|entry| entry.map_err(|_| *errors += 1).ok())
                .collect()
        }
    }
}
