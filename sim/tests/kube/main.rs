//! kube-sim over HTTP: the API, watches, admission, RBAC, built-ins, kubectl and robustness.

mod kube_admission;
mod kube_api;
mod kube_builtins;
#[path = "../kube_common/mod.rs"]
mod kube_common;
mod kube_kubectl;
mod kube_operator_flow;
mod kube_rbac;
mod kube_robustness;
mod kube_ssa_removal;
mod kube_watch;
