//! Struct member offsets of the running kernel, read from its BTF.
//!
//! Rust-built BPF has no CO-RE relocations, so every offset the programs use is resolved here at
//! start-up and handed to them as a read-only global. A member that is missing stops the load
//! with its name: a guessed offset would read garbage without a word.

use std::path::Path;

use btf_rs::{Backend, Btf, BtfType, Type};
use memtrace_common::KernelOffsets;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}; memtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    Unreadable {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no {kind} `{name}`: this kernel is older or configured differently than memtrace supports (Linux 6.1+ with CONFIG_MEMCG)")]
    MissingType { kind: &'static str, name: String },
    #[error("kernel BTF: `{strukt}` has no member `{member}`: this kernel's layout is not one memtrace knows (Linux 6.1+ with CONFIG_MEMCG)")]
    MissingMember { strukt: String, member: String },
    #[error("kernel BTF: `{enum_name}` has no value `{name}`")]
    MissingEnumValue { enum_name: String, name: String },
    #[error("kernel BTF: `folio` has neither `_folio_order` (Linux 6.1–6.5) nor `_flags_1` (6.6+), so memtrace cannot tell how many pages a large folio holds on this kernel; it knows the layouts of Linux 6.1 and later")]
    UnknownFolioLayout,
    #[error("kernel BTF is malformed")]
    Malformed(#[source] btf_rs::Error),
}

/// Where a kernel keeps a large folio's order (log2 of its pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolioOrderLayout {
    /// 6.1–6.5: the byte `_folio_order` in the second struct page. `_flags_1` exists there too,
    /// but is that page's whole flags word, not the order.
    FolioOrder(u32),
    /// 6.6+: the low byte of `_flags_1` (the second page's flags word).
    Flags1LowByte(u32),
}

impl FolioOrderLayout {
    /// Chooses from the offsets of `folio._folio_order` and `folio._flags_1`, where present:
    /// `_folio_order` wins wherever it exists; a kernel with neither is refused.
    pub fn choose(folio_order: Option<u32>, flags_1: Option<u32>) -> Result<Self, BtfError> {
        match (folio_order, flags_1) {
            (Some(offset), _) => Ok(Self::FolioOrder(offset)),
            (None, Some(offset)) => Ok(Self::Flags1LowByte(offset)),
            (None, None) => Err(BtfError::UnknownFolioLayout),
        }
    }

    /// The byte the kernel programs read the order from (the low byte, on little-endian).
    pub fn offset(self) -> u32 {
        match self {
            Self::FolioOrder(offset) | Self::Flags1LowByte(offset) => offset,
        }
    }
}

/// The running kernel's type information.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        // Mapped, not parsed whole: vmlinux BTF parsed up front costs tens of MiB of memory.
        // Older kernels (6.1, 6.12) refuse to mmap it (ENODEV): parse it there.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
            .map_err(|source| BtfError::Unreadable {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { btf })
    }

    /// Whether the kernel declares the BTF tracepoint `name` (typedef `btf_trace_<name>`).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.btf
            .resolve_ids_by_name(&format!("btf_trace_{name}"))
            .is_ok_and(|ids| !ids.is_empty())
    }

    /// Byte offset of `path` (members separated by `.`) inside struct `strukt`. Members of
    /// anonymous structs and unions are found as C finds them, through the nesting.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut current = self.named_struct(strukt)?;
        let mut bits = 0u32;
        let mut walked = strukt.to_owned();
        for member in path.split('.') {
            let (offset, member_type) =
                self.find_member(&current, member)?
                    .ok_or_else(|| BtfError::MissingMember {
                        strukt: walked.clone(),
                        member: member.to_owned(),
                    })?;
            bits += offset;
            walked = format!("{walked}.{member}");
            current = self.strip_modifiers(member_type)?;
        }
        Ok(bits / 8)
    }

    /// Value of enumerator `name` in `enum enum_name`.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Result<u64, BtfError> {
        let types =
            self.btf
                .resolve_types_by_name(enum_name)
                .map_err(|_| BtfError::MissingType {
                    kind: "enum",
                    name: enum_name.to_owned(),
                })?;
        for ty in types {
            match ty {
                Type::Enum(e) => {
                    for m in &e.members {
                        if self.name_of(m)? == name {
                            return Ok(u64::from(m.val()));
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if self.name_of(m)? == name {
                            return Ok(m.val());
                        }
                    }
                }
                _ => {}
            }
        }
        Err(BtfError::MissingEnumValue {
            enum_name: enum_name.to_owned(),
            name: name.to_owned(),
        })
    }

    fn named_struct(&self, name: &str) -> Result<Type, BtfError> {
        let missing = || BtfError::MissingType {
            kind: "struct",
            name: name.to_owned(),
        };
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| missing())?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(missing)
    }

    /// Finds `name` among the members of a struct or union, descending into anonymous members.
    /// Returns its bit offset from the start of `ty` and its type.
    fn find_member(&self, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, BtfError> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            let member_name = self.name_of(m)?;
            let member_type = self
                .btf
                .resolve_chained_type(m)
                .map_err(BtfError::Malformed)?;
            if member_name == name {
                return Ok(Some((m.bit_offset(), member_type)));
            }
            if member_name.is_empty() {
                let inner = self.strip_modifiers(member_type)?;
                if let Some((offset, found)) = self.find_member(&inner, name)? {
                    return Ok(Some((m.bit_offset() + offset, found)));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip_modifiers(&self, mut ty: Type) -> Result<Type, BtfError> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t),
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t)
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(t),
                _ => return Ok(ty),
            }
            .map_err(BtfError::Malformed)?;
        }
    }

    fn name_of(&self, ty: &dyn BtfType) -> Result<String, BtfError> {
        if ty.get_name_offset().is_none_or(|o| o == 0) {
            return Ok(String::new());
        }
        self.btf.resolve_name(ty).map_err(BtfError::Malformed)
    }

    /// Everything the page-cache programs read, for this kernel.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let folio_order = FolioOrderLayout::choose(
            self.member_offset("folio", "_folio_order").ok(),
            self.member_offset("folio", "_flags_1").ok(),
        )?
        .offset();
        let pg_head_bit = self.enum_value("pageflags", "PG_head")?;
        Ok(KernelOffsets {
            folio_flags: self.member_offset("folio", "flags")?,
            folio_mapping: self.member_offset("folio", "mapping")?,
            folio_memcg_data: self.member_offset("folio", "memcg_data")?,
            folio_order,
            pg_head_bit: pg_head_bit as u32,
            mapping_host: self.member_offset("address_space", "host")?,
            inode_ino: self.member_offset("inode", "i_ino")?,
            inode_sb: self.member_offset("inode", "i_sb")?,
            sb_dev: self.member_offset("super_block", "s_dev")?,
            memcg_cgroup: self.member_offset("mem_cgroup", "css.cgroup")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            cgroup_root: self.member_offset("cgroup", "root")?,
            kernfs_id: self.member_offset("kernfs_node", "id")?,
            root_hierarchy_id: self.member_offset("cgroup_root", "hierarchy_id")?,
            inode_mode: self.member_offset("inode", "i_mode")?,
            inode_nlink: self.member_offset("inode", "i_nlink")?,
            inode_rdev: self.member_offset("inode", "i_rdev")?,
            inode_dentry: self.member_offset("inode", "i_dentry")?,
            dentry_alias: self.member_offset("dentry", "d_u.d_alias")?,
            dentry_parent: self.member_offset("dentry", "d_parent")?,
            dentry_name: self.member_offset("dentry", "d_name.name")?,
            file_inode: self.member_offset("file", "f_inode")?,
            task_cgroups: self.member_offset("task_struct", "cgroups")?,
            css_set_memory: self.member_offset("css_set", "subsys")?
                + 8 * self.enum_value("cgroup_subsys_id", "memory_cgrp_id")? as u32,
            css_cgroup: self.member_offset("cgroup_subsys_state", "cgroup")?,
            inode_generation: self.member_offset("inode", "i_generation")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_fs: self.member_offset("task_struct", "fs")?,
            fs_root_dentry: self.member_offset("fs_struct", "root.dentry")?,
            dentry_sb: self.member_offset("dentry", "d_sb")?,
            sb_list: self.member_offset("super_block", "s_list")?,
            sb_root: self.member_offset("super_block", "s_root")?,
            sb_magic: self.member_offset("super_block", "s_magic")?,
            sb_inodes: self.member_offset("super_block", "s_inodes")?,
            inode_sb_list: self.member_offset("inode", "i_sb_list")?,
            inode_pages: self.member_offset("inode", "i_data.i_pages.xa_head")?,
            inode_nrpages: self.member_offset("inode", "i_data.nrpages")?,
            xa_node_shift: self.member_offset("xa_node", "shift")?,
            xa_node_offset: self.member_offset("xa_node", "offset")?,
            xa_node_parent: self.member_offset("xa_node", "parent")?,
            xa_node_slots: self.member_offset("xa_node", "slots")?,
            pg_dirty_bit: self.enum_value("pageflags", "PG_dirty")? as u32,
            pg_writeback_bit: self.enum_value("pageflags", "PG_writeback")? as u32,
            pg_active_bit: self.enum_value("pageflags", "PG_active")? as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_6_1_to_6_5_read_folio_order_not_the_flags_word_beside_it() {
        // 6.1's struct folio: _flags_1 at 64, _head_1 at 72, _folio_dtor at 80, _folio_order
        // at 81.
        let layout = FolioOrderLayout::choose(Some(81), Some(64)).unwrap();
        assert_eq!(layout, FolioOrderLayout::FolioOrder(81));
        assert_eq!(layout.offset(), 81);
    }

    #[test]
    fn linux_6_6_and_later_read_the_low_byte_of_flags_1() {
        let layout = FolioOrderLayout::choose(None, Some(64)).unwrap();
        assert_eq!(layout, FolioOrderLayout::Flags1LowByte(64));
        assert_eq!(layout.offset(), 64);
    }

    #[test]
    fn a_kernel_with_neither_member_is_refused_with_the_reason() {
        let err = FolioOrderLayout::choose(None, None).unwrap_err();
        assert!(matches!(err, BtfError::UnknownFolioLayout));
        let message = err.to_string();
        assert!(message.contains("_folio_order") && message.contains("_flags_1"));
    }
}
