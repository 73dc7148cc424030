//! The README's main command on a busy machine: the sandbox takes no fixed port (8080 and 9443
//! are held by someone else here), two run side by side with their own `dir`, and when the
//! operator dies the sandbox stops at once with the operator log's last lines.

use crate::wait;

use accessgrant_sim::sandbox::{Config, log_tail, run};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn config(dir: &Path) -> Config {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Config {
        // Longer than the test: the test ends each sandbox itself.
        exit_after: Some(Duration::from_secs(900)),
        examples: root.join("examples"),
        dir: dir.to_path_buf(),
        world: root.join("sim/worlds/sandbox.yaml"),
        crds: root.join("crds"),
        user_roles: root.join("deploy/rbac-users.yaml"),
        operator_rbac: root.join("deploy/rbac.yaml"),
        deactivation_floor: "PT10S".into(),
        operator: Some(PathBuf::from(env!("CARGO_BIN_EXE_accessgrant-operator"))),
    }
}

/// Waits until the sandbox in `dir` shows an Active grant (`name`, or any), through its own
/// kubeconfig; returns its name.
async fn active_grant(dir: &Path, name: Option<&str>) -> String {
    let kubeconfig = dir.join("kubeconfig");
    wait::eventually(
        &format!("an Active grant in the sandbox at {}", dir.display()),
        Duration::from_secs(180),
        Duration::from_millis(250),
        || async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
            let gvk = GroupVersionKind::gvk("accessgrant.io", "v1alpha1", "AccessGrant");
            let ar = ApiResource::from_gvk_with_plural(&gvk, "accessgrants");
            let api: Api<DynamicObject> = Api::all_with(client, &ar);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|g| {
                    g.data["status"]["phase"] == "Active"
                        && name.is_none_or(|n| g.metadata.name.as_deref() == Some(n))
                })
                .and_then(|g| g.metadata.name.clone())
                .ok_or_else(|| format!("{} grants, none Active", list.items.len()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sandboxes_side_by_side_on_a_busy_machine_and_a_dead_operator_is_reported() {
    let _heavy = crate::one_heavy_at_a_time().await;
    // Someone else holds the ports the operator used to bind by default (admin 8080, webhook
    // 9443). When a bind fails here, another program already holds the port: busy either way.
    let _admin = std::net::TcpListener::bind("0.0.0.0:8080");
    let _webhook = std::net::TcpListener::bind("0.0.0.0:9443");

    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = tokio::spawn(run(config(d1.path())));
    let mut second = tokio::spawn(run(config(d2.path())));
    let (a, b) = tokio::select! {
        ab = async { tokio::join!(active_grant(d1.path(), None), active_grant(d2.path(), None)) } => ab,
        r = &mut first => panic!("the first sandbox ended before granting: {r:?}"),
        r = &mut second => panic!("the second sandbox ended before granting: {r:?}"),
    };
    assert!(!a.is_empty() && !b.is_empty());

    // The first sandbox's operator dies: that sandbox ends at once, with an error naming it
    // and the last lines of its log; the second one keeps running.
    let pid = std::fs::read_to_string(d1.path().join("operator.pid")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    let ended = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the sandbox kept running after its operator died")
        .unwrap();
    let err = format!(
        "{:#}",
        ended.expect_err("a dead operator must fail the sandbox")
    );
    assert!(err.contains("the operator exited"), "{err}");
    let last = log_tail(&d1.path().join("operator.log"), 1);
    assert!(!last.is_empty(), "the operator wrote no log");
    assert!(
        err.contains(&last),
        "the error shows the log's last line {last:?}: {err}"
    );

    assert!(
        !second.is_finished(),
        "the second sandbox stopped with the first"
    );
    assert_eq!(active_grant(d2.path(), Some(&b)).await, b);
    second.abort();
}
