//! Pure validation and guard tests: precise reasons, and escalation attempts refused.

use crate::support;

use accessgrant_operator::api::*;
use accessgrant_operator::guard::{GrantContext, Verdict, guard};
use accessgrant_operator::validate::validate;
use support::*;

type Edit = Box<dyn Fn(&mut AccessGrantSpec)>;

fn ctx() -> GrantContext {
    GrantContext {
        namespace: "team-a".into(),
        created: Some(t0()),
        ..Default::default()
    }
}

fn verdict(spec: &AccessGrantSpec, policies: &[AccessPolicy]) -> Verdict {
    let v = validate(spec).expect("valid spec");
    guard(&v, policies, &ctx())
}

fn denied_rule(spec: &AccessGrantSpec) -> String {
    match verdict(spec, &[allow_all_policy()]) {
        Verdict::Denied { rule, .. } => rule,
        Verdict::Allowed { .. } => panic!("expected a denial for {spec:?}"),
    }
}

fn invalid_field(spec: &AccessGrantSpec) -> String {
    validate(spec).expect_err("expected invalid").field
}

#[test]
fn baseline_is_allowed() {
    assert!(verdict(&pim_spec(PimMode::Activate), &[allow_all_policy()]).is_allowed());
    assert!(verdict(&jit_spec(), &[allow_all_policy()]).is_allowed());
    assert!(
        matches!(verdict(&jit_spec(), &[]), Verdict::Denied { rule, .. } if rule == "NoPolicy")
    );
}

#[test]
fn scope_escapes_are_refused() {
    // Policy allows only rg1.
    let mut p = allow_all_policy();
    p.spec.pim.as_mut().expect("pim").scopes = vec![scope()];
    let deny = |sc: &str| -> String {
        let mut s = pim_spec(PimMode::Activate);
        s.pim.as_mut().expect("pim").scope = sc.to_string();
        match validate(&s) {
            Err(e) => format!("invalid:{}", e.field),
            Ok(v) => match guard(&v, std::slice::from_ref(&p), &ctx()) {
                Verdict::Denied { rule, .. } => rule,
                Verdict::Allowed { .. } => "allowed".into(),
            },
        }
    };
    assert_eq!(
        deny(&format!("/subscriptions/{SUB}/resourceGroups/rg1/../rg2")),
        "invalid:spec.pim.scope"
    );
    assert_eq!(
        deny(&format!("/subscriptions/{SUB}/resourceGroups/rg1/")),
        "invalid:spec.pim.scope"
    );
    assert_eq!(
        deny(&format!("/subscriptions/{SUB}//resourceGroups/rg1")),
        "invalid:spec.pim.scope"
    );
    assert_eq!(
        deny(&format!("/subscriptions/{SUB}/resourceGroups/rg10")),
        "PimScope"
    );
    assert_eq!(deny(&format!("/subscriptions/{SUB}")), "PimScope");
    assert_eq!(
        deny("/providers/Microsoft.Management/managementGroups/root"),
        "invalid:spec.pim.roleDefinitionId"
    );
    assert_eq!(deny("/"), "invalid:spec.pim.roleDefinitionId");
    // Case changes and the subscription alias are the same scope: allowed.
    assert_eq!(
        deny(&format!("/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/RG1")),
        "allowed"
    );
    assert_eq!(
        deny(&format!(
            "/providers/Microsoft.Subscription/subscriptions/{SUB}/resourceGroups/rg1"
        )),
        "allowed"
    );
    assert_eq!(
        deny(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1"
        )),
        "allowed"
    );
}

#[test]
fn role_principal_mode_and_limits() {
    let mut s = pim_spec(PimMode::Activate);
    s.pim.as_mut().expect("pim").role_definition_id = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
    );
    assert_eq!(denied_rule(&s), "PimRoleDefinition");
    // Same GUID under another scope (tenant-level definition id).
    let mut s = pim_spec(PimMode::Activate);
    s.pim.as_mut().expect("pim").role_definition_id =
        format!("/providers/Microsoft.Authorization/roleDefinitions/{ROLE_GUID}");
    assert_eq!(denied_rule(&s), "PimRoleDefinition");
    let mut s = pim_spec(PimMode::Activate);
    s.pim.as_mut().expect("pim").principal_id = "00000000-0000-0000-0000-000000000001".into();
    assert_eq!(denied_rule(&s), "PimPrincipal");
    let mut p = allow_all_policy();
    p.spec.pim.as_mut().expect("pim").modes = vec![PimMode::Activate];
    assert!(
        matches!(verdict(&pim_spec(PimMode::Assign), &[p]), Verdict::Denied { rule, .. } if rule == "PimMode")
    );
    let mut s = pim_spec(PimMode::Activate);
    s.duration = IsoDuration::new("PT9H");
    assert_eq!(denied_rule(&s), "MaxDuration");
    // Over the maximum through renewals.
    let mut s = pim_spec(PimMode::Activate);
    s.renewal = Some(RenewalSpec {
        until: t0() + chrono::Duration::days(3),
        before: None,
    });
    assert_eq!(denied_rule(&s), "RenewalLimit");
    let mut p = allow_all_policy();
    p.spec.renewal = None;
    let mut s = pim_spec(PimMode::Activate);
    s.renewal = Some(RenewalSpec {
        until: t0() + chrono::Duration::hours(3),
        before: None,
    });
    assert!(
        matches!(verdict(&s, &[p]), Verdict::Denied { rule, .. } if rule == "RenewalNotAllowed")
    );
    let mut p = allow_all_policy();
    p.spec.require_justification = true;
    p.spec.require_ticket = true;
    let mut s = pim_spec(PimMode::Activate);
    s.justification = None;
    assert!(
        matches!(verdict(&s, std::slice::from_ref(&p)), Verdict::Denied { rule, .. } if rule == "JustificationRequired")
    );
    let s = pim_spec(PimMode::Activate);
    assert!(matches!(verdict(&s, &[p]), Verdict::Denied { rule, .. } if rule == "TicketRequired"));
}

#[test]
fn source_prefixes_wider_than_allowed_are_refused() {
    let with_prefix = |pfx: &str| {
        let mut s = jit_spec();
        s.jit.as_mut().expect("jit").virtual_machines[0].ports[0].allowed_source_address_prefix =
            Some(pfx.into());
        s
    };
    for wide in [
        "0.0.0.0/0",
        "10.0.0.0/7",
        "11.0.0.1",
        "::ffff:10.0.0.1",
        "::/0",
        "::ffff:0:0/96",
    ] {
        assert_eq!(denied_rule(&with_prefix(wide)), "JitSourcePrefix", "{wide}");
    }
    for tag in [
        "*",
        "Any",
        "Internet",
        "VirtualNetwork",
        "10.0.0.5/8",
        "10.0.0.0/33",
        "",
        " 10.0.0.1",
    ] {
        assert!(
            invalid_field(&with_prefix(tag)).ends_with("allowedSourceAddressPrefix"),
            "{tag}"
        );
    }
    assert!(verdict(&with_prefix("10.1.0.0/16"), &[allow_all_policy()]).is_allowed());
}

#[test]
fn ports_and_vms() {
    let mut s = jit_spec();
    s.jit.as_mut().expect("jit").virtual_machines[0].ports[0].number = 8080;
    assert_eq!(denied_rule(&s), "JitPort");
    let mut s = jit_spec();
    s.jit.as_mut().expect("jit").virtual_machines[0].id = format!(
        "/subscriptions/{SUB}/resourceGroups/other/providers/Microsoft.Compute/virtualMachines/vm1"
    );
    assert_eq!(denied_rule(&s), "JitVirtualMachine");
    let mut s = jit_spec();
    s.jit.as_mut().expect("jit").virtual_machines[0].ports[0].number = 0;
    assert!(invalid_field(&s).ends_with("ports[0].number"));
}

#[test]
fn validation_reasons_are_precise() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| s.duration = IsoDuration::new("P1M")),
            "spec.duration",
        ),
        (
            Box::new(|s| s.duration = IsoDuration::new("PT0S")),
            "spec.duration",
        ),
        (
            Box::new(|s| s.justification = Some("line\nbreak".into())),
            "spec.justification",
        ),
        (
            Box::new(|s| s.justification = Some("[ag:other/x#1.abc]".into())),
            "spec.justification",
        ),
        // Attribution cannot be forged: no bidi or zero-width characters (Unicode Cf), no
        // words that imitate the operator's `[requested-by:...]`, in any text sent to Azure.
        (
            Box::new(|s| {
                s.justification = Some("fix \u{202E}moc.elpmaxe@ecila yb detseuqer(\u{202C}".into())
            }),
            "spec.justification",
        ),
        (
            Box::new(|s| s.justification = Some("zero\u{200B}width".into())),
            "spec.justification",
        ),
        (
            Box::new(|s| s.justification = Some("INC-7 (requested by alice@example.com)".into())),
            "spec.justification",
        ),
        (
            Box::new(|s| s.justification = Some("[Requested-By:alice] please".into())),
            "spec.justification",
        ),
        (
            Box::new(|s| {
                s.ticket = Some(TicketSpec {
                    system: "ServiceNow\u{2066}".into(),
                    number: "1".into(),
                })
            }),
            "spec.ticket.system",
        ),
        (
            Box::new(|s| s.duration = IsoDuration::new("P1W1D")),
            "spec.duration",
        ),
        (
            Box::new(|s| s.duration = IsoDuration::new("PT4294967296H")),
            "spec.duration",
        ),
        (
            Box::new(|s| {
                s.ticket = Some(TicketSpec {
                    system: "".into(),
                    number: "1".into(),
                })
            }),
            "spec.ticket.system",
        ),
        (
            Box::new(|s| s.pim.as_mut().expect("pim").principal_id = "nope".into()),
            "spec.pim.principalId",
        ),
        (
            Box::new(|s| {
                s.pim.as_mut().expect("pim").role_definition_id = format!(
                    "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/xyz"
                )
            }),
            "spec.pim.roleDefinitionId",
        ),
        (
            Box::new(|s| {
                s.pim.as_mut().expect("pim").role_definition_id = format!(
                    "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.Authorization/roleDefinitions/{ROLE_GUID}"
                )
            }),
            "spec.pim.roleDefinitionId",
        ),
        (
            Box::new(|s| {
                s.renewal = Some(RenewalSpec {
                    until: t0(),
                    before: Some(IsoDuration::new("PT2H")),
                })
            }),
            "spec.renewal.before",
        ),
        (
            Box::new(|s| {
                s.pim.as_mut().expect("pim").identity = Some(GrantIdentity {
                    service_account_name: "Bad_Name".into(),
                    client_id: "x".into(),
                    tenant_id: "y".into(),
                })
            }),
            "spec.pim.identity.serviceAccountName",
        ),
        (
            Box::new(|s| {
                s.jit = jit_spec().jit;
            }),
            "spec",
        ),
    ];
    for (edit, field) in cases {
        let mut s = pim_spec(PimMode::Activate);
        edit(&mut s);
        let e = validate(&s).expect_err(field);
        assert_eq!(e.field, field, "{e}");
        assert!(!e.reason.is_empty());
    }
}

#[test]
fn a_policy_being_deleted_keeps_older_grants_and_allows_no_new_one() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut p = allow_all_policy();
    let at = |t: chrono::DateTime<chrono::Utc>| -> Time {
        serde_json::from_value(serde_json::json!(t.to_rfc3339())).expect("time")
    };
    p.spec.pim = None;
    p.metadata.deletion_timestamp = Some(at(t0() + chrono::Duration::hours(1)));
    let v = validate(&jit_spec()).expect("valid");
    let with_created = |c: Option<chrono::DateTime<chrono::Utc>>| GrantContext {
        created: c,
        ..ctx()
    };
    // Created before the deletion, or in its second: still allowed (the guard holds the
    // policy for it).
    assert!(guard(&v, std::slice::from_ref(&p), &with_created(Some(t0()))).is_allowed());
    let same_second = t0() + chrono::Duration::hours(1);
    assert!(
        guard(
            &v,
            std::slice::from_ref(&p),
            &with_created(Some(same_second))
        )
        .is_allowed()
    );
    // Created after, or at admission (no creation time yet): refused with the reason.
    for c in [Some(t0() + chrono::Duration::hours(2)), None] {
        match guard(&v, std::slice::from_ref(&p), &with_created(c)) {
            Verdict::Denied { rule, message } => {
                assert_eq!(rule, "PolicyDeleting");
                assert!(message.contains("being deleted"), "{message}");
            }
            Verdict::Allowed { .. } => panic!("a deleting policy allowed a new grant ({c:?})"),
        }
    }
    // Another policy still allows new grants.
    let mut other = allow_all_policy();
    other.metadata.name = Some("other".into());
    assert!(guard(&v, &[p, other], &with_created(None)).is_allowed());
}

/// A scope no policy allows is what the requester hears about, even when the role id names
/// another subscription than that scope (tenant root, a management group); where the policy
/// allows the scope, the role id is still refused as invalid, and Azure is never asked.
#[test]
fn scope_denials_come_before_the_role_subscription_check() {
    use accessgrant_operator::guard::decide;
    let policies = [allow_all_policy()];
    for scope in [
        "/".to_string(),
        "/providers/Microsoft.Management/managementGroups/mg-root".to_string(),
    ] {
        let mut s = pim_spec(PimMode::Assign);
        s.pim.as_mut().expect("pim").scope = scope.clone();
        let d = decide(&s, &policies, &ctx());
        match d.verdict {
            Some(Verdict::Denied { rule, message }) => {
                assert_eq!(rule, "PimScope", "{scope}: {message}");
                assert!(
                    message.contains("is not at or beneath an allowed scope"),
                    "{message}"
                );
            }
            other => panic!(
                "{scope}: expected the scope denial, got {other:?} / {:?}",
                d.valid
            ),
        }
    }
    // The policy allows the management group: the mismatch itself is the answer.
    let mut p = allow_all_policy();
    let mg = "/providers/Microsoft.Management/managementGroups/mg-root";
    p.spec.pim.as_mut().expect("pim").scopes.push(mg.into());
    let mut s = pim_spec(PimMode::Assign);
    s.pim.as_mut().expect("pim").scope = mg.into();
    let d = decide(&s, &[p], &ctx());
    let e = d
        .valid
        .expect_err("a subscription's role id at a management group is invalid");
    assert_eq!(e.field, "spec.pim.roleDefinitionId");
    assert!(d.verdict.is_none());
}
