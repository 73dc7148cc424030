//! Bad input never panics: proptest at scale over spec validation, ISO 8601 parsing, ARM id
//! normalisation, Azure error classification and response parsing, requester stamps and
//! admission reviews (`FUZZ_CASES`, default 3000 per property).

use accessgrant_operator::api::*;
use accessgrant_operator::arm_id::{ArmId, matches_pattern};
use accessgrant_operator::azure::error::classify;
use accessgrant_operator::azure::models::{
    JitNetworkAccessPolicy, JitNetworkAccessRequest, PolicyItem, RoleAssignmentScheduleRequest,
    ScheduleItem,
};
use accessgrant_operator::validate::{parse_prefix, validate};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn id_like() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("subscriptions".to_string()),
        Just("20ff7fc3-e762-44dd-bd96-b71116dcdc23".to_string()),
        Just("resourceGroups".to_string()),
        Just("providers".to_string()),
        Just("Microsoft.Subscription".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        "[a-zA-Z0-9%._() -]{0,12}",
    ];
    (
        prop::collection::vec(seg, 0..9),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(s, lead, trail)| {
            let mut out = if lead { "/".to_string() } else { String::new() };
            out.push_str(&s.join("/"));
            if trail {
                out.push('/');
            }
            out
        })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[ -~]{0,20}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        let keys = prop_oneof![
            Just("properties".to_string()),
            Just("status".to_string()),
            Just("value".to_string()),
            Just("virtualMachines".to_string()),
            Just("ports".to_string()),
            Just("number".to_string()),
            Just("endTimeUtc".to_string()),
            Just("scheduleInfo".to_string()),
            Just("expiration".to_string()),
            Just("duration".to_string()),
            Just("effectiveRules".to_string()),
            Just("maximumDuration".to_string()),
            "[a-zA-Z]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), .. ProptestConfig::default() })]

    #[test]
    fn iso_durations_never_panic(s in "[PTWDHMSY0-9.,-]{0,16}") {
        let _ = accessgrant_operator::api::duration::parse_iso_duration(&s);
    }

    #[test]
    fn arm_ids_never_panic_and_normalise_stably(s in id_like()) {
        if let Ok(id) = ArmId::parse(&s) {
            // Normalisation is a fixpoint and never yields a relative or empty segment.
            let again = ArmId::parse(&id.to_string());
            prop_assert!(again.as_ref().is_ok_and(|a| *a == id), "{s} -> {id} -> {again:?}");
            prop_assert!(!id.to_string().contains("//") && !id.lower_segments().iter().any(|x| x == ".." || x == "."));
        }
        let _ = ArmId::parse_vm(&s);
        let _ = ArmId::parse_role_definition(&s);
        if let Ok(id) = ArmId::parse("/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23/resourceGroups/rg1") {
            let _ = matches_pattern(&s, &id);
        }
    }

    #[test]
    fn prefixes_never_panic(s in "[0-9a-fA-F:./*a-z]{0,24}") {
        if let Ok(net) = parse_prefix(&s) {
            prop_assert_eq!(net, net.trunc());
        }
    }

    #[test]
    fn azure_answers_never_panic(status in 100u16..600, body in "[ -~]{0,80}", v in json_value(), ra in proptest::option::of(0u64..100_000)) {
        let _ = classify(status, &body, ra);
        let text = v.to_string();
        let _ = classify(status, &text, ra);
        if let Ok(x) = serde_json::from_value::<RoleAssignmentScheduleRequest>(v.clone()) { let _ = x.view(); }
        if let Ok(x) = serde_json::from_value::<JitNetworkAccessRequest>(v.clone()) { let _ = x.view(); }
        if let Ok(x) = serde_json::from_value::<JitNetworkAccessPolicy>(v.clone()) { let _ = x.view(); }
        if let Ok(x) = serde_json::from_value::<ScheduleItem>(v.clone()) { let _ = x.instance_view(); }
        if let Ok(x) = serde_json::from_value::<PolicyItem>(v) { let _ = x.view(); }
    }

    #[test]
    fn specs_never_panic_and_errors_name_a_field(
        duration in "[PT0-9HMSDW]{0,8}",
        scope in id_like(),
        role in id_like(),
        principal in "[0-9a-f-]{0,40}",
        prefix in "[0-9a-zA-Z:./*]{0,20}",
        port in any::<i32>(),
        justification in "[ -~\n]{0,30}",
        jit in any::<bool>(),
    ) {
        let mut spec = AccessGrantSpec { duration: IsoDuration::new(duration), justification: Some(justification), ..Default::default() };
        if jit {
            spec.jit = Some(JitTarget { subscription_id: "20ff7fc3-e762-44dd-bd96-b71116dcdc23".into(), resource_group: "rg1".into(), location: "westeurope".into(), policy_name: "default".into(),
                virtual_machines: vec![JitVirtualMachine { id: scope, ports: vec![JitPort { number: port, allowed_source_address_prefix: Some(prefix), allowed_source_address_prefixes: None }] }] });
        } else {
            spec.pim = Some(PimTarget { mode: PimMode::Activate, scope, role_definition_id: role, principal_id: principal, ..Default::default() });
        }
        match validate(&spec) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.field.starts_with("spec") && !e.reason.is_empty()),
        }
    }

    #[test]
    fn stamps_and_admission_reviews_never_panic(
        payload in "[ -~]{0,120}",
        sig in "[ -~]{0,60}",
        v in json_value(),
        op in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT", "BOGUS"]),
        user in "[ -~]{0,20}",
    ) {
        let key = accessgrant_operator::stamp::StampKey::from_bytes(&[3u8; 32]).expect("key");
        let spec = AccessGrantSpec::default();
        let ann = std::collections::BTreeMap::from([
            (accessgrant_operator::stamp::REQUESTER_ANNOTATION.to_string(), payload),
            (accessgrant_operator::stamp::SIGNATURE_ANNOTATION.to_string(), sig),
        ]);
        let _ = accessgrant_operator::stamp::verify(&key, "ns", "n", &spec, &ann);
        // Arbitrary JSON as the object (and old object) of a review.
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "name": "n", "namespace": "ns", "operation": op,
                "kind": {"group": "accessgrant.io", "version": "v1alpha1", "kind": "AccessGrant"},
                "resource": {"group": "accessgrant.io", "version": "v1alpha1", "resource": "accessgrants"},
                "userInfo": {"username": user},
                "object": {"apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant", "metadata": {"name": "n"}, "spec": v.clone()},
                "oldObject": {"apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant", "metadata": {"name": "n"}, "spec": v},
            }
        });
        if let Ok(r) = serde_json::from_value::<kube::core::admission::AdmissionReview<kube::api::DynamicObject>>(review)
            && let Ok(req) = accessgrant_operator::webhook::request_of(r)
        {
            let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("time");
            let m = accessgrant_operator::webhook::mutate(&req, &key, now);
            let v = accessgrant_operator::webhook::validate(&req, &[], Default::default(), &key, now);
            // An unstamped (or unreadable) create never passes the validating webhook, and a
            // mutating answer that allows always carries the stamp patch for a create.
            if req.operation == kube::core::admission::Operation::Create {
                prop_assert!(!v.allowed);
                prop_assert!(!m.allowed || m.patch.is_some());
            }
        }
    }
}
