//! Deployment packaging: the Helm chart (`charts/accessgrant-operator`) and the kustomize base
//! (`deploy/`).
//!
//! - Their CRD copies must equal what the Rust types generate. Regenerate with
//!   `UPDATE_CRDS=1 cargo test --test e2e packaging::`.
//! - `scripts/packaging-check.sh` renders the chart with Helm's Go SDK (helm lint, values
//!   schema, default values and every option on) and `kubectl kustomize deploy`, and checks every
//!   object with `kubernetes-validate --strict`; this test runs it, then checks RBAC against an
//!   explicit allow-list, Pod Security "restricted", the workload identity wiring, that the
//!   kustomize base matches the chart's defaults, and applies every object kube-sim serves.

use accessgrant_operator::api::crds;
use accessgrant_sim::kube::{SimConfig, serve};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const NAMESPACE: &str = "accessgrant-system";
const NAME: &str = "accessgrant-operator";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn chart_and_deploy_crds_match_the_rust_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    // The chart's CRDs are templates (helm upgrade applies them; crds/ it never would), behind
    // crds.enabled and with helm.sh/resource-policy: keep under crds.keep; the kustomize base
    // holds them plain.
    let dirs = [
        root().join("charts/accessgrant-operator/templates/crds"),
        root().join("deploy/crds"),
    ];
    assert!(
        !root().join("charts/accessgrant-operator/crds").exists(),
        "charts/accessgrant-operator/crds: Helm installs those once and never upgrades them"
    );
    let mut drift = Vec::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let plain = format!(
            "---\n{}",
            serde_norway::to_string(&crd).expect("CRD serialises")
        );
        for dir in &dirs {
            let want = if dir.ends_with("templates/crds") {
                chart_crd_template(&plain)
            } else {
                plain.clone()
            };
            let path = dir.join(format!("{name}.yaml"));
            if update {
                std::fs::create_dir_all(dir).expect("create crds dir");
                std::fs::write(&path, &want).expect("write CRD");
                continue;
            }
            if std::fs::read_to_string(&path).unwrap_or_default() != want {
                drift.push(path.display().to_string());
            }
        }
    }
    assert!(
        drift.is_empty(),
        "packaged CRDs drifted from the Rust types: {drift:?}\nregenerate with: UPDATE_CRDS=1 cargo test --test e2e packaging::"
    );
    // No stale CRD files either (a renamed kind would linger and still be installed).
    let names: BTreeSet<String> = crds()
        .iter()
        .map(|c| format!("{}.yaml", c.metadata.name.clone().unwrap_or_default()))
        .collect();
    for dir in &dirs {
        for entry in std::fs::read_dir(dir).expect("crds dir") {
            let file = entry.expect("dir entry").file_name();
            let file = file.to_string_lossy().into_owned();
            assert!(
                names.contains(&file),
                "{}/{file} is no generated CRD",
                dir.display()
            );
        }
    }
}

/// A generated CRD as a chart template: rendered only with `crds.enabled`, kept on uninstall
/// with `crds.keep`.
fn chart_crd_template(plain: &str) -> String {
    let body = plain.replacen(
        "\nmetadata:\n",
        "\nmetadata:\n  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n",
        1,
    );
    format!(
        "# Generated from the Rust types (tests/e2e/packaging.rs; UPDATE_CRDS=1 cargo test --test e2e packaging::).\n{{{{- if .Values.crds.enabled }}}}\n{body}{{{{- end }}}}\n"
    )
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("rendered manifests");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| v.is_object())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

/// The first path where two JSON values differ (assertion messages stay readable).
fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_diff(u, v, &format!("{path}[{i}]"))),
        // kustomize re-serialises `0.0` as `0`: the same number to the API server.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

fn assert_same(a: &Value, b: &Value, what: &str) {
    if let Some(d) = first_diff(a, b, "") {
        panic!("{what}: {d}");
    }
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A granted permission: (apiGroup, resource, verb, resourceNames joined by `,`; empty = any).
type Perm = (String, String, String, String);

/// Every (apiGroup, resource, verb, names) a role grants; panics on anything an allow-list
/// cannot express (nonResourceURLs, wildcards).
fn grants(role: &Value) -> BTreeSet<Perm> {
    let mut out = BTreeSet::new();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("expected a list in {v}"))
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    for rule in role["rules"].as_array().expect("rules") {
        let keys: BTreeSet<&str> = rule
            .as_object()
            .expect("rule")
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "resourceNames")
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "rule with nonResourceURLs or missing parts: {rule}"
        );
        let names = if rule["resourceNames"].is_null() {
            String::new()
        } else {
            strs(&rule["resourceNames"]).join(",")
        };
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    assert!(
                        !g.contains('*') && !r.contains('*') && !v.contains('*'),
                        "wildcard in {rule}"
                    );
                    out.insert((g.clone(), r.clone(), v, names.clone()));
                }
            }
        }
    }
    out
}

fn allow(list: &[(&str, &str, &[&str])]) -> BTreeSet<Perm> {
    allow_named(list, "")
}

fn allow_named(list: &[(&str, &str, &[&str])], names: &str) -> BTreeSet<Perm> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs.iter().map(move |v| {
                (
                    g.to_string(),
                    r.to_string(),
                    v.to_string(),
                    names.to_string(),
                )
            })
        })
        .collect()
}

/// What the operator needs, and nothing else. With a self-generated webhook certificate it
/// also patches the CA into its own two webhook configurations (by name).
fn cluster_allow_list(self_signed: bool) -> BTreeSet<Perm> {
    let mut a = allow(&[
        (
            "accessgrant.io",
            "accessgrants",
            &["get", "list", "watch", "patch"],
        ),
        ("accessgrant.io", "accessgrants/status", &["get", "patch"]),
        ("accessgrant.io", "accessgrants/finalizers", &["update"]),
        (
            "accessgrant.io",
            "accesspolicies",
            // patch: the deletion guard's finalizer.
            &["get", "list", "watch", "patch"],
        ),
        ("", "namespaces", &["get", "list", "watch"]),
        ("", "serviceaccounts/token", &["create"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    if self_signed {
        a.extend(allow_named(
            &[
                (
                    "admissionregistration.k8s.io",
                    "mutatingwebhookconfigurations",
                    &["get", "patch"],
                ),
                (
                    "admissionregistration.k8s.io",
                    "validatingwebhookconfigurations",
                    &["get", "patch"],
                ),
            ],
            NAME,
        ));
    }
    a
}

fn lease_allow_list() -> BTreeSet<Perm> {
    allow(&[(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    )])
}

/// Secrets of the release namespace: the stamp key (and the self-generated certificate) read
/// by name; create (which cannot be limited by name).
fn webhook_allow_list(self_signed: bool) -> BTreeSet<Perm> {
    let names = if self_signed {
        format!("{NAME}-stamp-key,{NAME}-webhook-tls")
    } else {
        format!("{NAME}-stamp-key")
    };
    let mut a = allow_named(&[("", "secrets", &["get"])], &names);
    a.extend(allow(&[("", "secrets", &["create"])]));
    a
}

fn assert_grants(role: &Value, want: &BTreeSet<Perm>, what: &str) {
    let have = grants(role);
    let extra: Vec<_> = have.difference(want).collect();
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: {} {} differs from the allow-list: extra {extra:?}, missing {missing:?}",
        role["kind"],
        role["metadata"]["name"]
    );
}

/// The chart's ClusterRoles for people (templates/rbac-users.yaml).
const USER_ROLES: [&str; 5] = [
    "accessgrant-viewer",
    "accessgrant-request",
    "accessgrant-policy-admin",
    "accessgrant-requester",
    "accessgrant-admin",
];

fn check_rbac(docs: &[Value], what: &str, self_signed: bool) {
    let cr = find(docs, "ClusterRole", NAME);
    assert_grants(cr, &cluster_allow_list(self_signed), what);
    let role = find(docs, "Role", &format!("{NAME}-leader-election"));
    assert_eq!(
        role["metadata"]["namespace"], NAMESPACE,
        "{what}: Role namespace"
    );
    assert_grants(role, &lease_allow_list(), what);
    let wrole = find(docs, "Role", &format!("{NAME}-webhook"));
    assert_eq!(
        wrole["metadata"]["namespace"], NAMESPACE,
        "{what}: webhook Role namespace"
    );
    assert_grants(wrole, &webhook_allow_list(self_signed), what);
    for d in docs {
        if matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")) {
            // The roles for people (checked in full against the kustomize base) are the only
            // others, and the chart binds them to nobody.
            let user_role = d["kind"] == "ClusterRole"
                && USER_ROLES.contains(&d["metadata"]["name"].as_str().unwrap_or_default());
            assert!(
                d == cr || d == role || d == wrole || user_role,
                "{what}: unexpected role {}",
                d["metadata"]["name"]
            );
        }
        if d["kind"].as_str().is_some_and(|k| k.ends_with("Binding")) {
            let to = d["roleRef"]["name"].as_str().unwrap_or_default();
            assert!(
                !USER_ROLES.contains(&to),
                "{what}: {to} is bound by the chart"
            );
        }
    }
    let subject =
        serde_json::json!([{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]);
    let crb = find(docs, "ClusterRoleBinding", NAME);
    assert_eq!(crb["roleRef"]["name"], NAME);
    assert_eq!(
        crb["subjects"], subject,
        "{what}: ClusterRoleBinding subjects"
    );
    for r in [role, wrole] {
        let name = r["metadata"]["name"].as_str().unwrap_or_default();
        let rb = find(docs, "RoleBinding", name);
        assert_eq!(rb["roleRef"]["name"], name);
        assert_eq!(
            rb["subjects"], subject,
            "{what}: RoleBinding {name} subjects"
        );
    }
}

/// Pod Security Standard "restricted", plus the workload identity label.
fn check_pod_security(docs: &[Value], what: &str, workload_identity: bool) {
    let dep = find(docs, "Deployment", NAME);
    let pod = &dep["spec"]["template"];
    let label = &pod["metadata"]["labels"]["azure.workload.identity/use"];
    if workload_identity {
        assert_eq!(label, "true", "{what}: workload identity pod label");
    } else {
        assert!(
            label.is_null(),
            "{what}: workload identity label without workload identity"
        );
    }
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], NAME);
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(spec[key].is_null() || spec[key] == false, "{what}: {key}");
    }
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"], true,
        "{what}: pod runAsNonRoot"
    );
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{what}"
    );
    assert_ne!(
        spec["securityContext"]["runAsUser"], 0,
        "{what}: runAsUser 0"
    );
    for v in spec["volumes"].as_array().expect("volumes") {
        assert!(v["hostPath"].is_null(), "{what}: hostPath volume {v}");
    }
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{what}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"], true,
            "{what}: readOnlyRootFilesystem"
        );
        assert_eq!(sc["runAsNonRoot"], true, "{what}: container runAsNonRoot");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}: drop ALL"
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{what}: no added capabilities"
        );
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{what}: privileged"
        );
        assert_eq!(c["args"], serde_json::json!(["run"]));
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{what}: memory limit"
        );
    }
}

/// Objects kube-sim serves are applied (server-side, like `kubectl apply --server-side`);
/// returns what was applied. Everything else must have passed kubernetes-validate.
async fn apply_served(
    docs: &[Value],
    file: &str,
    validated: &BTreeMap<(String, String, String), String>,
    create_namespace: bool,
) -> Vec<String> {
    let sim = serve(SimConfig::default()).await.expect("kube-sim starts");
    let client = sim.client().await.expect("kube-sim client");
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("kube-sim discovery");
    let mut served = Vec::new();
    let mut not_served = Vec::new();
    for d in docs {
        let (group, version) = match d["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .split_once('/')
        {
            Some((g, v)) => (g, v),
            None => ("", d["apiVersion"].as_str().unwrap_or_default()),
        };
        let kind = d["kind"].as_str().expect("kind");
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        // Discovery before anything is applied: CRDs (apiextensions) are served, custom kinds not.
        if discovery.resolve_gvk(&gvk).is_some() {
            served.push(d.clone());
        } else {
            not_served.push(d);
        }
    }
    for d in &not_served {
        let key = (
            file.to_string(),
            d["kind"].as_str().unwrap_or_default().to_string(),
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let verdict = validated.get(&key).map(String::as_str);
        let ok = verdict == Some("validated")
            || (["ServiceMonitor", "PrometheusRule"].contains(&key.1.as_str())
                && verdict == Some("skipped"));
        assert!(
            ok,
            "{key:?} is neither applied to kube-sim nor validated ({verdict:?})"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    if create_namespace {
        // `helm install --create-namespace`: the chart does not own its namespace.
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        std::fs::write(
            dir.path().join("00-namespace.yaml"),
            serde_norway::to_string(&ns).expect("yaml"),
        )
        .expect("write namespace");
    }
    let mut text = String::new();
    for d in &served {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(d).expect("yaml"));
    }
    std::fs::write(dir.path().join("10-objects.yaml"), text).expect("write objects");
    let applied = sim
        .apply_manifests(dir.path(), "packaging-test")
        .await
        .unwrap_or_else(|e| panic!("{file}: applying to kube-sim failed: {e:#}"));
    // Re-applying (an upgrade with the same values) succeeds too.
    let again = sim
        .apply_manifests(dir.path(), "packaging-test")
        .await
        .unwrap_or_else(|e| panic!("{file}: re-applying to kube-sim failed: {e:#}"));
    assert_eq!(applied, again);
    // The applied CRDs are now served.
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("kube-sim discovery");
    for kind in ["AccessGrant", "AccessPolicy"] {
        let gvk = kube::api::GroupVersionKind::gvk("accessgrant.io", "v1alpha1", kind);
        assert!(
            discovery.resolve_gvk(&gvk).is_some(),
            "{file}: {kind} not served after apply"
        );
    }
    // The ServiceAccount as stored, workload identity annotations included.
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client, NAMESPACE);
    let stored = sas
        .get(NAME)
        .await
        .expect("ServiceAccount stored in kube-sim");
    let rendered = &find(docs, "ServiceAccount", NAME)["metadata"]["annotations"];
    let stored = serde_json::to_value(stored.metadata.annotations).expect("json");
    assert_eq!(
        rendered, &stored,
        "{file}: ServiceAccount annotations as stored"
    );
    sim.shutdown().await;
    applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_and_kustomize_base_render_validate_and_apply() {
    let out = tempfile::tempdir().expect("tempdir");
    let script = root().join("scripts/packaging-check.sh");
    let out_dir = out.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(&script)
            .arg(&out_dir)
            .output()
    })
    .await
    .expect("join")
    .expect("run scripts/packaging-check.sh");
    assert!(
        run.status.success(),
        "scripts/packaging-check.sh failed ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let validated: BTreeMap<(String, String, String), String> =
        std::fs::read_to_string(out.path().join("validated.tsv"))
            .expect("validated.tsv")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 6, "validated.tsv line {l:?}");
                ((f[0].into(), f[2].into(), f[4].into()), f[5].into())
            })
            .collect();

    let default = docs(&out.path().join("helm-default.yaml"));
    let full = docs(&out.path().join("helm-full.yaml"));
    let kustomize = docs(&out.path().join("kustomize.yaml"));

    let client_secret = docs(&out.path().join("helm-client-secret.yaml"));
    let managed_identity = docs(&out.path().join("helm-managed-identity.yaml"));
    // CRDs are templates: rendered (so `helm upgrade` applies them) unless crds.enabled is off.
    let no_crds = docs(&out.path().join("helm-no-crds.yaml"));
    assert!(
        !kinds(&no_crds).contains("CustomResourceDefinition"),
        "crds.enabled=false renders no CRD"
    );
    assert!(kinds(&no_crds).contains("Deployment"));

    // Every environment variable the manifests set is one the operator reads (src/main.rs).
    let main_rs = std::fs::read_to_string(root().join("src/main.rs")).expect("src/main.rs");
    // The full values bring a cert-manager certificate; the others let the operator generate
    // its own.
    for (what, d, workload_identity, self_signed) in [
        ("helm default", &default, true, true),
        ("helm full", &full, true, false),
        ("helm client-secret", &client_secret, false, true),
        ("helm managed-identity", &managed_identity, false, true),
        ("kustomize", &kustomize, true, true),
    ] {
        check_rbac(d, what, self_signed);
        check_pod_security(d, what, workload_identity);
        let dep = find(d, "Deployment", NAME);
        for env in dep["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
        {
            let name = env["name"].as_str().expect("env name");
            assert!(
                matches!(name, "RUST_LOG" | "EXTRA")
                    || main_rs.contains(&format!("env = \"{name}\"")),
                "{what}: the operator reads no {name} (flags in src/main.rs)"
            );
        }
    }
    let env_of = |d: &[Value], name: &str| -> Value {
        find(d, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        env_of(&client_secret, "AZURE_CLIENT_SECRET")["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "accessgrant-azure", "key": "client-secret"})
    );
    assert_eq!(
        env_of(&managed_identity, "AZURE_USE_MANAGED_IDENTITY")["value"],
        "true"
    );
    for d in [&default, &full, &managed_identity] {
        assert!(
            env_of(d, "AZURE_CLIENT_SECRET").is_null(),
            "client secret outside clientSecret mode"
        );
    }

    // Defaults: the webhook (self-generated certificate: no CA bundle, no mounted Secret), no
    // optional objects.
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let wh = find(&default, kind, NAME);
        for w in wh["webhooks"].as_array().expect("webhooks") {
            assert!(w["clientConfig"]["caBundle"].is_null(), "{kind}: caBundle");
            assert_eq!(w["failurePolicy"], "Fail");
        }
    }
    let env_names = |d: &[Value]| -> BTreeSet<String> {
        find(d, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    };
    assert!(env_names(&default).contains("WEBHOOK_SECRET"));
    assert!(!env_names(&default).contains("WEBHOOK_CERT_DIR"));
    assert!(env_names(&full).contains("WEBHOOK_CERT_DIR"));
    assert!(!env_names(&full).contains("WEBHOOK_SECRET"));
    // High availability by default: two replicas, a rollout that starts the new pod before
    // stopping an old one, spread across nodes, a PodDisruptionBudget, and readiness meaning
    // "serves admission" (any replica, leader or not).
    let dep = &find(&default, "Deployment", NAME)["spec"];
    assert_eq!(dep["replicas"], 2, "default replicas");
    assert_eq!(dep["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(dep["strategy"]["rollingUpdate"]["maxSurge"], 1);
    let spread = &dep["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(
        spread["labelSelector"]["matchLabels"], dep["selector"]["matchLabels"],
        "the spread counts this release's pods"
    );
    assert_eq!(
        dep["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz/admission"
    );
    let pdb = find(&default, "PodDisruptionBudget", NAME);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["selector"]["matchLabels"]
    );
    // Overridable securityContext (OpenShift: no fixed UID) and explicit spread constraints.
    let full_pod = &find(&full, "Deployment", NAME)["spec"]["template"]["spec"];
    assert!(
        full_pod["securityContext"]["runAsUser"].is_null(),
        "{}",
        full_pod["securityContext"]
    );
    assert_eq!(full_pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        full_pod["topologySpreadConstraints"][0]["topologyKey"], "topology.kubernetes.io/zone",
        "explicit constraints replace the default spread"
    );
    assert_eq!(
        full_pod["topologySpreadConstraints"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let optional = ["ServiceMonitor", "NetworkPolicy", "PrometheusRule"];
    for kind in optional {
        assert!(
            !kinds(&default).contains(kind),
            "default values render a {kind}"
        );
        assert!(kinds(&full).contains(kind), "full values render no {kind}");
    }
    let svc = find(&full, "Service", NAME);
    let port_names: BTreeSet<&str> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(port_names, BTreeSet::from(["metrics", "webhook"]));
    // The ServiceMonitor has no upstream schema for kubernetes-validate: check it here.
    let sm = find(&full, "ServiceMonitor", NAME);
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
        "ServiceMonitor selects the Service"
    );
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "Service carries its selector label {k}"
        );
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    monitoring_objects(&default, &full, sm);
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let wh = find(&full, kind, NAME);
        for w in wh["webhooks"].as_array().expect("webhooks") {
            assert_eq!(w["clientConfig"]["service"]["name"], NAME);
            assert_eq!(w["clientConfig"]["service"]["namespace"], NAMESPACE);
            assert_eq!(w["sideEffects"], "None");
            let resources = if kind == "ValidatingWebhookConfiguration" {
                serde_json::json!(["accessgrants", "accessgrants/status"])
            } else {
                serde_json::json!(["accessgrants"])
            };
            assert_eq!(w["rules"][0]["resources"], resources);
        }
    }
    let sa = find(&full, "ServiceAccount", NAME);
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "11111111-2222-3333-4444-555555555555"
    );
    let sa = find(&kustomize, "ServiceAccount", NAME);
    assert!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string(),
        "kustomize ServiceAccount has the client-id annotation for overlays to set"
    );

    // The kustomize base holds the chart's default objects (plus its Namespace), the same RBAC
    // and the same pod.
    let ids = |d: &[Value]| -> BTreeSet<String> {
        d.iter()
            .filter(|o| o["kind"] != "Namespace")
            .map(|o| {
                format!(
                    "{}/{}/{}/{}",
                    o["apiVersion"], o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]
                )
            })
            .collect()
    };
    assert_eq!(
        ids(&kustomize),
        ids(&default),
        "kustomize base and chart defaults hold different objects"
    );
    let mut chart_spec = find(&default, "Deployment", NAME)["spec"].clone();
    if let Some(labels) = chart_spec["template"]["metadata"]["labels"].as_object_mut() {
        labels.remove("helm.sh/chart");
        labels.insert("app.kubernetes.io/managed-by".into(), "kustomize".into());
    }
    assert_same(
        &find(&kustomize, "Deployment", NAME)["spec"],
        &chart_spec,
        "kustomize Deployment differs from the chart's default",
    );
    assert_same(
        &find(&kustomize, "Service", NAME)["spec"],
        &find(&default, "Service", NAME)["spec"],
        "kustomize and chart Service",
    );
    for name in [
        "accessgrants.accessgrant.io",
        "accesspolicies.accessgrant.io",
    ] {
        // The chart's copy carries helm.sh/resource-policy: keep (crds.keep), and nothing else.
        let mut chart_crd = find(&default, "CustomResourceDefinition", name).clone();
        assert_eq!(
            chart_crd["metadata"]["annotations"],
            serde_json::json!({"helm.sh/resource-policy": "keep"}),
            "chart CRD {name}: kept on uninstall"
        );
        if let Some(m) = chart_crd["metadata"].as_object_mut() {
            m.remove("annotations");
        }
        assert_same(
            find(&kustomize, "CustomResourceDefinition", name),
            &chart_crd,
            &format!("kustomize and chart CRD {name}"),
        );
    }

    // The roles for people: the same in both, and the requester's (aggregated) rules never
    // reach grant status or policies.
    for name in USER_ROLES {
        let (k, c) = (
            find(&kustomize, "ClusterRole", name),
            find(&default, "ClusterRole", name),
        );
        assert_same(
            &k["rules"],
            &c["rules"],
            &format!("ClusterRole {name} rules"),
        );
        assert_same(
            &k["aggregationRule"],
            &c["aggregationRule"],
            &format!("ClusterRole {name} aggregationRule"),
        );
        for label in [
            "accessgrant.io/aggregate-to-requester",
            "accessgrant.io/aggregate-to-admin",
            "rbac.authorization.k8s.io/aggregate-to-view",
        ] {
            assert_eq!(
                k["metadata"]["labels"][label], c["metadata"]["labels"][label],
                "ClusterRole {name} label {label}"
            );
        }
    }
    let requester: BTreeSet<String> = default
        .iter()
        .filter(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["labels"]["accessgrant.io/aggregate-to-requester"] == "true"
        })
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .flat_map(move |res| verbs.clone().into_iter().map(move |v| format!("{res}:{v}")))
                .collect::<Vec<_>>()
        })
        .collect();
    let want: BTreeSet<String> = [
        "accessgrants:get",
        "accessgrants:list",
        "accessgrants:watch",
        "accessgrants:create",
        "accessgrants:update",
        "accessgrants:patch",
        "accessgrants:delete",
        "accesspolicies:get",
        "accesspolicies:list",
        "accesspolicies:watch",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(
        requester, want,
        "accessgrant-requester aggregates exactly these"
    );

    // Apply to kube-sim what it serves (today: CRDs, Namespace, ServiceAccount, webhook
    // configurations; not Deployments, Services, RBAC, NetworkPolicy, PDB, ServiceMonitor).
    let base = [
        "CustomResourceDefinition/accessgrants.accessgrant.io",
        "CustomResourceDefinition/accesspolicies.accessgrant.io",
        "Namespace/accessgrant-system",
        "ServiceAccount/accessgrant-operator",
    ];
    let webhooks = [
        "MutatingWebhookConfiguration/accessgrant-operator",
        "ValidatingWebhookConfiguration/accessgrant-operator",
    ];
    for (file, d, create_ns, want) in [
        (
            "helm-default.yaml",
            &default,
            true,
            [&base[..], &webhooks[..]].concat(),
        ),
        (
            "helm-full.yaml",
            &full,
            true,
            [&base[..], &webhooks[..]].concat(),
        ),
        (
            "kustomize.yaml",
            &kustomize,
            false,
            [&base[..], &webhooks[..]].concat(),
        ),
    ] {
        let applied = apply_served(d, file, &validated, create_ns).await;
        eprintln!("{file}: applied to kube-sim: {applied:?}");
        for w in want {
            assert!(
                applied.iter().any(|a| a == w),
                "{file}: {w} not applied to kube-sim ({applied:?})"
            );
        }
    }
}

/// Runs scripts/helm-upgrade.py (Helm's Go SDK) with the packaging virtualenv.
async fn helm(action: &str, kubeconfig: &Path, chart: &Path) {
    let python = root().join("target/packaging-venv/bin/python");
    let (script, kubeconfig, chart) = (
        root().join("scripts/helm-upgrade.py"),
        kubeconfig.to_path_buf(),
        chart.to_path_buf(),
    );
    let action = action.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(&action)
            .arg(kubeconfig)
            .arg(chart)
            .output()
    })
    .await
    .expect("join")
    .expect("run helm-upgrade.py");
    assert!(
        out.status.success(),
        "helm: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `helm upgrade` from the previous chart version (0.1.0, which shipped the CRDs in `crds/`,
/// installed once and never upgraded) to this one (CRDs as templates) updates the CRDs, with
/// Helm's own SDK against kube-sim. The one manual step is the documented adoption of CRDs
/// that Helm installed without release metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_the_previous_chart_updates_the_crds() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    // The packaging virtualenv (helm-python-sdk), as the render test makes it.
    let out = tempfile::tempdir().expect("tempdir");
    let made = std::process::Command::new("bash")
        .arg(root().join("scripts/packaging-check.sh"))
        .arg(out.path())
        .output()
        .expect("packaging-check.sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let sim = serve(SimConfig {
        kubeconfig: Some(kubeconfig.clone()),
        ..Default::default()
    })
    .await
    .expect("kube-sim");
    let crds: Api<CustomResourceDefinition> = Api::all(sim.client().await.expect("client"));
    let categories =
        |c: &CustomResourceDefinition| c.spec.names.categories.clone().unwrap_or_default();

    helm(
        "install",
        &kubeconfig,
        &root().join("tests/fixtures/charts/accessgrant-operator-0.1.0.tgz"),
    )
    .await;
    let old = crds
        .get("accessgrants.accessgrant.io")
        .await
        .expect("CRD from 0.1.0");
    assert!(
        categories(&old).is_empty(),
        "0.1.0's CRD has no categories yet"
    );

    // Adopt the CRDs Helm installed from crds/ (chart README), then upgrade.
    for name in [
        "accessgrants.accessgrant.io",
        "accesspolicies.accessgrant.io",
    ] {
        crds.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "accessgrant-operator",
                                "meta.helm.sh/release-namespace": "accessgrant-system"}}})),
        )
        .await
        .expect("adopt");
    }
    helm(
        "upgrade",
        &kubeconfig,
        &root().join("charts/accessgrant-operator"),
    )
    .await;
    for name in [
        "accessgrants.accessgrant.io",
        "accesspolicies.accessgrant.io",
    ] {
        let new = crds.get(name).await.expect("CRD after upgrade");
        assert_eq!(
            categories(&new),
            vec!["accessgrant".to_string()],
            "{name} updated by helm upgrade"
        );
        assert_eq!(
            new.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("helm.sh/resource-policy"))
                .map(String::as_str),
            Some("keep"),
            "{name} kept on uninstall"
        );
    }
    sim.shutdown().await;
}

/// The metrics token, PrometheusRule and dashboard: off by default; with every option on, the
/// rule is the promtool-tested file with the chart's overrides, the dashboard is the file, and
/// the token Secret reaches both the operator and the ServiceMonitor.
fn monitoring_objects(
    default: &[serde_json::Value],
    full: &[serde_json::Value],
    sm: &serde_json::Value,
) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/accessgrant-operator/files");
    let dashboard_name = format!("{NAME}-dashboard");
    assert!(
        !default
            .iter()
            .any(|d| d["metadata"]["name"] == dashboard_name.as_str()),
        "default values render the dashboard"
    );
    let cm = find(full, "ConfigMap", &dashboard_name);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Platform");
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboard.json")).expect("dashboard.json"),
    )
    .expect("dashboard.json is JSON");
    let rendered: serde_json::Value = serde_json::from_str(
        cm["data"]["accessgrant-operator.json"]
            .as_str()
            .expect("dashboard data"),
    )
    .expect("the rendered dashboard is JSON");
    assert_eq!(rendered, file, "the ConfigMap holds files/dashboard.json");

    let rule = find(full, "PrometheusRule", NAME);
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let file: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("prometheus-rules.yaml")).expect("rules file"),
    )
    .expect("rules file is YAML");
    let want = file["groups"][0]["rules"].as_array().expect("rules");
    let got = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rendered rules");
    assert_eq!(got.len(), want.len(), "every alert rendered");
    for (w, g) in want.iter().zip(got) {
        let name = w["alert"].as_str().expect("alert name");
        assert_eq!(g["alert"], w["alert"]);
        assert_eq!(g["labels"]["team"], "platform", "{name}: additional label");
        assert_eq!(
            g["labels"]["severity"], w["labels"]["severity"],
            "{name}: own labels kept"
        );
        let anchor = name.to_ascii_lowercase();
        assert_eq!(
            g["annotations"]["runbook_url"],
            format!("https://runbooks.example.com/accessgrant#{anchor}").as_str(),
            "{name}: runbook base"
        );
        assert_eq!(
            g["annotations"]["description"],
            w["annotations"]["description"]
        );
        match name {
            "AccessGrantThrottled" => assert_eq!(g["for"], "30m", "for override"),
            "AccessGrantRevokingStuck" => {
                assert!(
                    g["expr"].as_str().is_some_and(|e| e.ends_with("> 1200")),
                    "threshold from revokingStuckMinutes: {}",
                    g["expr"]
                );
                assert_eq!(
                    g["annotations"]["summary"],
                    "A grant has waited more than 20 minutes for its access to be taken away"
                );
            }
            _ => {
                assert_eq!(g["expr"], w["expr"], "{name}: expression as tested");
                assert_eq!(g["for"], w["for"], "{name}: for as tested");
            }
        }
    }

    let auth = &sm["spec"]["endpoints"][0]["authorization"];
    assert_eq!(auth["type"], "Bearer");
    assert_eq!(auth["credentials"]["name"], "accessgrant-metrics-token");
    assert_eq!(auth["credentials"]["key"], "token");
    let deploy = find(full, "Deployment", NAME);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "METRICS_BEARER_TOKEN_FILE"
            && e["value"] == "/etc/accessgrant/metrics-token/token"),
        "the operator reads the mounted token"
    );
    assert!(
        deploy["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == "accessgrant-metrics-token"),
        "the token Secret is mounted"
    );
    // Notifications: the Secret with the file and the keys, mounted where the file says.
    assert!(
        env.iter().any(|e| e["name"] == "NOTIFICATIONS"
            && e["value"] == "/etc/accessgrant/notify/notifications.yaml"),
        "the operator reads the mounted notifications file"
    );
    assert!(
        env.iter()
            .any(|e| e["name"] == "NOTIFICATIONS_REPLAY" && e["value"] == "PT30M")
    );
    assert!(
        deploy["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == "accessgrant-notifications"),
        "the notifications Secret is mounted"
    );
    let default_deploy = find(default, "Deployment", NAME);
    assert!(
        !default_deploy["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "NOTIFICATIONS"),
        "no notifications by default"
    );
    // The log level endpoint is never on a port the Service exposes.
    assert!(
        !env.iter().any(|e| e["name"] == "LOGLEVEL_ADDR"),
        "LOGLEVEL_ADDR stays the binary's localhost default"
    );
}
