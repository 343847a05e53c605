//! Offsets resolved from this host's real BTF agree with what bpftool reads from it.

use std::process::Command;

use memtrace::loader::btf::{KernelBtf, VMLINUX_BTF};

/// `bits_offset` of `member` in `struct strukt`, from `bpftool btf dump ... format raw`.
fn bpftool_offset(dump: &str, strukt: &str, member: &str) -> u32 {
    let header = format!("STRUCT '{strukt}' ");
    let mut lines = dump
        .lines()
        .skip_while(|l| !(l.contains(&header) && l.starts_with('[')));
    lines
        .next()
        .unwrap_or_else(|| panic!("bpftool dump has no struct {strukt}"));
    let needle = format!("'{member}' ");
    for line in lines.take_while(|l| !l.starts_with('[')) {
        let line = line.trim();
        if line.starts_with(&needle) {
            let bits = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("bits_offset="))
                .expect("bits_offset");
            return bits.parse::<u32>().expect("number") / 8;
        }
    }
    panic!("bpftool: struct {strukt} has no member {member}");
}

#[test]
fn resolved_offsets_match_bpftool() {
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
        .output()
        .expect("bpftool is required (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8(out.stdout).expect("utf8");
    let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
    for (strukt, member) in [
        ("inode", "i_ino"),
        ("inode", "i_sb"),
        ("super_block", "s_dev"),
        ("address_space", "host"),
        ("cgroup", "kn"),
        ("cgroup", "root"),
        ("cgroup_root", "hierarchy_id"),
        ("cgroup_subsys_state", "cgroup"),
    ] {
        assert_eq!(
            btf.member_offset(strukt, member).unwrap(),
            bpftool_offset(&dump, strukt, member),
            "{strukt}.{member}"
        );
    }
}

#[test]
fn nested_members_resolve_through_anonymous_unions() {
    let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
    let offsets = btf
        .kernel_offsets()
        .expect("all offsets resolve on this kernel");
    // struct folio overlays struct page: mapping is the third word, after flags and lru.
    assert_eq!(offsets.folio_flags, 0);
    assert_eq!(offsets.folio_mapping, 24);
    // 6.1–6.5: the order is `_folio_order` (and `_flags_1` is the second page's whole flags
    // word, not the order). 6.6+: the low byte of `_flags_1`, the first word of the second
    // struct page.
    match btf.member_offset("folio", "_folio_order") {
        Ok(order) => assert_eq!(offsets.folio_order, order, "_folio_order on 6.1–6.5"),
        Err(_) => {
            let page_1 = btf
                .member_offset("folio", "__page_1")
                .expect("folio.__page_1");
            assert_eq!(offsets.folio_order, page_1, "_flags_1's low byte on 6.6+");
        }
    }
    assert!(btf.member_offset("folio", "no_such_member").is_err());
    assert!(btf.member_offset("no_such_struct", "x").is_err());
}
