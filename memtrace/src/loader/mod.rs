//! Loads the kernel programs into the running kernel and attaches them.
//!
//! Order matters and every step names what failed: privileges, BTF, kernel version, struct
//! offsets, tracepoints, then load and attach.

pub mod btf;
pub mod preflight;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError},
    Btf, Ebpf, EbpfLoader,
};
use memtrace_common::{names, CacheCounters, CacheKey, KernelOffsets, DEFAULT_CACHE_ENTRIES};
use serde::Serialize;

use self::{
    btf::{BtfError, KernelBtf},
    preflight::PreflightError,
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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// One kernel hook and whether it is attached.
#[derive(Clone, Debug, Serialize)]
pub struct Hook {
    pub name: &'static str,
    pub kind: &'static str,
    pub attached: bool,
    pub purpose: &'static str,
}

/// A BTF tracepoint program in the object.
struct TracepointProgram {
    program: &'static str,
    tracepoint: &'static str,
    purpose: &'static str,
    /// Without it memtrace cannot do its job; others degrade what it can show.
    required: bool,
}

const TRACEPOINTS: &[TracepointProgram] = &[
    TracepointProgram {
        program: names::PROG_FILEMAP_ADD,
        tracepoint: "mm_filemap_add_to_page_cache",
        purpose: "page-cache insertions per (memcg, file)",
        required: true,
    },
    TracepointProgram {
        program: names::PROG_FILEMAP_DELETE,
        tracepoint: "mm_filemap_delete_from_page_cache",
        purpose: "page-cache removals per (memcg, file)",
        required: true,
    },
    TracepointProgram {
        program: names::PROG_CGROUP_MKDIR,
        tracepoint: "cgroup_mkdir",
        purpose: "names of cgroups created while tracing",
        required: false,
    },
    TracepointProgram {
        program: names::PROG_CGROUP_RMDIR,
        tracepoint: "cgroup_rmdir",
        purpose: "cgroups removed while tracing",
        required: false,
    },
];

/// memtrace's programs, loaded and attached. Dropping it detaches everything.
pub struct Tracer {
    _ebpf: Ebpf,
    pub(crate) page_cache: HashMap<MapData, CacheKey, CacheCounters>,
    pub(crate) stats: PerCpuArray<MapData, u64>,
    pub(crate) cgroup_events: RingBuf<MapData>,
    pub(crate) file_events: RingBuf<MapData>,
    pub offsets: KernelOffsets,
    pub hooks: Vec<Hook>,
    pub max_entries: u32,
}

impl Tracer {
    /// Runs the pre-flight checks, resolves offsets, loads and attaches the programs.
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        preflight::check_privileges()?;
        preflight::check_btf()?;
        preflight::check_kernel_version()?;
        preflight::raise_memlock_rlimit();

        let kernel_btf = KernelBtf::from_sys_fs()?;
        for tp in TRACEPOINTS.iter().filter(|tp| tp.required) {
            if !kernel_btf.has_tracepoint(tp.tracepoint) {
                return Err(LoadError::MissingTracepoint(tp.tracepoint));
            }
        }
        let offsets = kernel_btf.kernel_offsets()?;
        log::debug!("kernel offsets: {offsets:?}");

        let aya_btf = Btf::from_sys_fs().map_err(LoadError::AyaBtf)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global(names::OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(names::CACHE_MAP, options.max_entries)
            .load(EBPF_OBJECT)
            .map_err(LoadError::Object)?;

        let mut hooks = Vec::new();
        for tp in TRACEPOINTS {
            let attached = match attach_tracepoint(&mut ebpf, &aya_btf, tp) {
                Ok(()) => true,
                Err(err) if !tp.required => {
                    log::warn!("optional hook {} not attached: {err}", tp.tracepoint);
                    false
                }
                Err(err) => return Err(err),
            };
            hooks.push(Hook {
                name: tp.tracepoint,
                kind: "tp_btf",
                attached,
                purpose: tp.purpose,
            });
        }

        let page_cache = take_typed_map(&mut ebpf, names::CACHE_MAP)?;
        let stats = take_typed_map(&mut ebpf, names::STATS_MAP)?;
        let cgroup_events = take_typed_map(&mut ebpf, names::CGROUP_EVENTS)?;
        let file_events = take_typed_map(&mut ebpf, names::FILE_EVENTS)?;

        Ok(Self {
            _ebpf: ebpf,
            page_cache,
            stats,
            cgroup_events,
            file_events,
            offsets,
            hooks,
            max_entries: options.max_entries,
        })
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

fn attach_tracepoint(ebpf: &mut Ebpf, btf: &Btf, tp: &TracepointProgram) -> Result<(), LoadError> {
    let fail = |source: ProgramError| LoadError::Program {
        program: tp.program,
        hook: tp.tracepoint,
        hint: program_error_hint(&source),
        source: Box::new(source),
    };
    let program: &mut BtfTracePoint = ebpf
        .program_mut(tp.program)
        .ok_or(LoadError::MissingProgram(tp.program))?
        .try_into()
        .map_err(fail)?;
    program.load(tp.tracepoint, btf).map_err(fail)?;
    program.attach().map_err(fail)?;
    Ok(())
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
