//! Drives the real `kubectl` against the kube-sim binary: apply CRDs and objects (client-side
//! and server-side), printer columns, `kubectl explain`, and deletion with a finalizer.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct KubeSim {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    manifest_dir().join("tests/fixtures/kube")
}

fn repo_dir(name: &str) -> Option<PathBuf> {
    let p = manifest_dir().join("..").join(name);
    let has_yaml = std::fs::read_dir(&p).ok()?.filter_map(Result::ok).any(|e| {
        e.path()
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml")
    });
    has_yaml.then_some(p)
}

fn start_sim(crds: &Path) -> KubeSim {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["--listen", "127.0.0.1:0", "--crds"])
        .arg(crds)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kube-sim starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("kube-sim prints its address");
    assert!(
        line.starts_with("kube-sim listening on http://127.0.0.1:"),
        "unexpected first line {line:?}"
    );
    KubeSim {
        child,
        kubeconfig,
        _dir: dir,
    }
}

fn kubectl_path() -> String {
    let out = Command::new("bash")
        .arg(fixtures().join("ensure-kubectl.sh"))
        .output()
        .expect("ensure-kubectl.sh runs");
    assert!(
        out.status.success(),
        "installing kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Kubectl {
    bin: String,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=30s")
            .args(args)
            .env("HOME", self.cache.path());
        c
    }
    /// Runs kubectl; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cmd(args).output().expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }
}

/// The kube-sim binary with no CRDs (in the returned empty folder) and kubectl pointed at it.
fn kubectl_and_sim() -> (KubeSim, tempfile::TempDir, Kubectl) {
    let bin = kubectl_path();
    let empty = tempfile::tempdir().unwrap();
    let sim = start_sim(empty.path());
    let k = Kubectl {
        bin,
        kubeconfig: sim.kubeconfig.clone(),
        cache: tempfile::tempdir().unwrap(),
    };
    (sim, empty, k)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Printer column headers of the first version of a CRD file, as kubectl prints them.
fn printer_headers(crd_file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(crd_file).expect("crd file");
    let crd: serde_json::Value = serde_norway::from_str(&text).expect("crd yaml");
    let mut out = vec!["NAME".to_string()];
    for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["priority"].as_i64().unwrap_or(0) == 0 {
            out.push(c["name"].as_str().unwrap_or_default().to_uppercase());
        }
    }
    out
}

#[test]
fn kubectl_against_kube_sim() {
    // start with no CRDs at all: kubectl applies them
    let (_sim, _empty, k) = kubectl_and_sim();
    let version = k.ok(&["version", "-o", "json"]);
    assert!(version.contains("kube-sim"), "{version}");

    // identity: kubectl sends no bearer token over plain HTTP, the kubeconfig's `as` makes it
    // act as the admin; --as impersonates another user
    let ssr = fixtures().join("selfsubjectreview.yaml");
    let who = |extra: &[&str]| {
        let mut args = vec![
            "create",
            "-f",
            ssr.to_str().unwrap(),
            "-o",
            "jsonpath={.status.userInfo.username}",
        ];
        args.extend_from_slice(extra);
        k.ok(&args)
    };
    assert_eq!(who(&[]), "kube-sim-admin");
    assert_eq!(who(&["--as", "alice", "--as-group", "devs"]), "alice");

    // typed commands send protobuf bodies
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&["create", "serviceaccount", "deployer", "-n", "team-a"]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "team-a",
        "--from-literal=password=hunter2",
    ]);
    let data = k.ok(&[
        "get",
        "secret",
        "s1",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(data.trim(), "aHVudGVyMg==");
    let client_minor: u32 = {
        let v: serde_json::Value =
            serde_json::from_str(&k.ok(&["version", "--client", "-o", "json"]))
                .expect("version json");
        v["clientVersion"]["minor"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('+')
            .parse()
            .unwrap_or(0)
    };
    if client_minor >= 24 {
        // kubectl >= 1.24: TokenRequest through the ServiceAccount token subresource
        let token = k.ok(&[
            "create",
            "token",
            "deployer",
            "-n",
            "team-a",
            "--audience",
            "api://AzureADTokenExchange",
        ]);
        let payload = token.trim().split('.').nth(1).expect("a JWT");
        use base64::Engine;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64url"),
        )
        .expect("claims");
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:deployer");
        assert_eq!(
            claims["aud"],
            serde_json::json!(["api://AzureADTokenExchange"])
        );
    }

    // CRDs: the fixtures, and the operator's crds/ when it exists
    let fixture_crds = fixtures().join("widgets.yaml");
    k.ok(&["apply", "-f", fixture_crds.to_str().unwrap()]);
    let operator_crds = repo_dir("crds");
    if let Some(dir) = &operator_crds {
        k.ok(&["apply", "--server-side", "-f", dir.to_str().unwrap()]);
    }
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd",
        "--all",
    ]);

    // objects: examples/ if present (applied twice at most, as a user would when a file
    // needs a namespace that a later file creates), else a sample grant
    if let Some(examples) = repo_dir("examples") {
        let args = ["apply", "-R", "-f", examples.to_str().unwrap()];
        let (ok, out, err) = k.run(&args);
        if !ok {
            eprintln!("first apply of examples/ failed, applying again:\n{out}\n{err}");
            k.ok(&args);
        }
    }
    if operator_crds.is_some() {
        let grants = k.ok(&["get", "accessgrants", "-A", "-o", "name"]);
        if grants.trim().is_empty() {
            let sample = fixtures().join("accessgrant-sample.yaml");
            k.ok(&["apply", "-f", sample.to_str().unwrap()]);
        }
    }

    // printer columns
    let (kind, crd_file) = match &operator_crds {
        Some(dir) => ("accessgrants", dir.join("accessgrants.accessgrant.io.yaml")),
        None => ("widgets", fixture_crds.clone()),
    };
    let w = fixtures().join("widget-sample.yaml");
    k.ok(&["apply", "-f", w.to_str().unwrap()]);
    let table = k.ok(&["get", kind, "-A"]);
    let header = table.lines().next().unwrap_or_default().to_string();
    let mut want = printer_headers(&crd_file);
    want.insert(0, "NAMESPACE".into());
    let got: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(got, want, "kubectl get {kind}:\n{table}");
    assert!(
        table.lines().count() >= 2,
        "at least one object listed:\n{table}"
    );

    // explain shows field documentation from the CRD schema
    if operator_crds.is_some() {
        let ex = k.ok(&["explain", "accessgrant.spec.jit"]);
        assert!(ex.contains("KIND:") && ex.contains("AccessGrant"), "{ex}");
        assert!(ex.contains("subscriptionId"), "{ex}");
        assert!(ex.contains("FIELDS"), "{ex}");
    }
    let ex = k.ok(&["explain", "widget.spec.owner"]);
    assert!(ex.contains("Who owns the widget."), "{ex}");
    assert!(ex.contains("Owner team."), "{ex}");

    // client-side apply round trip, server-side apply, validation errors surface
    let out = k.ok(&["apply", "-f", w.to_str().unwrap()]);
    assert!(out.contains("unchanged"), "{out}");
    let out = k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        w.to_str().unwrap(),
    ]);
    assert!(out.contains("serverside-applied"), "{out}");
    let (ok, _, err) = k.run(&[
        "patch",
        "widget",
        "sample",
        "--type=merge",
        "-p",
        r#"{"spec":{"serial":"ZZ-9"}}"#,
    ]);
    assert!(!ok && err.contains("serial is immutable once set"), "{err}");

    // deletion with a finalizer: Terminating until the finalizer goes
    let mut deleting = k
        .cmd(&["delete", "widget", "sample", "--timeout=60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl delete");
    wait_until("deletionTimestamp", 30, || {
        let (_, out, _) = k.run(&[
            "get",
            "widget",
            "sample",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ]);
        !out.trim().is_empty()
    });
    assert!(
        deleting.try_wait().expect("poll").is_none(),
        "kubectl delete waits while the finalizer is there"
    );
    let still = k.ok(&["get", "widget", "sample", "-o", "name"]);
    assert_eq!(still.trim(), "widget.test.kube-sim.io/sample");
    k.ok(&[
        "patch",
        "widget",
        "sample",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let status = deleting.wait().expect("kubectl delete ends");
    assert!(
        status.success(),
        "kubectl delete finished once the finalizer was removed"
    );
    let (ok, _, err) = k.run(&["get", "widget", "sample"]);
    assert!(
        !ok && (err.contains("NotFound") || err.contains("not found")),
        "{err}"
    );
}

/// RBAC through the real kubectl: `kubectl auth can-i` (SelfSubjectAccessReview, protobuf
/// body) and `--list` (SelfSubjectRulesReview), a Forbidden error as kubectl prints it, and a
/// RoleBinding that changes the answer.
#[test]
fn kubectl_auth_can_i_follows_rbac() {
    let (_sim, empty, k) = kubectl_and_sim();
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&["create", "namespace", "team-b"]);
    let can = |args: &[&str]| -> String {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        let (_, out, _) = k.run(&a);
        out.trim().to_string()
    };
    assert_eq!(
        can(&["list", "secrets", "-n", "team-a"]),
        "yes",
        "the admin"
    );
    assert_eq!(
        can(&["list", "secrets", "-n", "team-a", "--as", "alice"]),
        "no"
    );
    let (ok, _, err) = k.run(&["get", "secrets", "-n", "team-a", "--as", "alice"]);
    assert!(!ok);
    assert!(
        err.contains(
            "Error from server (Forbidden): secrets is forbidden: User \"alice\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team-a\""
        ),
        "{err}"
    );

    let rbac = empty.path().join("rbac.yaml");
    std::fs::write(
        &rbac,
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: config-reader, namespace: team-a}
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get", "list", "watch"]
  - apiGroups: [""]
    resources: ["secrets"]
    resourceNames: ["app-key"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: devs-read-config, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: config-reader}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}
"#,
    )
    .unwrap();
    k.ok(&["apply", "-f", rbac.to_str().unwrap()]);
    let as_dev = ["--as", "alice", "--as-group", "devs"];
    let can_dev = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(&as_dev);
        can(&a)
    };
    assert_eq!(can_dev(&["list", "configmaps", "-n", "team-a"]), "yes");
    assert_eq!(
        can_dev(&["list", "configmaps", "-n", "team-b"]),
        "no",
        "a Role is one namespace"
    );
    assert_eq!(can_dev(&["delete", "configmaps", "-n", "team-a"]), "no");
    assert_eq!(can_dev(&["get", "secret/app-key", "-n", "team-a"]), "yes");
    assert_eq!(
        can_dev(&["get", "secret/other", "-n", "team-a"]),
        "no",
        "resourceNames"
    );
    assert_eq!(can_dev(&["list", "secrets", "-n", "team-a"]), "no");
    // Without the group, alice has nothing.
    assert_eq!(
        can(&["list", "configmaps", "-n", "team-a", "--as", "alice"]),
        "no"
    );

    let mut list_args = vec!["auth", "can-i", "--list", "-n", "team-a"];
    list_args.extend_from_slice(&as_dev);
    let listed = k.ok(&list_args);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("configmaps") && l.contains("[get list watch]")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("secrets") && l.contains("[app-key]")),
        "{listed}"
    );
}
