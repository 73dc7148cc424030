//! accessgrant-operator: turns declarative `AccessGrant` resources into temporary Azure access
//! (Defender for Cloud JIT, PIM role assignment schedule requests) and takes it away again.
//!
//! Decisions are pure (`validate`, `guard`, `lifecycle::plan`); I/O is thin.
#![forbid(unsafe_code)]

pub mod api;
pub mod arm_id;
pub mod azure;
pub mod clock;
pub mod constants;
pub mod controller;
pub mod crashpoint;
pub mod executor;
pub mod guard;
pub mod leader;
pub mod lifecycle;
pub mod notify;
pub mod stamp;
pub mod telemetry;
pub mod validate;
pub mod webhook;
