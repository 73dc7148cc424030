//! Simulators for accessgrant-operator's tests and sandbox.
//!
//! - [`azure`]: azure-sim, an HTTPS server speaking the ARM (Defender JIT, PIM) and Entra token
//!   contracts the operator uses.
//! - [`kube`]: kube-sim, an HTTP server speaking the subset of the Kubernetes API the operator
//!   and kubectl use.
//! - [`examples`]: where Microsoft's ARM examples (the contract fixtures) are found.
//! - [`harness`]: what every launcher of the operator shares (identity, command line,
//!   readiness, metrics).
//! - [`sandbox`]: both simulators and the operator, with the examples applied.
//! - [`service`]: a Service stand-in (a TCP proxy to the ready replicas).
#![forbid(unsafe_code)]

pub mod azure;
pub mod examples;
pub mod harness;
pub mod kube;
pub mod sandbox;
pub mod service;

/// Resolves when a simulator's server task ends (and forgets it); pending for ever without one.
async fn task_ended(task: &mut Option<tokio::task::JoinHandle<()>>) {
    match task.as_mut() {
        Some(t) => {
            let _ = t.await;
            *task = None;
        }
        None => std::future::pending().await,
    }
}
