//! Azure: ARM ids (pure), error classification (pure), and later the ARM client.

pub mod client;
pub mod error;
pub mod ids;
pub mod models;
pub mod ops;
