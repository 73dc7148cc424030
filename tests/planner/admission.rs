//! Admission: the requester stamp, the mutating and validating webhooks as pure functions,
//! break-glass and identity rules, and a property test that the webhook and the controller give
//! the same verdict for the same inputs.

use crate::support;

use accessgrant_operator::api::*;
use accessgrant_operator::controller::judge;
use accessgrant_operator::guard::{GrantContext, Requester, Verdict, guard};
use accessgrant_operator::stamp::{
    self, REQUESTER_ANNOTATION, SIGNATURE_ANNOTATION, StampCheck, StampKey,
};
use accessgrant_operator::validate::validate;
use accessgrant_operator::webhook;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::*;

const NS: &str = "team-a";

fn key() -> StampKey {
    StampKey::from_bytes(&[7u8; 32]).expect("key")
}

fn grant(name: &str, spec: AccessGrantSpec) -> AccessGrant {
    let mut g = AccessGrant::new(name, spec);
    g.metadata.namespace = Some(NS.into());
    g
}

fn review(
    op: &str,
    user: &str,
    groups: &[&str],
    obj: &AccessGrant,
    old: Option<&AccessGrant>,
) -> AdmissionRequest<DynamicObject> {
    let v = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-4b29-9b8d-5d0f7e3b1a11",
            "kind": {"group": "accessgrant.io", "version": "v1alpha1", "kind": "AccessGrant"},
            "resource": {"group": "accessgrant.io", "version": "v1alpha1", "resource": "accessgrants"},
            "name": obj.metadata.name.clone().unwrap_or_default(),
            "namespace": NS,
            "operation": op,
            "userInfo": {"username": user, "groups": groups},
            "object": obj,
            "oldObject": old,
            "dryRun": false,
        }
    });
    let r: AdmissionReview<DynamicObject> = serde_json::from_value(v).expect("review");
    r.try_into().expect("request")
}

/// Applies a mutating response's patch to the object, as the apiserver does.
fn apply(obj: &AccessGrant, resp: &AdmissionResponse) -> AccessGrant {
    let mut v = serde_json::to_value(obj).expect("json");
    if let Some(p) = &resp.patch {
        let patch: json_patch::Patch = serde_json::from_slice(p).expect("patch");
        json_patch::patch(&mut v, &patch).expect("applies");
    }
    serde_json::from_value(v).expect("grant")
}

fn annotations(g: &AccessGrant) -> BTreeMap<String, String> {
    g.metadata.annotations.clone().unwrap_or_default()
}

/// Create as `user`: mutate then validate, as kube-apiserver calls them.
fn admit(
    user: &str,
    groups: &[&str],
    g: &AccessGrant,
    policies: &[AccessPolicy],
) -> (AccessGrant, AdmissionResponse) {
    let m = webhook::mutate(&review("CREATE", user, groups, g, None), &key(), t0());
    assert!(m.allowed, "mutate refused: {}", m.result.message);
    let stamped = apply(g, &m);
    let v = webhook::validate(
        &review("CREATE", user, groups, &stamped, None),
        policies,
        BTreeMap::new(),
        &key(),
        t0(),
    );
    (stamped, v)
}

#[test]
fn stamp_round_trip_and_forgeries() {
    let g = grant("g1", pim_spec(PimMode::Activate));
    let (stamped, v) = admit("alice@example.com", &["oncall"], &g, &[allow_all_policy()]);
    assert!(v.allowed, "{}", v.result.message);
    let a = annotations(&stamped);
    match stamp::verify(&key(), NS, "g1", &stamped.spec, &a) {
        StampCheck::Valid(s) => {
            assert_eq!(s.user, "alice@example.com");
            assert_eq!(s.groups, vec!["oncall".to_string()]);
        }
        other => panic!("expected a valid stamp, got {other:?}"),
    }
    // Altered payload (another user), same signature.
    let mut forged = a.clone();
    let payload = forged[REQUESTER_ANNOTATION].replace("alice@example.com", "mallory");
    forged.insert(REQUESTER_ANNOTATION.into(), payload);
    assert!(matches!(
        stamp::verify(&key(), NS, "g1", &stamped.spec, &forged),
        StampCheck::Invalid(m) if m.contains("signature")
    ));
    // Signed by another key.
    let other = StampKey::from_bytes(&[9u8; 32]).expect("key");
    assert!(matches!(
        stamp::verify(&other, NS, "g1", &stamped.spec, &a),
        StampCheck::Invalid(m) if m.contains("signature")
    ));
    // Copied onto another grant, or into another namespace.
    assert!(matches!(
        stamp::verify(&key(), NS, "g2", &stamped.spec, &a),
        StampCheck::Invalid(m) if m.contains("copied")
    ));
    assert!(matches!(
        stamp::verify(&key(), "team-b", "g1", &stamped.spec, &a),
        StampCheck::Invalid(m) if m.contains("signature")
    ));
    // The spec changed behind the webhook's back.
    let mut spec = stamped.spec.clone();
    spec.duration = IsoDuration::new("PT2H");
    assert!(matches!(
        stamp::verify(&key(), NS, "g1", &spec, &a),
        StampCheck::Invalid(m) if m.contains("spec changed")
    ));
    // Unsigned.
    let mut unsigned = a.clone();
    unsigned.remove(SIGNATURE_ANNOTATION);
    assert!(matches!(
        stamp::verify(&key(), NS, "g1", &stamped.spec, &unsigned),
        StampCheck::Invalid(m) if m.contains("not signed")
    ));
    assert_eq!(
        stamp::verify(&key(), NS, "g1", &stamped.spec, &BTreeMap::new()),
        StampCheck::Missing
    );
}

#[test]
fn the_controller_trusts_only_a_valid_stamp() {
    let g = grant("g1", pim_spec(PimMode::Activate));
    let (mut stamped, _) = admit("alice@example.com", &[], &g, &[allow_all_policy()]);
    let (d, v) = judge(
        &stamped,
        &[allow_all_policy()],
        BTreeMap::new(),
        Some(&key()),
    );
    assert!(d.refusal().is_none());
    assert_eq!(
        v.status.map(|r| r.username),
        Some("alice@example.com".into())
    );
    // Forged: the requester is ignored, the reason says why.
    stamped
        .metadata
        .annotations
        .as_mut()
        .expect("annotations")
        .insert(
            REQUESTER_ANNOTATION.into(),
            r#"{"user":"admin","at":"2026-11-23T09:00:00Z","name":"g1","spec":"x"}"#.into(),
        );
    let (_, v) = judge(
        &stamped,
        &[allow_all_policy()],
        BTreeMap::new(),
        Some(&key()),
    );
    assert!(v.status.is_none() && v.requester.is_none());
    assert!(v.problem.expect("problem").contains("signature"));
    // A policy requiring a verified requester denies it.
    let mut p = allow_all_policy();
    p.spec.require_verified_requester = true;
    let (d, _) = judge(&stamped, &[p], BTreeMap::new(), Some(&key()));
    assert_eq!(
        d.refusal().map(|r| r.0),
        Some("RequesterNotVerified".into())
    );
}

#[test]
fn a_client_cannot_supply_or_change_the_stamp() {
    let mut g = grant("g1", pim_spec(PimMode::Activate));
    g.metadata.annotations = Some(BTreeMap::from([(
        REQUESTER_ANNOTATION.to_string(),
        r#"{"user":"admin"}"#.to_string(),
    )]));
    let m = webhook::mutate(&review("CREATE", "mallory", &[], &g, None), &key(), t0());
    assert!(!m.allowed);
    assert_eq!(m.result.reason, webhook::REASON_STAMP);
    assert!(m.result.message.contains(REQUESTER_ANNOTATION));

    // Update: changing the stamp is refused; dropping it restores the old one; a metadata-only
    // update keeps it; a spec change stamps the new requester.
    let (stamped, _) = admit(
        "alice",
        &[],
        &grant("g1", pim_spec(PimMode::Activate)),
        &[allow_all_policy()],
    );
    let mut changed = stamped.clone();
    changed
        .metadata
        .annotations
        .as_mut()
        .expect("annotations")
        .insert(SIGNATURE_ANNOTATION.into(), "hmac-sha256:v1:AAAA".into());
    let m = webhook::mutate(
        &review("UPDATE", "mallory", &[], &changed, Some(&stamped)),
        &key(),
        t0(),
    );
    assert!(!m.allowed);
    assert_eq!(m.result.reason, webhook::REASON_STAMP);

    let mut dropped = stamped.clone();
    dropped.metadata.annotations = None;
    let m = webhook::mutate(
        &review("UPDATE", "mallory", &[], &dropped, Some(&stamped)),
        &key(),
        t0(),
    );
    assert!(m.allowed);
    assert_eq!(annotations(&apply(&dropped, &m)), annotations(&stamped));

    let mut respec = stamped.clone();
    respec.spec.duration = IsoDuration::new("PT2H");
    let m = webhook::mutate(
        &review("UPDATE", "bob", &[], &respec, Some(&stamped)),
        &key(),
        t0(),
    );
    let restamped = apply(&respec, &m);
    match stamp::verify(&key(), NS, "g1", &restamped.spec, &annotations(&restamped)) {
        StampCheck::Valid(s) => assert_eq!(s.user, "bob"),
        other => panic!("expected bob's stamp, got {other:?}"),
    }
}

/// A stamp is bound to the object instance: a create stamp may not be older than the object
/// (by more than the webhook's window), an update stamp names the object's uid. Copying either
/// onto a re-created grant of the same name (issue: stamp replay) makes it untrusted.
#[test]
fn a_stamp_copied_onto_a_re_created_grant_is_refused() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let (created, _) = admit(
        "alice",
        &[],
        &grant("g1", pim_spec(PimMode::Activate)),
        &[allow_all_policy()],
    );
    let a = annotations(&created);
    let at = |secs: i64| {
        let t = t0() + chrono::Duration::seconds(secs);
        Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).expect("time"),
        ))
    };
    let check = |uid: &str, created_secs: i64, ann: &BTreeMap<String, String>| {
        let mut meta = created.metadata.clone();
        meta.uid = Some(uid.into());
        meta.creation_timestamp = at(created_secs);
        stamp::verify_instance(
            &key(),
            NS,
            "g1",
            stamp::Instance::of(&meta),
            &created.spec,
            ann,
        )
    };
    // The object the stamp was made for: created within the window after the stamp.
    assert!(matches!(check("uid-1", 0, &a), StampCheck::Valid(_)));
    assert!(matches!(check("uid-1", 30, &a), StampCheck::Valid(_)));
    // Re-created later under the same name with the copied annotations.
    match check("uid-2", 120, &a) {
        StampCheck::Invalid(p) => assert!(p.contains("older than the object"), "{p}"),
        other => panic!("a replayed create stamp was accepted: {other:?}"),
    }
    // A stamp made on a spec change names the uid: valid for that object only.
    let mut first = created.clone();
    first.metadata.uid = Some("uid-1".into());
    first.metadata.creation_timestamp = at(0);
    let mut respec = first.clone();
    respec.spec.duration = IsoDuration::new("PT2H");
    let m = webhook::mutate(
        &review("UPDATE", "bob", &[], &respec, Some(&first)),
        &key(),
        t0() + chrono::Duration::seconds(600),
    );
    let restamped = apply(&respec, &m);
    let b = annotations(&restamped);
    let check2 = |uid: &str, created_secs: i64| {
        let mut meta = restamped.metadata.clone();
        meta.uid = Some(uid.into());
        meta.creation_timestamp = at(created_secs);
        stamp::verify_instance(
            &key(),
            NS,
            "g1",
            stamp::Instance::of(&meta),
            &restamped.spec,
            &b,
        )
    };
    assert!(matches!(check2("uid-1", 0), StampCheck::Valid(s) if s.user == "bob"));
    match check2("uid-2", 610) {
        StampCheck::Invalid(p) => assert!(p.contains("another object"), "{p}"),
        other => panic!("a replayed update stamp was accepted: {other:?}"),
    }
}

#[test]
fn validating_refuses_target_edits_and_unstamped_objects() {
    let (stamped, v) = admit(
        "alice",
        &[],
        &grant("g1", pim_spec(PimMode::Activate)),
        &[allow_all_policy()],
    );
    assert!(v.allowed);
    // Editing the target (e.g. of an Active grant).
    let mut edited = stamped.clone();
    edited.spec.pim.as_mut().expect("pim").scope = format!("/subscriptions/{SUB}");
    let r = webhook::validate(
        &review("UPDATE", "alice", &[], &edited, Some(&stamped)),
        &[allow_all_policy()],
        BTreeMap::new(),
        &key(),
        t0(),
    );
    assert!(!r.allowed);
    assert_eq!(r.result.reason, webhook::REASON_IMMUTABLE);
    assert!(r.result.message.contains("spec.pim is immutable"));
    // Created without the mutating webhook: no stamp.
    let r = webhook::validate(
        &review(
            "CREATE",
            "alice",
            &[],
            &grant("g2", pim_spec(PimMode::Activate)),
            None,
        ),
        &[allow_all_policy()],
        BTreeMap::new(),
        &key(),
        t0(),
    );
    assert!(!r.allowed);
    assert_eq!(r.result.reason, webhook::REASON_STAMP);
    // Someone else's stamp (the request's user differs from the stamp's).
    let r = webhook::validate(
        &review("CREATE", "mallory", &[], &stamped, None),
        &[allow_all_policy()],
        BTreeMap::new(),
        &key(),
        t0(),
    );
    assert!(!r.allowed);
    // Metadata-only updates (finalizers) pass even when policy now denies: the controller
    // revokes; the webhook must not block the finalizer dance.
    let mut fin = stamped.clone();
    fin.metadata.finalizers = Some(vec!["accessgrant.io/revoke".into()]);
    let r = webhook::validate(
        &review(
            "UPDATE",
            "system:serviceaccount:x:op",
            &[],
            &fin,
            Some(&stamped),
        ),
        &[],
        BTreeMap::new(),
        &key(),
        t0(),
    );
    assert!(r.allowed, "{}", r.result.message);
    // Suspending is never blocked by policy (here: no policy at all any more); resuming is
    // judged again.
    let m = webhook::mutate(
        &review(
            "UPDATE",
            "bob",
            &[],
            &{
                let mut s = stamped.clone();
                s.spec.suspend = Some(true);
                s
            },
            Some(&stamped),
        ),
        &key(),
        t0(),
    );
    let mut suspended = stamped.clone();
    suspended.spec.suspend = Some(true);
    let suspended = apply(&suspended, &m);
    let r = webhook::validate(
        &review("UPDATE", "bob", &[], &suspended, Some(&stamped)),
        &[],
        BTreeMap::new(),
        &key(),
        t0(),
    );
    assert!(r.allowed, "{}", r.result.message);
    let mut resumed = suspended.clone();
    resumed.spec.suspend = Some(false);
    let m = webhook::mutate(
        &review("UPDATE", "bob", &[], &resumed, Some(&suspended)),
        &key(),
        t0(),
    );
    let resumed = apply(&resumed, &m);
    let r = webhook::validate(
        &review("UPDATE", "bob", &[], &resumed, Some(&suspended)),
        &[],
        BTreeMap::new(),
        &key(),
        t0(),
    );
    assert!(!r.allowed);
    assert_eq!(r.result.reason, "NoPolicy");
}

fn ctx_as(user: Option<(&str, &[&str])>) -> GrantContext {
    GrantContext {
        namespace: NS.into(),
        created: Some(t0()),
        requester: user.map(|(u, g)| Requester {
            username: u.into(),
            groups: g.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    }
}

fn rule(spec: &AccessGrantSpec, p: &AccessPolicy, ctx: &GrantContext) -> String {
    match validate(spec) {
        Err(e) => format!("invalid:{}", e.field),
        Ok(v) => match guard(&v, std::slice::from_ref(p), ctx) {
            Verdict::Denied { rule, .. } => rule,
            Verdict::Allowed { .. } => "allowed".into(),
        },
    }
}

#[test]
fn break_glass_rules() {
    let mut p = allow_all_policy();
    p.spec.require_ticket = true;
    let mut s = pim_spec(PimMode::Activate);
    s.break_glass = Some(true);
    let alice = ctx_as(Some(("alice", &["oncall"])));
    assert_eq!(rule(&s, &p, &alice), "BreakGlassNotAllowed");
    p.spec.break_glass = Some(BreakGlassRules {
        max_duration: Some(IsoDuration::new("PT30M")),
        requesters: vec!["group:oncall".into()],
    });
    // Capped tighter than the policy's maxDuration.
    assert_eq!(rule(&s, &p, &alice), "BreakGlassMaxDuration");
    s.duration = IsoDuration::new("PT30M");
    // Allowed without the ticket the policy otherwise requires.
    assert_eq!(rule(&s, &p, &alice), "allowed");
    let mut plain = s.clone();
    plain.break_glass = None;
    assert_eq!(rule(&plain, &p, &alice), "TicketRequired");
    // Only the named requesters, only verified ones.
    assert_eq!(
        rule(&s, &p, &ctx_as(Some(("bob", &["dev"])))),
        "BreakGlassRequester"
    );
    assert_eq!(rule(&s, &p, &ctx_as(None)), "BreakGlassRequester");
    // Always a justification, never renewal.
    let mut nj = s.clone();
    nj.justification = None;
    assert_eq!(rule(&nj, &p, &alice), "BreakGlassJustification");
    let mut rn = s.clone();
    rn.renewal = Some(RenewalSpec {
        until: t0() + chrono::Duration::hours(1),
        before: None,
    });
    assert_eq!(rule(&rn, &p, &alice), "BreakGlassRenewal");
}

#[test]
fn identities_are_namespace_local_and_restricted_by_policy() {
    let with_sa = |sa: &str| {
        let mut s = pim_spec(PimMode::Activate);
        s.pim.as_mut().expect("pim").identity = Some(GrantIdentity {
            service_account_name: sa.into(),
            client_id: "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea2".into(),
            tenant_id: "3c0a2b4e-7d1f-4c6a-9e8b-1f2a3b4c5d6e".into(),
        });
        s
    };
    let mut p = allow_all_policy();
    let ctx = ctx_as(Some(("alice", &[])));
    for other_ns in [
        "system:serviceaccount:team-b:deployer",
        "team-b/deployer",
        "../team-b/deployer",
    ] {
        let s = with_sa(other_ns);
        assert_eq!(
            rule(&s, &p, &ctx),
            "invalid:spec.pim.identity.serviceAccountName"
        );
        let e = validate(&s).expect_err("invalid");
        assert!(e.reason.contains("own namespace"), "{}", e.reason);
    }
    assert_eq!(rule(&with_sa("deployer"), &p, &ctx), "allowed");
    p.spec.pim.as_mut().expect("pim").service_accounts = Some(vec!["deployer".into()]);
    assert_eq!(rule(&with_sa("deployer"), &p, &ctx), "allowed");
    assert_eq!(rule(&with_sa("builder"), &p, &ctx), "PimServiceAccount");
    p.spec.pim.as_mut().expect("pim").service_accounts = Some(vec![]);
    assert_eq!(rule(&with_sa("deployer"), &p, &ctx), "PimServiceAccount");
}

#[test]
fn provenance_from_gitops_metadata() {
    let l = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let argo = stamp::provenance(
        &BTreeMap::new(),
        &l(&[
            (
                "argocd.argoproj.io/tracking-id",
                "payments:accessgrant.io/AccessGrant:team-a/g1",
            ),
            ("accessgrant.io/source-revision", "3f2a9c1"),
        ]),
    )
    .expect("argo");
    assert_eq!(argo.tool, "ArgoCD");
    assert_eq!(argo.application.as_deref(), Some("payments"));
    assert_eq!(argo.revision.as_deref(), Some("3f2a9c1"));
    let flux = stamp::provenance(
        &l(&[
            ("kustomize.toolkit.fluxcd.io/name", "apps"),
            ("kustomize.toolkit.fluxcd.io/namespace", "flux-system"),
        ]),
        &BTreeMap::new(),
    )
    .expect("flux");
    assert_eq!(flux.tool, "Flux");
    assert_eq!(
        flux.application.as_deref(),
        Some("Kustomization flux-system/apps")
    );
    assert!(stamp::provenance(&BTreeMap::new(), &BTreeMap::new()).is_none());
    // Provenance is part of the signed stamp and reaches status.requester.
    let mut g = grant("g1", pim_spec(PimMode::Activate));
    g.metadata.labels = Some(l(&[
        ("kustomize.toolkit.fluxcd.io/name", "apps"),
        ("kustomize.toolkit.fluxcd.io/namespace", "flux-system"),
    ]));
    let (stamped, _) = admit(
        "system:serviceaccount:flux-system:kustomize-controller",
        &[],
        &g,
        &[allow_all_policy()],
    );
    let (_, v) = judge(
        &stamped,
        &[allow_all_policy()],
        BTreeMap::new(),
        Some(&key()),
    );
    let r = v.status.expect("requester");
    assert_eq!(r.provenance.map(|p| p.tool), Some("Flux".into()));
}

// ----- webhook and controller agree -----

fn arb_spec() -> impl Strategy<Value = AccessGrantSpec> {
    let scopes = prop::sample::select(vec![
        format!("/subscriptions/{SUB}/resourceGroups/rg1"),
        format!(
            "/subscriptions/{SUB}/resourceGroups/RG1/providers/Microsoft.Compute/virtualMachines/vm1"
        ),
        format!("/subscriptions/{SUB}/resourceGroups/rg10"),
        format!("/subscriptions/{SUB}"),
        format!("/subscriptions/{SUB}/resourceGroups/rg1/../rg2"),
        format!("/subscriptions/{SUB}//resourceGroups/rg1"),
        "/providers/Microsoft.Management/managementGroups/root".to_string(),
    ]);
    let roles = prop::sample::select(vec![
        role(),
        format!("/providers/Microsoft.Authorization/roleDefinitions/{ROLE_GUID}"),
        format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
        ),
    ]);
    let principals = prop::sample::select(vec![
        PRINCIPAL.to_string(),
        "00000000-0000-0000-0000-000000000001".to_string(),
        "not-a-guid".to_string(),
    ]);
    let prefixes = prop::sample::select(vec![
        "10.0.0.7",
        "10.1.0.0/16",
        "0.0.0.0/0",
        "*",
        "Any",
        "Internet",
        "10.0.0.0/7",
        "::ffff:10.0.0.1",
        "::/0",
        "11.0.0.1",
    ]);
    let ports = prop::sample::select(vec![22, 3389, 8080, 0, 65536]);
    let durations = prop::sample::select(vec!["PT30M", "PT1H", "PT8H", "PT9H", "P1M", "PT0S"]);
    let sas = prop::sample::select(vec![
        None,
        Some("deployer"),
        Some("builder"),
        Some("system:serviceaccount:team-b:deployer"),
    ]);
    (
        any::<bool>(),
        (scopes, roles, principals, any::<bool>(), sas),
        (prefixes, ports),
        durations,
        (any::<bool>(), any::<bool>(), any::<bool>(), 0u8..4),
    )
        .prop_map(
            |(is_pim, (sc, ro, pr, assign, sa), (pfx, port), dur, (just, ticket, bg, renew))| {
                let mut s = if is_pim {
                    let mut s = pim_spec(if assign {
                        PimMode::Assign
                    } else {
                        PimMode::Activate
                    });
                    let p = s.pim.as_mut().expect("pim");
                    p.scope = sc;
                    p.role_definition_id = ro;
                    p.principal_id = pr;
                    p.identity = sa.map(|n| GrantIdentity {
                        service_account_name: n.into(),
                        client_id: "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea2".into(),
                        tenant_id: "3c0a2b4e-7d1f-4c6a-9e8b-1f2a3b4c5d6e".into(),
                    });
                    s
                } else {
                    let mut s = jit_spec();
                    let p = &mut s.jit.as_mut().expect("jit").virtual_machines[0].ports[0];
                    p.number = port;
                    p.allowed_source_address_prefix = Some(pfx.into());
                    s
                };
                s.duration = IsoDuration::new(dur);
                if !just {
                    s.justification = None;
                }
                if ticket {
                    s.ticket = Some(TicketSpec {
                        system: "ServiceNow".into(),
                        number: "INC-1".into(),
                    });
                }
                if bg {
                    s.break_glass = Some(true);
                }
                s.renewal = match renew {
                    1 => Some(RenewalSpec {
                        until: t0() + chrono::Duration::hours(12),
                        before: None,
                    }),
                    2 => Some(RenewalSpec {
                        until: t0() + chrono::Duration::days(3),
                        before: None,
                    }),
                    _ => None,
                };
                s
            },
        )
}

fn arb_policies() -> impl Strategy<Value = Vec<AccessPolicy>> {
    (0u8..6, any::<bool>(), any::<bool>()).prop_map(|(variant, ticket, verified)| {
        let mut p = allow_all_policy();
        p.spec.require_ticket = ticket;
        p.spec.require_verified_requester = verified;
        match variant {
            0 => return vec![],
            1 => {
                p.spec.break_glass = Some(BreakGlassRules {
                    max_duration: Some(IsoDuration::new("PT1H")),
                    requesters: vec!["group:oncall".into()],
                })
            }
            2 => p.spec.pim.as_mut().expect("pim").service_accounts = Some(vec!["deployer".into()]),
            3 => p.spec.renewal = None,
            4 => p.spec.pim.as_mut().expect("pim").scopes = vec![scope()],
            _ => {}
        }
        vec![p]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn webhook_and_controller_give_the_same_verdict(
        spec in arb_spec(),
        policies in arb_policies(),
        user in prop::sample::select(vec![("alice", vec!["oncall"]), ("bob", vec!["dev"])]),
    ) {
        let g = grant("g1", spec);
        let groups: Vec<&str> = user.1.clone();
        let m = webhook::mutate(&review("CREATE", user.0, &groups, &g, None), &key(), t0());
        prop_assert!(m.allowed);
        let stamped = apply(&g, &m);
        let v = webhook::validate(
            &review("CREATE", user.0, &groups, &stamped, None),
            &policies,
            BTreeMap::new(),
            &key(),
            t0(),
        );
        // What the apiserver stores, then what the controller decides about it.
        let mut stored = stamped.clone();
        stored.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(t0().timestamp()).expect("time"),
        ));
        stored.metadata.uid = Some("6b7e5d4c-0000-4000-8000-000000000001".into());
        let (d, verified) = judge(&stored, &policies, BTreeMap::new(), Some(&key()));
        prop_assert_eq!(verified.status.map(|r| r.username), Some(user.0.to_string()));
        match d.refusal() {
            None => prop_assert!(v.allowed, "webhook refused what the controller allows: {}", v.result.message),
            Some((reason, message)) => {
                prop_assert!(!v.allowed, "webhook allowed what the controller refuses: {}", message);
                prop_assert_eq!(v.result.reason.clone(), reason);
                prop_assert_eq!(v.result.message.clone(), message);
            }
        }
    }
}

#[test]
fn values_are_json() {
    // The admission response serialises as Kubernetes expects (status.code, reason, message).
    let r = webhook::mutate(
        &review(
            "CREATE",
            "mallory",
            &[],
            &{
                let mut g = grant("g1", pim_spec(PimMode::Activate));
                g.metadata.annotations = Some(BTreeMap::from([(
                    SIGNATURE_ANNOTATION.to_string(),
                    "x".to_string(),
                )]));
                g
            },
            None,
        ),
        &key(),
        t0(),
    );
    let v: Value = serde_json::to_value(r.into_review()).expect("json");
    assert_eq!(v["response"]["allowed"], json!(false));
    assert_eq!(v["response"]["status"]["code"], json!(403));
    assert_eq!(
        v["response"]["status"]["reason"],
        json!(webhook::REASON_STAMP)
    );
}
