//! Shared fixtures for planner tests: grants, policies, and a world that drives reconciles
//! against the in-memory Azure model with an explicit clock.
#![allow(dead_code)]

use accessgrant_operator::api::*;
use accessgrant_operator::lifecycle::{
    GrantMeta, JitPolicyPort, JitPolicyView, JitPolicyVm, PlannerConfig,
};
use accessgrant_testkit::{AzureModel, ModelGrant, ReconcileReport, reconcile};
use chrono::{DateTime, Duration, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";
pub const PRINCIPAL: &str = "a3bb8764-cb92-4276-9d2a-ca1e895e55ea";
pub const ROLE_GUID: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0)
        .single()
        .expect("valid")
}

pub fn scope() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg1")
}

pub fn role() -> String {
    format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ROLE_GUID}")
}

pub fn vm_id(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myRg1/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

pub fn pim_spec(mode: PimMode) -> AccessGrantSpec {
    AccessGrantSpec {
        justification: Some("INC-1 investigate".into()),
        duration: IsoDuration::new("PT1H"),
        pim: Some(PimTarget {
            mode,
            scope: scope(),
            role_definition_id: role(),
            principal_id: PRINCIPAL.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn jit_spec() -> AccessGrantSpec {
    AccessGrantSpec {
        justification: Some("INC-2 debug".into()),
        duration: IsoDuration::new("PT1H"),
        jit: Some(JitTarget {
            subscription_id: SUB.into(),
            resource_group: "myRg1".into(),
            location: "westeurope".into(),
            policy_name: "default".into(),
            virtual_machines: vec![JitVirtualMachine {
                id: vm_id("vm1"),
                ports: vec![JitPort {
                    number: 22,
                    allowed_source_address_prefix: Some("10.0.0.7".into()),
                    allowed_source_address_prefixes: None,
                }],
            }],
        }),
        ..Default::default()
    }
}

pub fn allow_all_policy() -> AccessPolicy {
    AccessPolicy::new(
        "allow",
        AccessPolicySpec {
            namespace_selector: LabelSelector::default(),
            jit: Some(JitRules {
                virtual_machines: vec![format!(
                    "/subscriptions/{SUB}/resourceGroups/myRg1/providers/Microsoft.Compute/virtualMachines/*"
                )],
                ports: vec![22, 3389],
                source_prefixes: vec!["10.0.0.0/8".into()],
            }),
            pim: Some(PimRules {
                scopes: vec![format!("/subscriptions/{SUB}")],
                role_definition_ids: vec![role()],
                principals: vec![PRINCIPAL.into()],
                modes: vec![PimMode::Activate, PimMode::Assign],
                service_accounts: None,
            }),
            max_duration: Some(IsoDuration::new("PT8H")),
            renewal: Some(RenewalRules {
                max_total_duration: IsoDuration::new("P2D"),
            }),
            require_justification: false,
            require_ticket: false,
            require_verified_requester: false,
            break_glass: None,
        },
    )
}

pub fn jit_policy_view() -> JitPolicyView {
    JitPolicyView {
        vms: vec![JitPolicyVm {
            id: vm_id("vm1"),
            ports: vec![
                JitPolicyPort {
                    number: 22,
                    allowed_prefixes: vec!["*".into()],
                    max_duration: Some(Duration::hours(3)),
                },
                JitPolicyPort {
                    number: 3389,
                    allowed_prefixes: vec!["10.0.0.0/8".into()],
                    max_duration: Some(Duration::hours(3)),
                },
            ],
        }],
        requests: vec![],
    }
}

pub struct World {
    pub model: AzureModel,
    pub grant: ModelGrant,
    pub policies: Vec<AccessPolicy>,
    pub now: DateTime<Utc>,
    pub config: PlannerConfig,
    pub covered_by_other: bool,
    pub last: ReconcileReport,
}

impl World {
    pub fn new(spec: AccessGrantSpec) -> Self {
        let mut model = AzureModel::new();
        model.add_eligibility(&scope(), &role(), PRINCIPAL);
        model.add_jit_policy(SUB, "myRg1", "westeurope", "default", jit_policy_view());
        World {
            model,
            grant: ModelGrant {
                meta: GrantMeta {
                    uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
                    namespace: "team-a".into(),
                    name: "g1".into(),
                    generation: 1,
                    deleting: false,
                    has_finalizer: false,
                    requested_by: Some("alice".into()),
                    ..Default::default()
                },
                spec,
                status: AccessGrantStatus::default(),
                gone: false,
                created: Some(t0()),
            },
            policies: vec![allow_all_policy()],
            now: t0(),
            config: PlannerConfig::default(),
            covered_by_other: false,
            last: ReconcileReport::default(),
        }
    }

    /// One reconcile at the current time; panics on ordering violations.
    pub fn reconcile(&mut self) -> &ReconcileReport {
        self.last = reconcile(
            &mut self.grant,
            &mut self.model,
            &self.policies,
            &BTreeMap::new(),
            self.covered_by_other,
            self.now,
            &self.config,
            None,
        );
        assert!(
            self.last.violations.is_empty(),
            "violations: {:?}",
            self.last.violations
        );
        if let Some(w) = self.last.wake_at {
            assert!(w > self.now, "wake_at {w} is not after now {}", self.now);
        }
        &self.last
    }

    /// Advances the clock to the planner's wake time (or by `max`), then reconciles.
    pub fn wake(&mut self, max: Duration) -> &ReconcileReport {
        let to = self
            .last
            .wake_at
            .unwrap_or(self.now + max)
            .min(self.now + max);
        self.now = to.max(self.now);
        self.reconcile()
    }

    pub fn advance(&mut self, d: Duration) -> &ReconcileReport {
        self.now += d;
        self.reconcile()
    }

    pub fn phase(&self) -> Phase {
        self.grant.status.phase
    }

    pub fn reason(&self) -> String {
        self.grant.status.reason.clone().unwrap_or_default()
    }

    pub fn writes(&self) -> Vec<String> {
        self.model
            .log
            .iter()
            .filter(|w| w.applied)
            .map(|w| w.kind.clone())
            .collect()
    }

    pub fn edit_spec(&mut self, f: impl FnOnce(&mut AccessGrantSpec)) {
        f(&mut self.grant.spec);
        self.grant.meta.generation += 1;
    }

    pub fn delete(&mut self) {
        self.grant.meta.deleting = true;
    }
}
