//! Reading a whole BPF hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+).
//!
//! Iterating key by key costs two syscalls an entry: 200,000 for a map of 100,000 files. aya
//! 0.14 has no batch API, so this is the one raw `bpf(2)` call memtrace makes.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{HashMap, IterableMap, MapData},
    Pod,
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// Entries asked for per call; a hash bucket larger than this makes the kernel say ENOSPC,
/// and the next call asks for more.
const CHUNK: u32 = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`. `Unsupported` when the kernel has no batch lookup for it.
pub fn dump<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<(K, V)>> {
    batch(map, BPF_MAP_LOOKUP_BATCH)
}

/// Every entry of `map`, removed from it as it is read. Entries already removed stay in the
/// result even when a later call fails (the error comes with them): they exist nowhere else.
pub fn drain<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> (Vec<(K, V)>, Option<io::Error>) {
    let mut entries = Vec::new();
    match batch_into(map, BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut entries) {
        Ok(()) => (entries, None),
        Err(err) => (entries, Some(err)),
    }
}

fn batch<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    command: libc::c_long,
) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    batch_into(map, command, &mut entries)?;
    Ok(entries)
}

/// Appends `map`'s entries to `entries`, a batch call at a time.
fn batch_into<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    command: libc::c_long,
    entries: &mut Vec<(K, V)>,
) -> io::Result<()> {
    let fd = IterableMap::map(map).fd().as_fd().as_raw_fd();
    let mut chunk = CHUNK;
    // The cursor is an opaque bucket index (u32 for hash maps); 8 bytes leaves room.
    let mut cursor_in = 0u64;
    let mut cursor_out = 0u64;
    let mut first = true;
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk as usize);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk as usize);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut cursor_in as u64 },
            out_batch: &raw mut cursor_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `BatchAttr` is the batch commands' layout; the kernel writes at most `count`
        // keys and values into buffers with that capacity, and the cursor into `cursor_out`;
        // all outlive the call.
        let err = unsafe { super::syscall::bpf(command, &mut attr) }.err();
        // The kernel reports how many entries it copied on success, at the end (ENOENT) and
        // when a bucket did not fit (ENOSPC); after any other error nothing it wrote is
        // promised, so nothing is read.
        let filled = match err.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT | libc::ENOSPC) => (attr.count as usize).min(chunk as usize),
            Some(_) => 0,
        };
        // SAFETY: the kernel filled `filled` entries of each buffer.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        entries.extend(
            keys.into_iter()
                .zip(values)
                // SAFETY: initialized by the kernel (see above).
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 20) => {
                chunk *= 2;
                continue;
            }
            Some(e)
                if first && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
            {
                return Err(io::Error::new(io::ErrorKind::Unsupported, e));
            }
            Some(e) => return Err(e),
        }
        cursor_in = cursor_out;
        first = false;
    }
}
