//! The spec → `BoxOptions` mapping, checked against the real `boxlite` types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use boxlite::RootfsSpec;

use super::options::{box_name, box_options, rootfs, volume_dirs, LOOPBACK};
use crate::spec::{BoxSpec, RestartPolicy, ServiceSpec};

fn service(image: &str, boxed: Option<BoxSpec>) -> ServiceSpec {
    ServiceSpec {
        name: "redis".into(),
        file: PathBuf::from("services/redis.yaml"),
        description: None,
        ports: BTreeMap::from([("redis".into(), 26379), ("metrics".into(), 29121)]),
        environment: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "base".into())]),
        depends_on: BTreeMap::new(),
        process: None,
        image: Some(image.into()),
        boxed,
        healthcheck: None,
        restart: RestartPolicy::OnFailure,
        init: Vec::new(),
        configs: Vec::new(),
        exports: BTreeMap::new(),
        data_dir: PathBuf::from("/state/data/redis"),
        build: None,
        watch: Vec::new(),
        info: None,
    }
}

#[test]
fn every_option_of_a_service_reaches_the_box() {
    let b = BoxSpec {
        cpus: Some(2),
        memory_mib: Some(512),
        entrypoint: vec!["/entry".into()],
        command: vec!["redis-server".into(), "--appendonly".into(), "yes".into()],
        working_dir: Some("/data".into()),
        volumes: vec![
            (PathBuf::from("."), "/data".into()),
            (PathBuf::from("/abs/conf"), "/etc/redis".into()),
        ],
        guest_ports: BTreeMap::from([("redis".into(), 6379)]),
        environment: BTreeMap::from([("B".into(), "box".into()), ("C".into(), "3".into())]),
    };
    let o = box_options(&service("redis:7-alpine", Some(b)), Path::new("/proj")).expect("maps");
    assert_eq!(o.cpus, Some(2));
    assert_eq!(o.memory_mib, Some(512));
    assert_eq!(o.working_dir.as_deref(), Some("/data"));
    assert_eq!(o.entrypoint, Some(vec!["/entry".to_string()]));
    assert_eq!(
        o.cmd,
        Some(vec![
            "redis-server".to_string(),
            "--appendonly".into(),
            "yes".into()
        ])
    );
    assert!(matches!(&o.rootfs, RootfsSpec::Image(i) if i == "redis:7-alpine"));
    // box.environment wins over environment; both reach the box.
    let env: BTreeMap<_, _> = o.env.iter().cloned().collect();
    assert_eq!(env.get("A").map(String::as_str), Some("1"));
    assert_eq!(env.get("B").map(String::as_str), Some("box"));
    assert_eq!(env.get("C").map(String::as_str), Some("3"));
    // Every named port is published, on loopback only; an unmapped one keeps its number.
    let mut ports: Vec<(Option<u16>, u16, Option<String>)> = o
        .ports
        .iter()
        .map(|p| (p.host_port, p.guest_port, p.host_ip.clone()))
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![
            (Some(26379), 6379, Some(LOOPBACK.to_string())),
            (Some(29121), 29121, Some(LOOPBACK.to_string())),
        ]
    );
    assert!(o
        .ports
        .iter()
        .all(|p| p.protocol == boxlite::PortProtocol::Tcp));
    // Relative volume hosts live in the data dir; absolute ones stay.
    let vols: Vec<(String, String, bool)> = o
        .volumes
        .iter()
        .map(|v| (v.host_path.clone(), v.guest_path.clone(), v.read_only))
        .collect();
    assert_eq!(
        vols,
        vec![
            ("/state/data/redis/.".into(), "/data".into(), false),
            ("/abs/conf".into(), "/etc/redis".into(), false),
        ]
    );
    assert_eq!(
        volume_dirs(&o),
        vec![
            PathBuf::from("/state/data/redis/."),
            PathBuf::from("/abs/conf")
        ]
    );
    // Owned by its supervisor, not by one command; kept after a stop so its id survives.
    assert!(o.detach);
    assert_eq!(o.auto_delete, Some(0));
}

#[test]
fn an_image_without_box_options_takes_the_images_own_defaults() {
    let o = box_options(&service("postgres:17-alpine", None), Path::new("/p")).expect("maps");
    assert_eq!(o.cpus, None);
    assert_eq!(o.memory_mib, None);
    assert_eq!(o.cmd, None, "the image's CMD is kept");
    assert_eq!(o.entrypoint, None, "the image's ENTRYPOINT is kept");
    assert!(o.volumes.is_empty());
    assert_eq!(o.ports.len(), 2);
}

#[test]
fn a_path_image_is_a_local_oci_layout_in_the_project() {
    assert!(matches!(
        rootfs("./images/redis", Path::new("/proj")),
        RootfsSpec::RootfsPath(p) if p == "/proj/./images/redis"
    ));
    assert!(matches!(
        rootfs("/srv/img", Path::new("/proj")),
        RootfsSpec::RootfsPath(p) if p == "/srv/img"
    ));
    assert!(matches!(
        rootfs("ghcr.io/dexidp/dex:v2.42.0", Path::new("/proj")),
        RootfsSpec::Image(i) if i == "ghcr.io/dexidp/dex:v2.42.0"
    ));
}

#[test]
fn impossible_options_are_refused_with_the_reason() {
    let b = BoxSpec {
        cpus: Some(300),
        ..BoxSpec::default()
    };
    let e = box_options(&service("redis:7-alpine", Some(b)), Path::new("/p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("box.cpus = 300"), "{e}");
    let mut no_image = service("x", None);
    no_image.image = None;
    assert!(box_options(&no_image, Path::new("/p"))
        .unwrap_err()
        .to_string()
        .contains("no `image:`"));
}

#[test]
fn box_names_are_scoped_by_stack() {
    assert_eq!(box_name("boxlite-local", "redis"), "boxlite-local-redis");
}

/// The options survive the trip through the supervisor's spec file unchanged.
#[test]
fn box_options_round_trip_through_the_supervisor_spec() {
    let o = box_options(&service("redis:7-alpine", None), Path::new("/p")).expect("maps");
    let text = serde_json::to_string(&o).expect("serialize");
    let back: boxlite::BoxOptions = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(serde_json::to_string(&back).expect("again"), text);
}

/// `auto` with bootable boxes: an image runs as a box, a service with only `process:` as a
/// process, and a running instance stays with the backend that started it (its record says
/// which), so it is inspected and stopped by the right one.
#[test]
fn routing_follows_the_image_and_then_the_running_instances_record() {
    use std::sync::Arc;

    use crate::backend::process::ProcessBackend;
    use crate::backend::routed::Routed;
    use crate::backend::{Backend, BackendKind};
    use crate::layout::Layout;
    use crate::supervisor::identity::ProcRef;
    use crate::supervisor::record::{write_json, Record, State};

    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(tmp.path());
    layout.create().expect("layout");
    let process: Arc<dyn Backend> = Arc::new(ProcessBackend::new(layout.clone()));
    let microvm: Arc<dyn Backend> = Arc::new(super::MicrovmBackend::new(
        layout.clone(),
        "t",
        tmp.path().to_path_buf(),
    ));
    let routed = Routed::new(layout.clone(), Arc::clone(&process), Some(microvm));
    let boxed = service("redis:7-alpine", None);
    assert_eq!(routed.backend_for(&boxed), BackendKind::Microvm);
    let mut native = service("redis:7-alpine", None);
    native.image = None;
    assert_eq!(routed.backend_for(&native), BackendKind::Process);

    // The same image service, already running as a process (started before boxes could boot).
    let me = ProcRef::of(std::process::id()).expect("own proc entry");
    let record = Record {
        id: "abc".into(),
        service: "redis".into(),
        backend: crate::backend::BackendKind::Process,
        program: "redis-server".into(),
        hash: String::new(),
        ports: BTreeMap::new(),
        supervisor: me.clone(),
        process: Some(me),
        state: State::Running,
        started_at: None,
        spawn_ms: None,
        restarts: 0,
        last_exit: None,
    };
    write_json(&layout.record("redis"), &record).expect("record");
    assert_eq!(routed.backend_for(&boxed), BackendKind::Process);
    assert_eq!(routed.inspect(&boxed).id, "abc");

    // Without bootable boxes everything is a process.
    let fallback = Routed::new(layout, process, None);
    std::fs::remove_file(tmp.path().join("run/redis.json")).expect("rm");
    assert_eq!(fallback.backend_for(&boxed), BackendKind::Process);
}
