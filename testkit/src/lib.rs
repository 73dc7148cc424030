//! Dev-only test kit for accessgrant-operator: an in-memory model of Azure's JIT and PIM
//! behaviour (`model`), and doors through which the operator's own executor
//! (`accessgrant_operator::executor`) runs against it, with crashes between steps.

pub mod model;

pub use model::*;
