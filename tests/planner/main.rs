//! Pure tests, no network: the planner through the executor and the Azure model (with
//! crashes between steps), validation, AccessPolicy, admission decisions, CEL rules, the
//! layer rule, generated CRDs and the metrics registry.

mod admission;
mod architecture;
mod cel_rules;
mod crds;
mod fuzz_props;
mod guard_validate;
mod lifecycle;
mod lifecycle_crash;
mod lifecycle_props;
mod ports_props;
#[path = "../support/mod.rs"]
mod support;
mod telemetry;
