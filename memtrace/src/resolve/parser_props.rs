//! Property tests of the parsers that read text containers and runtimes control: mountinfo
//! (and overlay options inside it), cgroup paths, runtime state, the kernel's path answers.
//! Each either round-trips what the kernel would write or, on garbage, returns without panic.

use std::{ffi::OsString, os::unix::ffi::OsStringExt, path::PathBuf};

use memtrace_common::{InodeName, NAME_COMPONENT_MAX, NAME_TEXT_BYTES};
use proptest::prelude::*;

use super::{
    containers::{apply_annotations, parse_cgroup_path, parse_runc_state},
    mounts::parse_mountinfo,
    paths::{KernelPath, Overlay},
};
use crate::model::{Container, Runtime};

/// How the kernel writes a path field of mountinfo (`mangle`: space, tab, newline, backslash
/// as octal).
fn mangle(bytes: &[u8], special: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if special.contains(&b) {
            out.push_str(&format!("\\{b:03o}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn as_text(bytes: &[u8]) -> String {
    // Mountinfo is bytes; these tests keep to bytes that are one char each (ASCII and
    // Latin-1 both map 1:1 through `char`) and compare bytes after parsing.
    bytes.iter().map(|&b| b as char).collect()
}

/// A path component: any bytes but NUL and `/`, with the troublesome ones frequent.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(b" ,:=\\\t\nab".to_vec()),
            1 => (0x01u8..=0x7f).prop_filter("no slash", |b| *b != b'/'),
        ],
        1..12,
    )
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(component(), 1..5).prop_map(|parts| {
        let mut path = Vec::new();
        for part in parts {
            path.push(b'/');
            path.extend(part);
        }
        path
    })
}

fn path_buf(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

/// overlayfs's own escapes of a layer path inside its options: `\` before `:`, `,`, `\`.
fn ovl_escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mountinfo_paths_round_trip(root in path(), point in path()) {
        let line = format!(
            "40 22 254:1 {} {} rw,relatime - ext4 /dev/vda rw",
            as_text(&mangle(&root, b" \t\n\\").into_bytes()),
            as_text(&mangle(&point, b" \t\n\\").into_bytes()),
        );
        let mounts = parse_mountinfo(&line);
        prop_assert_eq!(mounts.len(), 1);
        prop_assert_eq!(&mounts[0].root, &path_buf(&root));
        prop_assert_eq!(&mounts[0].mount_point, &path_buf(&point));
    }

    #[test]
    fn overlay_layers_round_trip(
        lowers in prop::collection::vec(path(), 1..4),
        upper in path(),
    ) {
        // What a runtime passes to mount(2), then what the kernel shows in mountinfo.
        let joined: Vec<Vec<u8>> = lowers.iter().map(|l| ovl_escape(l)).collect();
        let lowerdir = joined.join(&b':');
        let show = |value: &[u8]| mangle(value, b",= \t\n\\");
        let line = format!(
            "41 22 0:45 / /run/c1/rootfs rw - overlay overlay rw,lowerdir={},upperdir={},workdir=/w",
            show(&lowerdir),
            show(&ovl_escape(&upper)),
        );
        let mounts = parse_mountinfo(&line);
        prop_assert_eq!(mounts.len(), 1);
        let overlay = Overlay::from_mount(&mounts[0]).expect("an overlay");
        let expected: Vec<PathBuf> = lowers.iter().map(|l| path_buf(l)).collect();
        prop_assert_eq!(overlay.lowers, expected);
        prop_assert_eq!(overlay.upper, Some(path_buf(&upper)));
    }

    #[test]
    fn mountinfo_garbage_never_panics(text in "\\PC{0,200}") {
        let _ = parse_mountinfo(&text);
        for mount in parse_mountinfo(&text) {
            let _ = Overlay::from_mount(&mount);
        }
    }

    #[test]
    fn cgroup_paths_of_every_runtime_are_recognized(
        id in "[0-9a-f]{64}",
        uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        qos in prop::sample::select(vec!["burstable", "besteffort", "guaranteed"]),
        scheme in 0usize..6,
    ) {
        let uid_ = uid.replace('-', "_");
        let slice = if qos == "guaranteed" {
            format!("/kubepods.slice/kubepods-pod{uid_}.slice")
        } else {
            format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice")
        };
        let cgroupfs = if qos == "guaranteed" {
            format!("/kubepods/pod{uid}")
        } else {
            format!("/kubepods/{qos}/pod{uid}")
        };
        let (path, runtime, pod) = match scheme {
            0 => (format!("{slice}/cri-containerd-{id}.scope"), Runtime::Containerd, true),
            1 => (format!("{slice}/crio-{id}.scope"), Runtime::CriO, true),
            2 => (format!("{cgroupfs}/{id}"), Runtime::Kubernetes, true),
            3 => (format!("/system.slice/docker-{id}.scope"), Runtime::Docker, false),
            4 => (format!("/docker/{id}"), Runtime::Docker, false),
            _ => (format!("/machine.slice/libpod-{id}.scope"), Runtime::Podman, false),
        };
        let info = parse_cgroup_path(&path).expect("recognized");
        prop_assert_eq!(info.runtime, runtime);
        prop_assert_eq!(&info.id, &id);
        if pod {
            prop_assert_eq!(info.pod, Some((uid.clone(), qos.to_owned())));
        } else {
            prop_assert_eq!(info.pod, None);
        }
    }

    #[test]
    fn cgroup_path_garbage_never_panics(text in "\\PC{0,120}") {
        let _ = parse_cgroup_path(&text);
    }

    #[test]
    fn runtime_state_garbage_never_panics(text in "\\PC{0,300}") {
        let _ = parse_runc_state(&text, Runtime::Runc);
        let mut container = Container::default();
        apply_annotations(&mut container, &text);
    }

    #[test]
    fn runtime_state_fields_are_read(
        id in "[a-zA-Z0-9_.-]{1,40}",
        rootfs in "/[a-z/]{1,30}",
        memory in "/sys/fs/cgroup/memory/[a-z]{1,10}",
    ) {
        let text = serde_json::json!({
            "id": id,
            "cgroup_paths": {"memory": memory},
            "config": {"rootfs": rootfs, "labels": ["bundle=/run/b/x"]},
        })
        .to_string();
        let state = parse_runc_state(&text, Runtime::Runc).expect("parsed");
        prop_assert_eq!(&state.container.id, &id);
        prop_assert!(state.container.verified);
        prop_assert_eq!(state.container.rootfs.as_deref(), Some(rootfs.as_str()));
        prop_assert_eq!(state.cgroup_dirs, vec![PathBuf::from(memory)]);
        prop_assert_eq!(state.bundle, Some(PathBuf::from("/run/b/x")));
    }

    #[test]
    fn kernel_path_answers_rebuild_the_path(
        components in prop::collection::vec(
            prop::collection::vec(1u8..=255, 1..40)
                .prop_map(|c| c.into_iter().map(|b| if b == b'/' { b'_' } else { b }).collect::<Vec<u8>>()),
            0..20,
        ),
        flags in 0u32..16,
    ) {
        let mut name = InodeName {
            ino: 1, dev: 2, mode: 0o100644, rdev: 0, nlink: 1,
            depth: components.len() as u32, flags, used: 0, status: 0,
            text: [0; NAME_TEXT_BYTES + NAME_COMPONENT_MAX],
        };
        let mut at = 0;
        for c in &components {
            name.text[at..at + c.len()].copy_from_slice(c);
            at += c.len() + 1;
        }
        name.used = at as u32;
        let kernel = KernelPath::from_name(&name);
        let mut expected = Vec::new();
        for c in components.iter().rev() {
            expected.push(b'/');
            expected.extend_from_slice(c);
        }
        if expected.is_empty() {
            expected.push(b'/');
        }
        prop_assert_eq!(&*kernel.fs_path, &expected[..]);
        prop_assert_eq!(kernel.complete, flags & !memtrace_common::PATH_NO_DENTRY == 0);
    }

    #[test]
    fn kernel_path_answers_that_are_garbage_never_panic(
        text in prop::collection::vec(any::<u8>(), 0..600),
        depth in any::<u32>(),
        used in any::<u32>(),
        flags in any::<u32>(),
    ) {
        let mut name = InodeName {
            ino: 1, dev: 2, mode: 0, rdev: 0, nlink: 0, depth, flags, used, status: 0,
            text: [0; NAME_TEXT_BYTES + NAME_COMPONENT_MAX],
        };
        name.text[..text.len()].copy_from_slice(&text);
        let _ = KernelPath::from_name(&name);
    }
}
