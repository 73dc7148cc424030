//! End to end: the operator binary against kube-sim and azure-sim, crashes, leader
//! election, GitOps health checks and packaging.

mod crash;
mod e2e;
mod e2e_admission;
mod e2e_ha;
mod e2e_policy_guard;
mod e2e_rbac;
#[path = "../e2e_support/mod.rs"]
mod e2e_support;
mod gitops_health;
mod leader;
mod packaging;
mod sandbox;
mod storm;
#[path = "../wait/mod.rs"]
mod wait;
