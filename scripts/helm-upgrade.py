"""helm install or upgrade with Helm's own Go SDK (PyPI helm-python-sdk, the packaging
virtualenv of scripts/packaging-check.sh) against the cluster of a kubeconfig.

usage: python helm-upgrade.py install|upgrade KUBECONFIG CHART   (a directory or a .tgz)
Prints the release's revision and chart version as JSON. tests/e2e/packaging.rs runs it against
kube-sim to show that `helm upgrade` from the previous chart version updates the CRDs.
"""
import json
import sys

import helm_python as helm

action, kubeconfig, chart_ref = sys.argv[1:4]
NAMESPACE = "accessgrant-system"
RELEASE = "accessgrant-operator"
VALUES = {"azure": {"clientId": "11111111-2222-3333-4444-555555555555",
                    "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47"}}

cfg = helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)
if chart_ref.endswith(".tgz"):
    with open(chart_ref, "rb") as f:
        chart = helm.Chart.load_archive(f.read())
else:
    chart = helm.Chart.load(chart_ref)
if action == "install":
    cfg.install(chart, RELEASE, VALUES, namespace=NAMESPACE, create_namespace=True, timeout=60)
elif action == "upgrade":
    cfg.upgrade(chart, RELEASE, VALUES, namespace=NAMESPACE, timeout=60)
else:
    sys.exit(f"unknown action {action}")
status = cfg.status(RELEASE)
print(json.dumps({"chart": chart.version, "status": str(status)[:200]}))
