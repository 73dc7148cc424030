//! End to end: the operator binary against kube-sim and azure-sim, crashes, leader
//! election, GitOps health checks and packaging.

mod alerts;
mod crash;
mod e2e;
mod e2e_admission;
mod e2e_edits;
mod e2e_ha;
mod e2e_ledger;
mod e2e_policy_guard;
mod e2e_rbac;
#[path = "../e2e_support/mod.rs"]
mod e2e_support;
mod gitops_health;
mod leader;
mod notify;
mod packaging;
mod sandbox;
mod storm;
#[path = "../wait/mod.rs"]
mod wait;

/// Tests that run several operators at once (two replicas, two sandboxes, a throttling storm, a
/// SIGKILL soak) hold this, so that no two of them share the machine at the same time: each
/// ran alone in a binary of its own before the e2e tests became one binary, and two of them
/// together on two cores starved a replica's start past its 60 s wait.
pub async fn one_heavy_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
