//! A typed view of azure-sim's `GET /_sim/state`, for tests and benches that check what Azure
//! holds (open JIT ports, PIM requests and active assignments) without walking JSON by hand.
//!
//! Only the fields those checks read are here; everything else in the dump is ignored.

use serde::Deserialize;

/// `GET /_sim/state`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SimState {
    /// azure-sim's clock when the state was taken (RFC 3339).
    pub time: String,
    pub jit_policies: Vec<JitPolicy>,
    pub role_assignment_schedule_requests: Vec<PimRequest>,
    /// Active assignments only (expired ones are dropped before the dump).
    pub role_assignment_schedule_instances: Vec<PimInstance>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JitPolicy {
    pub id: String,
    pub name: String,
    pub properties: JitPolicyProperties,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JitPolicyProperties {
    pub requests: Vec<JitRequest>,
}

/// One initiate request a JIT policy remembers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JitRequest {
    pub justification: Option<String>,
    pub start_time_utc: String,
    pub requestor: Option<String>,
    pub virtual_machines: Vec<JitRequestVm>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JitRequestVm {
    pub id: String,
    pub ports: Vec<JitRequestPort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JitRequestPort {
    pub number: u16,
    pub status: String,
    pub status_reason: Option<String>,
    pub end_time_utc: Option<String>,
    pub allowed_source_address_prefix: Option<String>,
    pub allowed_source_address_prefixes: Vec<String>,
}

impl JitRequestPort {
    /// The port is open (or opening) for this request.
    pub fn open(&self) -> bool {
        matches!(self.status.as_str(), "Initiated" | "Initiating")
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PimRequest {
    pub name: String,
    pub properties: PimRequestProperties,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PimRequestProperties {
    pub principal_id: String,
    pub requestor_id: Option<String>,
    pub role_definition_id: String,
    pub scope: String,
    pub request_type: String,
    pub status: String,
    pub justification: Option<String>,
}

/// An active role assignment.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PimInstance {
    pub name: String,
    pub properties: PimInstanceProperties,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PimInstanceProperties {
    pub principal_id: String,
    pub role_definition_id: String,
    pub scope: String,
    pub assignment_type: Option<String>,
    pub end_date_time: Option<String>,
}

impl SimState {
    /// Every JIT request with its policy.
    pub fn jit_requests(&self) -> impl Iterator<Item = (&JitPolicy, &JitRequest)> {
        self.jit_policies
            .iter()
            .flat_map(|p| p.properties.requests.iter().map(move |r| (p, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::state::State;
    use crate::azure::world::World;

    #[test]
    fn the_view_reads_the_dump_azure_sim_serves() {
        let world = World::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("worlds/sandbox.yaml"),
        )
        .expect("world");
        let now = crate::azure::clock::now();
        let state = State::new(world, now).expect("state");
        let dump = state.dump(now);
        let view: SimState = serde_json::from_value(dump.clone()).expect("typed view");
        assert_eq!(view.time, dump["time"].as_str().unwrap_or_default());
        assert_eq!(
            view.jit_policies.len(),
            dump["jitPolicies"].as_array().map(Vec::len).unwrap_or(0)
        );
        assert!(
            !view.jit_policies.is_empty(),
            "the sandbox world has JIT policies"
        );
        assert_eq!(
            view.role_assignment_schedule_instances.len(),
            dump["roleAssignmentScheduleInstances"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
        );
    }
}
