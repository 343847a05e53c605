//! Offsets memtrace resolves from the running kernel's BTF agree with what bpftool reads from
//! it, including members nested inside anonymous unions and structs (the ones a layout change
//! moves), and the folio order is read from the member that holds it on this kernel.

use std::{collections::HashMap, process::Command};

use memtrace::loader::btf::{KernelBtf, VMLINUX_BTF};

/// One type of `bpftool btf dump ... format raw`: its kind, the type it wraps (typedefs,
/// qualifiers) and its members (name, type id, bit offset).
struct RawType {
    kind: String,
    wraps: Option<u32>,
    members: Vec<(String, u32, u32)>,
}

/// bpftool's own reading of the kernel's BTF, parsed from its raw dump.
struct BpftoolBtf {
    types: HashMap<u32, RawType>,
    structs: HashMap<String, u32>,
}

fn quoted(text: &str) -> &str {
    text.split('\'').nth(1).unwrap_or("")
}

fn field(line: &str, key: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

impl BpftoolBtf {
    fn dump() -> Self {
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .expect("bpftool is required (cargo xtask setup installs it; the VM images carry it)");
        assert!(
            out.status.success(),
            "bpftool failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump = String::from_utf8(out.stdout).expect("utf8");
        let mut types = HashMap::new();
        let mut structs = HashMap::new();
        let mut current: Option<u32> = None;
        for line in dump.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ").expect("[id] KIND");
                let id: u32 = id.parse().expect("type id");
                let kind = rest.split_whitespace().next().unwrap_or("").to_owned();
                let name = quoted(rest).to_owned();
                let vlen = field(rest, "vlen=").unwrap_or(0);
                if kind == "STRUCT" && vlen > 0 {
                    structs.entry(name).or_insert(id);
                }
                types.insert(
                    id,
                    RawType {
                        kind,
                        wraps: field(rest, "type_id="),
                        members: Vec::new(),
                    },
                );
                current = Some(id);
            } else if let (Some(id), Some(bits)) = (current, field(line, "bits_offset=")) {
                let member = (
                    quoted(line).to_owned(),
                    field(line, "type_id=").expect("member type_id"),
                    bits,
                );
                types
                    .get_mut(&id)
                    .expect("current type")
                    .members
                    .push(member);
            }
        }
        Self { types, structs }
    }

    /// Follows typedefs and qualifiers to a struct or union.
    fn strip(&self, mut id: u32) -> &RawType {
        loop {
            let ty = &self.types[&id];
            match ty.kind.as_str() {
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                    id = ty.wraps.expect("wrapped type")
                }
                _ => return ty,
            }
        }
    }

    /// Bit offset of `name` in `ty`, looking inside anonymous members as C does.
    fn find(&self, ty: &RawType, name: &str) -> Option<(u32, u32)> {
        for (member, type_id, bits) in &ty.members {
            if member == name {
                return Some((*bits, *type_id));
            }
            if member == "(anon)" || member.is_empty() {
                let inner = self.strip(*type_id);
                if let Some((offset, found)) = self.find(inner, name) {
                    return Some((bits + offset, found));
                }
            }
        }
        None
    }

    /// Byte offset of a dotted member path (`css.cgroup`) in `struct strukt`, or None.
    fn offset(&self, strukt: &str, path: &str) -> Option<u32> {
        let mut ty = &self.types[self.structs.get(strukt)?];
        let mut total = 0;
        for part in path.split('.') {
            let (bits, type_id) = self.find(ty, part)?;
            total += bits;
            ty = self.strip(type_id);
        }
        Some(total / 8)
    }
}

#[test]
fn resolved_offsets_match_bpftool_including_members_inside_unions() {
    let bpftool = BpftoolBtf::dump();
    let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
    let offsets = btf
        .kernel_offsets()
        .expect("all offsets resolve on this kernel");
    let expect = |strukt: &str, member: &str| {
        bpftool
            .offset(strukt, member)
            .unwrap_or_else(|| panic!("bpftool: struct {strukt} has no member {member}"))
    };
    for (ours, strukt, member) in [
        (offsets.folio_flags, "folio", "flags"),
        (offsets.folio_mapping, "folio", "mapping"),
        (offsets.folio_memcg_data, "folio", "memcg_data"),
        (offsets.memcg_cgroup, "mem_cgroup", "css.cgroup"),
        (offsets.mapping_host, "address_space", "host"),
        (offsets.inode_ino, "inode", "i_ino"),
        (offsets.inode_sb, "inode", "i_sb"),
        (offsets.inode_generation, "inode", "i_generation"),
        (offsets.task_tgid, "task_struct", "tgid"),
        (offsets.sb_dev, "super_block", "s_dev"),
        (offsets.dentry_alias, "dentry", "d_u.d_alias"),
        (offsets.dentry_name, "dentry", "d_name.name"),
        (offsets.cgroup_kn, "cgroup", "kn"),
        (offsets.cgroup_root, "cgroup", "root"),
        (offsets.root_hierarchy_id, "cgroup_root", "hierarchy_id"),
        (offsets.css_cgroup, "cgroup_subsys_state", "cgroup"),
    ] {
        assert_eq!(ours, expect(strukt, member), "{strukt}.{member}");
    }
    // The order: `_folio_order` where bpftool sees it (6.1–6.5, where `_flags_1` is the second
    // page's whole flags word); otherwise the low byte of `_flags_1` (6.6+).
    let (member, order) = match bpftool.offset("folio", "_folio_order") {
        Some(order) => ("_folio_order", order),
        None => ("_flags_1", expect("folio", "_flags_1")),
    };
    eprintln!("folio order: {member} at byte {order}");
    assert_eq!(
        offsets.folio_order, order,
        "the order is read from folio.{member}"
    );
}

#[test]
fn unknown_structs_and_members_are_errors() {
    let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
    assert!(btf.member_offset("folio", "no_such_member").is_err());
    assert!(btf.member_offset("no_such_struct", "x").is_err());
}
