//! Every CEL rule in the CRDs, evaluated offline with kube's `cel` feature: one valid and one
//! invalid object each, and the invalid one must fail with the rule's own message.

use accessgrant_operator::api::*;
use chrono::{TimeZone, Utc};

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn jit_grant() -> AccessGrant {
    AccessGrant::new(
        "g",
        AccessGrantSpec {
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
                        allowed_source_address_prefix: Some("10.0.0.1".into()),
                        allowed_source_address_prefixes: None,
                    }],
                }],
            }),
            ..Default::default()
        },
    )
}

fn pim_grant() -> AccessGrant {
    AccessGrant::new(
        "p",
        AccessGrantSpec {
            duration: IsoDuration::new("PT1H"),
            pim: Some(PimTarget {
                mode: PimMode::Activate,
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg1"),
                role_definition_id: format!(
                    "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
                ),
                principal_id: "a3bb8764-cb92-4276-9d2a-ca1e895e55ea".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

fn create_error(g: &AccessGrant) -> Option<String> {
    AccessGrant::validate_cel(g).err().map(|e| format!("{e:?}"))
}

fn update_error(new: &AccessGrant, old: &AccessGrant) -> Option<String> {
    AccessGrant::validate_cel_update(new, old)
        .err()
        .map(|e| format!("{e:?}"))
}

fn assert_rejected(err: Option<String>, message: &str) {
    let err = err.unwrap_or_else(|| panic!("expected rejection with {message:?}, got none"));
    assert!(err.contains(message), "expected {message:?} in {err}");
}

#[test]
fn valid_objects_pass() {
    assert_eq!(create_error(&jit_grant()), None);
    assert_eq!(create_error(&pim_grant()), None);
    assert_eq!(update_error(&jit_grant(), &jit_grant()), None);
}

#[test]
fn exactly_one_of_jit_or_pim() {
    let mut both = jit_grant();
    both.spec.pim = pim_grant().spec.pim;
    assert_rejected(
        create_error(&both),
        "exactly one of spec.jit or spec.pim must be set",
    );
    let mut none = jit_grant();
    none.spec.jit = None;
    assert_rejected(
        create_error(&none),
        "exactly one of spec.jit or spec.pim must be set",
    );
}

#[test]
fn target_is_immutable() {
    let old = jit_grant();
    let mut edited = jit_grant();
    if let Some(j) = edited.spec.jit.as_mut() {
        j.virtual_machines[0].ports[0].number = 3389;
    }
    assert_rejected(update_error(&edited, &old), "spec.jit is immutable");

    let old = pim_grant();
    let mut edited = pim_grant();
    if let Some(p) = edited.spec.pim.as_mut() {
        p.scope = format!("/subscriptions/{SUB}");
    }
    assert_rejected(update_error(&edited, &old), "spec.pim is immutable");

    // Other fields may change.
    let mut other = pim_grant();
    other.spec.justification = Some("more time".into());
    other.spec.duration = IsoDuration::new("PT2H");
    assert_eq!(update_error(&other, &old), None);
}

#[test]
fn target_cannot_be_swapped() {
    let old = jit_grant();
    let mut swapped = jit_grant();
    swapped.spec.jit = None;
    swapped.spec.pim = pim_grant().spec.pim;
    assert_rejected(
        update_error(&swapped, &old),
        "cannot be added or removed after creation",
    );
}

#[test]
fn port_range() {
    for bad in [0, 65536, -1] {
        let mut g = jit_grant();
        if let Some(j) = g.spec.jit.as_mut() {
            j.virtual_machines[0].ports[0].number = bad;
        }
        assert_rejected(create_error(&g), "port number must be between 1 and 65535");
    }
    let mut g = jit_grant();
    if let Some(j) = g.spec.jit.as_mut() {
        j.virtual_machines[0].ports[0].number = 65535;
    }
    assert_eq!(create_error(&g), None);
}

#[test]
fn at_most_one_prefix_form() {
    let mut g = jit_grant();
    if let Some(j) = g.spec.jit.as_mut() {
        j.virtual_machines[0].ports[0].allowed_source_address_prefixes =
            Some(vec!["10.0.0.0/24".into()]);
    }
    assert_rejected(
        create_error(&g),
        "set at most one of allowedSourceAddressPrefix or allowedSourceAddressPrefixes",
    );
    if let Some(j) = g.spec.jit.as_mut() {
        j.virtual_machines[0].ports[0].allowed_source_address_prefix = None;
    }
    assert_eq!(create_error(&g), None);
}

#[test]
fn duration_shape() {
    for bad in ["1h", "PT", "P", "P1Y", "P1M", "PT1H30", "60"] {
        let mut g = pim_grant();
        g.spec.duration = IsoDuration::new(bad);
        assert_rejected(create_error(&g), "duration must be an ISO 8601 duration");
    }
    for good in ["PT1H", "PT30M", "P1D", "P1DT2H", "PT90S", "P1W"] {
        let mut g = pim_grant();
        g.spec.duration = IsoDuration::new(good);
        assert_eq!(create_error(&g), None, "{good}");
    }
    let mut g = pim_grant();
    g.spec.renewal = Some(RenewalSpec {
        until: Utc
            .with_ymd_and_hms(2030, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date"),
        before: Some(IsoDuration::new("5m")),
    });
    assert_rejected(
        create_error(&g),
        "renewal.before must be an ISO 8601 duration",
    );
}

#[test]
fn renewal_until_after_start() {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 23, 18, 0, 0)
        .single()
        .expect("valid date");
    let mut g = pim_grant();
    g.spec.start_time = Some(start);
    g.spec.renewal = Some(RenewalSpec {
        until: start - chrono::Duration::hours(1),
        before: None,
    });
    assert_rejected(
        create_error(&g),
        "spec.renewal.until must be after spec.startTime",
    );
    g.spec.renewal = Some(RenewalSpec {
        until: start + chrono::Duration::hours(12),
        before: None,
    });
    assert_eq!(create_error(&g), None);
}

#[test]
fn policy_duration_shapes() {
    let mut p = AccessPolicy::new("p", AccessPolicySpec::default());
    p.spec.max_duration = Some(IsoDuration::new("PT8H"));
    assert!(AccessPolicy::validate_cel(&p).is_ok());
    p.spec.max_duration = Some(IsoDuration::new("8 hours"));
    let err = format!("{:?}", AccessPolicy::validate_cel(&p).err());
    assert!(
        err.contains("maxDuration must be an ISO 8601 duration"),
        "{err}"
    );
    p.spec.max_duration = None;
    p.spec.renewal = Some(RenewalRules {
        max_total_duration: IsoDuration::new("1 day"),
    });
    let err = format!("{:?}", AccessPolicy::validate_cel(&p).err());
    assert!(
        err.contains("maxTotalDuration must be an ISO 8601 duration"),
        "{err}"
    );
}
