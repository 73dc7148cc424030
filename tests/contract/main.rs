//! Contract tests: the ARM client and Microsoft's examples against azure-sim over HTTP.

mod azure_client;
mod azure_contract;
#[path = "../wait/mod.rs"]
mod wait;
