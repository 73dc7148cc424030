//! Planner decisions per second on one core (goal: at least 20,000/s).
//! Run: `cargo bench --bench planner`. Prints figures; asserts nothing about time.

use accessgrant_operator::api::*;
use accessgrant_operator::guard::{GrantContext, guard};
use accessgrant_operator::lifecycle::{
    GrantMeta, JitPolicyPort, JitPolicyView, JitPolicyVm, Observed, PlanInput, PlannerConfig, plan,
};
use accessgrant_operator::validate::validate;
use accessgrant_testkit::{AzureModel, ModelGrant, reconcile};
use chrono::{Duration, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";
const PRINCIPAL: &str = "a3bb8764-cb92-4276-9d2a-ca1e895e55ea";

fn role() -> String {
    format!(
        "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    )
}

fn specs() -> Vec<AccessGrantSpec> {
    let pim = |mode| AccessGrantSpec {
        justification: Some("bench".into()),
        duration: IsoDuration::new("PT1H"),
        pim: Some(PimTarget {
            mode,
            scope: format!("/subscriptions/{SUB}/resourceGroups/rg1"),
            role_definition_id: role(),
            principal_id: PRINCIPAL.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let jit = AccessGrantSpec {
        justification: Some("bench".into()),
        duration: IsoDuration::new("PT1H"),
        jit: Some(JitTarget {
            subscription_id: SUB.into(),
            resource_group: "myRg1".into(),
            location: "westeurope".into(),
            policy_name: "default".into(),
            virtual_machines: vec![JitVirtualMachine {
                id: format!(
                    "/subscriptions/{SUB}/resourceGroups/myRg1/providers/Microsoft.Compute/virtualMachines/vm1"
                ),
                ports: vec![JitPort {
                    number: 22,
                    allowed_source_address_prefix: Some("10.0.0.7".into()),
                    allowed_source_address_prefixes: None,
                }],
            }],
        }),
        ..Default::default()
    };
    vec![pim(PimMode::Activate), pim(PimMode::Assign), jit]
}

fn main() {
    let now = Utc
        .with_ymd_and_hms(2026, 11, 23, 9, 0, 0)
        .single()
        .expect("valid");
    let policy = AccessPolicy::new(
        "allow",
        AccessPolicySpec {
            namespace_selector: LabelSelector::default(),
            jit: Some(JitRules {
                virtual_machines: vec![format!(
                    "/subscriptions/{SUB}/resourceGroups/myRg1/providers/Microsoft.Compute/virtualMachines/*"
                )],
                ports: vec![22],
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
            ..Default::default()
        },
    );
    let config = PlannerConfig::default();
    // Build realistic statuses: drive each spec to Active through the model.
    let mut cases = Vec::new();
    for (i, spec) in specs().into_iter().enumerate() {
        let mut model = AzureModel::new();
        model.add_eligibility(
            &format!("/subscriptions/{SUB}/resourceGroups/rg1"),
            &role(),
            PRINCIPAL,
        );
        model.add_jit_policy(SUB, "myRg1", "westeurope", "default", JitPolicyView { vms: vec![JitPolicyVm { id: format!("/subscriptions/{SUB}/resourceGroups/myRg1/providers/Microsoft.Compute/virtualMachines/vm1"), ports: vec![JitPolicyPort { number: 22, allowed_prefixes: vec!["*".into()], max_duration: Some(Duration::hours(3)) }] }], requests: vec![] });
        let mut g = ModelGrant {
            meta: GrantMeta {
                uid: format!("uid-{i}"),
                namespace: "team-a".into(),
                name: format!("g{i}"),
                generation: 1,
                has_finalizer: false,
                deleting: false,
                requested_by: Some("alice".into()),
                ..Default::default()
            },
            spec: spec.clone(),
            status: AccessGrantStatus::default(),
            gone: false,
            created: Some(now),
        };
        let fresh = g.clone();
        reconcile(
            &mut g,
            &mut model,
            std::slice::from_ref(&policy),
            &BTreeMap::new(),
            false,
            now,
            &config,
            None,
        );
        cases.push((fresh, Observed::default()));
        cases.push((g, Observed::default()));
    }
    let ctx = GrantContext {
        namespace: "team-a".into(),
        created: Some(now),
        ..Default::default()
    };
    let prepared: Vec<_> = cases
        .iter()
        .map(|(g, o)| {
            let v = validate(&g.spec);
            let verdict = v
                .as_ref()
                .ok()
                .map(|v| guard(v, std::slice::from_ref(&policy), &ctx));
            (g, o, v, verdict)
        })
        .collect();

    // 1) plan() alone.
    let n = 200_000usize;
    let start = Instant::now();
    for i in 0..n {
        let (g, o, v, verdict) = &prepared[i % prepared.len()];
        let input = PlanInput {
            meta: &g.meta,
            spec: v.as_ref(),
            suspend: false,
            status: &g.status,
            verdict: verdict.as_ref(),
            observed: o,
            covered_by_other: false,
            port_holder: None,
            now: now + Duration::seconds(10),
            config: &config,
        };
        black_box(plan(black_box(&input)));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "planner: {n} decisions in {secs:.3}s = {:.0} decisions/s (one core)",
        n as f64 / secs
    );

    // 2) validate + guard + plan, the whole pure decision per reconcile.
    let n2 = 100_000usize;
    let start = Instant::now();
    for i in 0..n2 {
        let (g, o) = &cases[i % cases.len()];
        let v = validate(&g.spec);
        let verdict = v
            .as_ref()
            .ok()
            .map(|v| guard(v, std::slice::from_ref(&policy), &ctx));
        let input = PlanInput {
            meta: &g.meta,
            spec: v.as_ref(),
            suspend: false,
            status: &g.status,
            verdict: verdict.as_ref(),
            observed: o,
            covered_by_other: false,
            port_holder: None,
            now: now + Duration::seconds(10),
            config: &config,
        };
        black_box(plan(black_box(&input)));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "validate+guard+plan: {n2} decisions in {secs:.3}s = {:.0} decisions/s (one core)",
        n2 as f64 / secs
    );
}
