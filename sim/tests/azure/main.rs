//! azure-sim over HTTP: JIT, PIM, tokens, throttling, robustness and Microsoft's examples.

mod azure_cli;
mod azure_contract;
mod azure_jit;
mod azure_pim;
mod azure_robustness;
#[path = "../azure_support/mod.rs"]
mod azure_support;
mod azure_throttle;
mod azure_token;
