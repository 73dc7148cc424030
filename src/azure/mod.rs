//! The Azure door: ARM's wire format (paths, api-versions, bodies, status words), the
//! authenticated and throttled ARM client, and error classification. Everything here turns
//! ARM's answers into the planner's views (`lifecycle::types`) before the planner sees them.

pub mod auth;
pub mod client;
pub mod error;
mod http;
pub mod models;
pub mod ops;
