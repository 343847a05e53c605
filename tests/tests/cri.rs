//! Kubernetes through the real CRI: containerd's CRI service driven as kubelet drives it
//! (RunPodSandbox, CreateContainer, StartContainer) with a host-network pod in a burstable
//! QoS cgroup (`/kubepods/burstable/pod<uid>`), a container in it logging to
//! /tmp/spring.log. memtrace names the pod's namespace, name, uid and QoS, the container's
//! name, runtime `containerd`, verified, with the log's host path in containerd's snapshots
//! and fincore's bytes.

use std::{collections::HashMap, path::PathBuf, thread, time::Duration};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    ContainerStatusRequest, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use memtrace_tests::{
    engines::{ensure_cri_images, CRI_IMAGE},
    files::fincore_bytes,
    require_root, watch_container_json,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

const SOCKET: &str = "/run/containerd/containerd.sock";

async fn connect() -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:0")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(|_: Uri| async {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(SOCKET).await?))
        }))
        .await
        .expect("containerd's CRI socket (cargo xtask test starts containerd)");
    RuntimeServiceClient::new(channel)
}

/// A pod with one container, made through the CRI; stopped and removed when dropped.
struct Pod {
    runtime: tokio::runtime::Runtime,
    sandbox: String,
    container: String,
}

impl Pod {
    fn run(namespace: &str, name: &str, uid: &str, container: &str, script: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let logs = PathBuf::from(format!("/var/tmp/memtrace-tests/cri-logs-{uid}"));
        std::fs::create_dir_all(&logs).unwrap();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: namespace.to_owned(),
                attempt: 0,
            }),
            log_directory: logs.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/burstable/pod{uid}"),
                // Host network: no CNI here. No hostname: no private UTS namespace with it.
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let (sandbox, container) = runtime.block_on(async {
            let mut cri = connect().await;
            let sandbox = cri
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .expect("RunPodSandbox")
                .into_inner()
                .pod_sandbox_id;
            let created = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox.clone(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: container.to_owned(),
                            attempt: 0,
                        }),
                        image: Some(ImageSpec {
                            image: CRI_IMAGE.to_owned(),
                            ..ImageSpec::default()
                        }),
                        command: vec!["sh".into(), "-c".into(), script.to_owned()],
                        log_path: format!("{container}.log"),
                        ..ContainerConfig::default()
                    }),
                    sandbox_config: Some(sandbox_config),
                })
                .await
                .expect("CreateContainer")
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: created.clone(),
            })
            .await
            .expect("StartContainer");
            (sandbox, created)
        });
        Self {
            runtime,
            sandbox,
            container,
        }
    }

    /// The container's first process, from CRI's verbose status.
    fn pid(&self) -> u32 {
        self.runtime.block_on(async {
            let status = connect()
                .await
                .container_status(ContainerStatusRequest {
                    container_id: self.container.clone(),
                    verbose: true,
                })
                .await
                .expect("ContainerStatus")
                .into_inner();
            let info: HashMap<String, String> = status.info;
            let info: Value = serde_json::from_str(info.get("info").expect("verbose info"))
                .expect("info is JSON");
            info["pid"].as_u64().expect("a pid") as u32
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let (sandbox, container) = (self.sandbox.clone(), self.container.clone());
        self.runtime.block_on(async {
            let mut cri = connect().await;
            let _ = cri
                .stop_container(StopContainerRequest {
                    container_id: container.clone(),
                    timeout: 0,
                })
                .await;
            let _ = cri
                .remove_container(RemoveContainerRequest {
                    container_id: container,
                })
                .await;
            let _ = cri
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.clone(),
                })
                .await;
            let _ = cri
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox,
                })
                .await;
        });
    }
}

#[test]
fn a_pod_run_through_containerds_cri_is_named_with_its_pod_and_container() {
    require_root();
    ensure_cri_images();
    let tag = std::process::id();
    let uid = format!("5d1c6c4e-8f2a-4b3c-9d0e-{tag:012x}");
    let (pod_name, container_name) = (format!("spring-{tag}"), format!("spring-app-{tag}"));
    let pod = Pod::run(
        "shop",
        &pod_name,
        &uid,
        &container_name,
        "dd if=/dev/zero of=/tmp/spring.log bs=1M count=24 2>/dev/null; touch /tmp/done; sleep 600",
    );
    let done = PathBuf::from(format!("/proc/{}/root/tmp/done", pod.pid()));
    for _ in 0..300 {
        if done.exists() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(done.exists(), "the container never wrote /tmp/done");

    let cgroup = &watch_container_json(&container_name);
    assert_eq!(
        cgroup["path"].as_str(),
        Some(format!("/kubepods/burstable/pod{uid}/{}", pod.container).as_str()),
        "the cgroup kubelet's cgroupfs driver gives it"
    );
    let found = &cgroup["container"];
    assert_eq!(found["name"], container_name.as_str(), "{found}");
    assert_eq!(found["id"], pod.container.as_str(), "{found}");
    assert_eq!(found["runtime"], "containerd", "{found}");
    assert_eq!(found["verified"], true, "{found}");
    let pod_found = &found["pod"];
    assert_eq!(pod_found["namespace"], "shop", "{found}");
    assert_eq!(pod_found["name"], pod_name.as_str(), "{found}");
    assert_eq!(pod_found["uid"], uid.as_str(), "{found}");
    assert_eq!(pod_found["qos"], "burstable", "{found}");
    let log = cgroup["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/tmp/spring.log")
        .unwrap_or_else(|| panic!("/tmp/spring.log by its path inside: {cgroup}"));
    let host = PathBuf::from(log["host_path"].as_str().expect("a host path"));
    assert!(
        host.starts_with("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/"),
        "in containerd's snapshots: {}",
        host.display()
    );
    let inside = PathBuf::from(format!("/proc/{}/root/tmp/spring.log", pod.pid()));
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&host).unwrap()),
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&inside).unwrap()),
        "the host path is the container's file"
    );
    assert_eq!(
        log["cached_bytes"].as_u64(),
        Some(fincore_bytes(&host)),
        "fincore's bytes"
    );
}
