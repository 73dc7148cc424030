//! Azure: ARM ids (pure), error classification (pure), and later the ARM client.

pub mod error;
pub mod ids;
