#!/usr/bin/env bash
# Renders and checks the deployment packaging:
#   - the Helm chart (charts/accessgrant-operator) with Helm's own Go SDK (PyPI helm-python-sdk,
#     which bundles libhelm_c: no helm binary, nothing downloaded at run time): helm lint
#     (strict), values.schema.json, renders with default values, every option on, and each
#     Azure identity mode;
#   - the kustomize base (deploy/) with `kubectl kustomize`;
#   - every rendered object with `kubernetes-validate --strict` against Kubernetes
#     $KUBERNETES_VERSION. Kinds with no upstream schema (the ServiceMonitor and PrometheusRule CRD kinds of
#     prometheus-operator) are listed in SKIP_KINDS, reported as skipped, and checked by
#     tests/e2e/packaging.rs instead; any other "couldn't find schema" fails the run.
#
# usage: scripts/packaging-check.sh OUT_DIR
# OUT_DIR receives helm-default.yaml, helm-full.yaml (every option on), helm-client-secret.yaml,
# helm-managed-identity.yaml and helm-no-crds.yaml (`crds.enabled: false`; the CRDs are
# templates, so `helm upgrade` updates them),
# kustomize.yaml, helm-lint.json and validated.tsv (file, apiVersion, kind, namespace, name,
# "validated" or "skipped"). tests/e2e/packaging.rs runs this script.
#
# Needs python3 (with venv) and network access to PyPI on first use; the virtualenv lives in
# target/packaging-venv and is reused. kubectl: $KUBECTL, else kubectl on PATH, else Debian's
# kubernetes-client (sim/tests/fixtures/kube/ensure-kubectl.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: $0 OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.37.0}"
HELM_PYTHON_SDK_VERSION="0.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"
RELEASE="accessgrant-operator"
NAMESPACE="accessgrant-system"
VENV="$ROOT/target/packaging-venv"

mkdir -p "$ROOT/target"
# One installer at a time (parallel test runs share the virtualenv).
exec 9>"$ROOT/target/packaging-venv.lock"
flock 9
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >&2 || {
    echo "packaging-check: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
want="helm-python-sdk==$HELM_PYTHON_SDK_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
if [ "$(cat "$VENV/.installed" 2>/dev/null || true)" != "$want" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $want >&2
  echo "$want" >"$VENV/.installed"
fi
flock -u 9

KUBECTL_BIN="$(bash "$ROOT/sim/tests/fixtures/kube/ensure-kubectl.sh")"
"$KUBECTL_BIN" kustomize "$ROOT/deploy" >"$OUT/kustomize.body.yaml"

"$VENV/bin/python" - "$ROOT" "$OUT" "$RELEASE" "$NAMESPACE" "$KUBERNETES_VERSION" <<'PY'
import json
import os
import re
import subprocess
import sys

import helm_python as helm

root, out, release, namespace, kube_version = sys.argv[1:6]
chart_dir = os.path.join(root, "charts", "accessgrant-operator")
venv_bin = os.path.dirname(sys.executable)
SKIP_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
              ("monitoring.coreos.com/v1", "PrometheusRule")}

# Every option on: webhook, ServiceMonitor, NetworkPolicy, PDB, probes, and non-default
# identity settings, so every template branch that a user can reach renders and validates.
FULL = {
    "replicaCount": 2,
    "azure": {
        "auth": "workloadIdentity",
        "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "clientId": "11111111-2222-3333-4444-555555555555",
        "extraCA": {"configMapName": "azure-ca"},
    },
    "operator": {"logLevel": "info,accessgrant_operator=debug",
                 "extraEnv": [{"name": "EXTRA", "value": "1"}]},
    "probes": {"enabled": True},
    "webhook": {"enabled": True, "caBundle": "Y2E=",
                "certManagerCertificate": "accessgrant-system/accessgrant-operator-webhook"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "metrics": {"bearerTokenSecret": {"name": "accessgrant-metrics-token"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"},
                       "additionalRuleLabels": {"team": "platform"},
                       "for": {"AccessGrantThrottled": "30m"},
                       "revokingStuckMinutes": 20,
                       "runbookBaseUrl": "https://runbooks.example.com/accessgrant/"},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}},
    "notifications": {"secretName": "accessgrant-notifications", "replay": "PT30M"},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}],
    },
    "podDisruptionBudget": {"enabled": True},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    # OpenShift's restricted-v2 assigns the UID: no fixed runAsUser/runAsGroup/fsGroup (null
    # removes a default key, as with `--set podSecurityContext.runAsUser=null`).
    "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "DoNotSchedule",
                                   "labelSelector": {"matchLabels": {
                                       "app.kubernetes.io/name": "accessgrant-operator"}}}],
}


# The other identity modes render different env and labels: lint and validate them too.
CLIENT_SECRET = {
    "azure": {"auth": "clientSecret", "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
              "clientId": "11111111-2222-3333-4444-555555555555",
              "clientSecret": {"existingSecret": "accessgrant-azure"}},
}
MANAGED_IDENTITY = {"azure": {"auth": "managedIdentity"}}
# CRDs managed elsewhere (e.g. applied by a platform pipeline): the chart renders none.
NO_CRDS = {"crds": {"enabled": False}}
VALUE_SETS = (("default", None), ("full", FULL), ("client-secret", CLIENT_SECRET),
              ("managed-identity", MANAGED_IDENTITY), ("no-crds", NO_CRDS))


def fail(msg):
    sys.stderr.write(f"packaging-check: {msg}\n")
    sys.exit(1)


# helm lint (strict: warnings fail too), once per value set.
lint_reports = {}
for label, values in VALUE_SETS:
    report = helm.lint(chart_dir, values, strict=True, namespace=namespace,
                       kube_version=f"v{kube_version}")
    lint_reports[label] = report
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    if bad:
        fail(f"helm lint ({label} values): {json.dumps(bad, indent=1)}")
with open(os.path.join(out, "helm-lint.json"), "w") as f:
    json.dump(lint_reports, f, indent=1)


def split_docs(text):
    """Non-empty YAML documents (comments-only documents dropped)."""
    docs = []
    for doc in re.split(r"^---[ \t]*$", text, flags=re.M):
        body = "\n".join(line for line in doc.splitlines()
                         if line.strip() and not line.lstrip().startswith("#"))
        if body.strip():
            docs.append(doc.strip("\n") + "\n")
    return docs


with helm.Chart.load(chart_dir) as chart:
    # values.schema.json must reject mistakes, not only accept the defaults.
    for bad in ({"azure": {"auth": "password"}}, {"webhook": {"enabeld": True}},
                {"operator": {"driftCheckInterval": "5m"}},
                {"azure": {"auth": "clientSecret", "clientId": "x", "tenantId": "y"}}):
        try:
            chart.validate_schema(bad)
        except helm.HelmError:
            continue
        fail(f"values.schema.json accepted {bad}")
    crd_docs = []
    for crd in sorted(chart.crds, key=lambda c: c["name"]):
        crd_docs += split_docs(crd["data"])
    for label, values in VALUE_SETS:
        chart.validate_schema(values)
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
        docs = list(crd_docs)
        for path in sorted(rendered):
            if path.endswith("NOTES.txt"):
                continue
            docs += split_docs(rendered[path])
        with open(os.path.join(out, f"helm-{label}.yaml"), "w") as f:
            f.write("".join(f"---\n{d}" for d in docs))

with open(os.path.join(out, "kustomize.body.yaml")) as f:
    kdocs = split_docs(f.read())
with open(os.path.join(out, "kustomize.yaml"), "w") as f:
    f.write("".join(f"---\n{d}" for d in kdocs))
os.remove(os.path.join(out, "kustomize.body.yaml"))

# kubernetes-validate --strict, one document per file so every verdict names its object.
rows = []
workdir = os.path.join(out, "docs")
os.makedirs(workdir, exist_ok=True)
for name in [f"helm-{label}.yaml" for label, _ in VALUE_SETS] + ["kustomize.yaml"]:
    with open(os.path.join(out, name)) as f:
        docs = split_docs(f.read())
    if not docs:
        fail(f"{name}: nothing rendered")
    to_check = []
    for i, doc in enumerate(docs):
        api = re.search(r"^apiVersion:\s*(\S+)", doc, re.M)
        kind = re.search(r"^kind:\s*(\S+)", doc, re.M)
        meta = re.search(r"^metadata:\n((?:[ ].*\n)*)", doc, re.M)
        if not (api and kind and meta):
            fail(f"{name} document {i} has no apiVersion/kind/metadata:\n{doc}")
        obj_name = re.search(r"^  name:\s*(\S+)", meta.group(1), re.M)
        obj_ns = re.search(r"^  namespace:\s*(\S+)", meta.group(1), re.M)
        key = (api.group(1), kind.group(1))
        row = [name, key[0], key[1], obj_ns.group(1) if obj_ns else "",
               obj_name.group(1).strip('"') if obj_name else ""]
        if key in SKIP_KINDS:
            rows.append(row + ["skipped"])
            continue
        path = os.path.join(workdir, f"{name[:-5]}-{i:02}.yaml")
        with open(path, "w") as f:
            f.write(doc)
        to_check.append(path)
        rows.append(row + ["validated"])
    proc = subprocess.run(
        [os.path.join(venv_bin, "kubernetes-validate"), "--strict", "--kubernetes-version",
         kube_version, *to_check],
        capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    # kubernetes-validate only warns (exit 0) about kinds it has no schema for: fail on those.
    problems = [l for l in lines if not l.startswith("INFO ")]
    passed = [l for l in lines if l.startswith("INFO ") and " passed for resource " in l]
    if proc.returncode != 0 or problems or len(passed) != len(to_check):
        fail(f"kubernetes-validate --strict ({name}, Kubernetes {kube_version}):\n"
             + "\n".join(lines))
    print(f"{name}: {len(passed)} objects valid for Kubernetes {kube_version}"
          f" ({len(docs) - len(to_check)} skipped: no upstream schema)", file=sys.stderr)

with open(os.path.join(out, "validated.tsv"), "w") as f:
    for row in rows:
        f.write("\t".join(row) + "\n")
PY
