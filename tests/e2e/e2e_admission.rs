//! End to end with the admission webhook registered in kube-sim (failurePolicy Fail): every
//! escalation attempt is refused at admission with a precise reason and makes zero Azure
//! calls; the requester is verified and recorded; break-glass and dry run behave.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use e2e_support::*;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;

fn policy() -> AccessPolicy {
    serde_json::from_value(json!({
        "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "guard-esc"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"team": "esc"}},
            "jit": {"virtualMachines": [format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg())], "ports": [22], "sourcePrefixes": ["10.0.0.0/8"]},
            "pim": {"scopes": [rg()], "roleDefinitionIds": [role(READER)], "principals": [OPERATOR_OID, DEPLOYER_OID], "modes": ["Activate", "Assign"], "serviceAccounts": ["deployer"]},
            "maxDuration": "PT2H",
            "renewal": {"maxTotalDuration": "PT4H"},
            "requireTicket": true,
            "breakGlass": {"maxDuration": "PT1H", "requesters": ["group:oncall"]}
        }
    }))
    .expect("policy")
}

fn ticketed(mut g: AccessGrant) -> AccessGrant {
    g.spec.ticket = Some(TicketSpec {
        system: "ServiceNow".into(),
        number: "CHG-1".into(),
    });
    g
}

fn pim(name: &str, f: impl FnOnce(&mut PimTarget)) -> AccessGrant {
    let mut g = ticketed(pim_grant(name, "Activate", READER, "PT1H"));
    f(g.spec.pim.as_mut().expect("pim"));
    g
}

fn jit(name: &str, port: i32, prefix: &str) -> AccessGrant {
    ticketed(jit_grant(name, 1, port, prefix, "PT1H"))
}

/// Creates and expects a refusal whose reason is `reason` (and whose message mentions `text`).
async fn refused(api: &Api<AccessGrant>, g: &AccessGrant, reason: &str, text: &str) {
    let name = g.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), g).await {
        Ok(_) => panic!("{name}: created, expected a refusal with reason {reason}"),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.reason, reason, "{name}: {}", e.message);
            assert!(
                e.message.contains(text),
                "{name}: message {:?} does not mention {text:?}",
                e.message
            );
        }
        Err(e) => panic!("{name}: unexpected error {e}"),
    }
}

fn arm_calls(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| {
            c["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/subscriptions") || p.starts_with("/providers"))
        })
        .map(|c| format!("{} {}", c["method"], c["path"]))
        .collect()
}

#[tokio::test]
async fn escalations_are_refused_at_admission_and_the_requester_is_verified() {
    let mut env = Env::start_bare().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    env.register_webhooks(addr).await;
    env.namespace("esc", false).await;
    env.namespace("esc-other", false).await;
    Api::<AccessPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy())
        .await
        .expect("policy");
    env.start_operator_with(&[("WEBHOOK_ADDR", &addr.to_string())]);

    // The operator patches its self-generated CA into both configurations.
    let client = env.client.clone();
    wait::eventually(
        "the webhook CA bundle to be patched",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let client = client.clone();
            async move {
                use k8s_openapi::api::admissionregistration::v1::{
                    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
                };
                let m = Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .get("accessgrant-operator")
                    .await
                    .map_err(|e| e.to_string())?;
                let v = Api::<ValidatingWebhookConfiguration>::all(client)
                    .get("accessgrant-operator")
                    .await
                    .map_err(|e| e.to_string())?;
                let has = |b: Option<&k8s_openapi::ByteString>| b.is_some_and(|b| !b.0.is_empty());
                let ok = m
                    .webhooks
                    .unwrap_or_default()
                    .iter()
                    .all(|w| has(w.client_config.ca_bundle.as_ref()))
                    && v.webhooks
                        .unwrap_or_default()
                        .iter()
                        .all(|w| has(w.client_config.ca_bundle.as_ref()));
                if ok {
                    Ok(())
                } else {
                    Err("no caBundle yet".into())
                }
            }
        },
    )
    .await;

    let alice_client = env.client_as("alice@example.com", &["oncall"]).await;
    let bob_client = env.client_as("bob@example.com", &["dev"]).await;
    let alice: Api<AccessGrant> = Api::namespaced(alice_client.clone(), "esc");
    let bob: Api<AccessGrant> = Api::namespaced(bob_client, "esc");

    // The webhook is serving once a dry-run create of a valid grant passes admission.
    let probe = jit("probe", 22, "10.0.0.7");
    let a2 = alice.clone();
    wait::eventually(
        "the webhook to answer",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let a2 = a2.clone();
            let probe = probe.clone();
            async move {
                a2.create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &probe,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        },
    )
    .await;

    let sub = SUB;
    let cases: Vec<(AccessGrant, &str, &str)> = vec![
        // Scopes escaping the allowed resource group.
        (
            pim("dotdot", |p| p.scope = format!("{}/../rg-other", rg())),
            "InvalidSpec",
            "spec.pim.scope",
        ),
        (
            pim("trailing", |p| p.scope = format!("{}/", rg())),
            "InvalidSpec",
            "spec.pim.scope",
        ),
        (
            pim("doubled", |p| {
                p.scope = format!("/subscriptions/{sub}//resourceGroups/rg-sandbox")
            }),
            "InvalidSpec",
            "spec.pim.scope",
        ),
        (
            pim("sibling", |p| p.scope = format!("{}2", rg())),
            "PimScope",
            "not at or beneath",
        ),
        (
            pim("parent-sub", |p| p.scope = format!("/SUBSCRIPTIONS/{sub}")),
            "PimScope",
            "not at or beneath",
        ),
        // A management group above the allowed scope, with a subscription's role id: the
        // scope denial is what the requester must hear (issue 23), not the role id mismatch.
        (
            pim("parent-mg", |p| {
                p.scope = "/providers/Microsoft.Management/managementGroups/root".into()
            }),
            "PimScope",
            "is not at or beneath an allowed scope",
        ),
        // Roles and principals.
        (
            pim("owner", |p| p.role_definition_id = role(OWNER)),
            "PimRoleDefinition",
            OWNER,
        ),
        (
            pim("same-guid", |p| {
                p.role_definition_id =
                    format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}")
            }),
            "PimRoleDefinition",
            "not allowed",
        ),
        (
            pim("principal", |p| {
                p.principal_id = "00000000-0000-0000-0000-00000000beef".into()
            }),
            "PimPrincipal",
            "not allowed",
        ),
        // Identities from another namespace, or not allowed by policy.
        (
            pim("sa-other-ns", |p| {
                p.identity = Some(GrantIdentity {
                    service_account_name: "system:serviceaccount:esc-other:deployer".into(),
                    client_id: DEPLOYER_APP.into(),
                    tenant_id: TENANT.into(),
                })
            }),
            "InvalidSpec",
            "own namespace",
        ),
        (
            pim("sa-other-ns2", |p| {
                p.identity = Some(GrantIdentity {
                    service_account_name: "esc-other/deployer".into(),
                    client_id: DEPLOYER_APP.into(),
                    tenant_id: TENANT.into(),
                })
            }),
            "InvalidSpec",
            "own namespace",
        ),
        (
            pim("sa-builder", |p| {
                p.principal_id = DEPLOYER_OID.into();
                p.identity = Some(GrantIdentity {
                    service_account_name: "builder".into(),
                    client_id: DEPLOYER_APP.into(),
                    tenant_id: TENANT.into(),
                })
            }),
            "PimServiceAccount",
            "builder",
        ),
        // Source prefixes wider than allowed.
        (
            jit("any-v4", 22, "0.0.0.0/0"),
            "JitSourcePrefix",
            "0.0.0.0/0",
        ),
        (
            jit("star", 22, "*"),
            "InvalidSpec",
            "allowedSourceAddressPrefix",
        ),
        (
            jit("any-tag", 22, "Any"),
            "InvalidSpec",
            "allowedSourceAddressPrefix",
        ),
        (
            jit("internet", 22, "Internet"),
            "InvalidSpec",
            "allowedSourceAddressPrefix",
        ),
        (
            jit("overlap", 22, "10.0.0.0/7"),
            "JitSourcePrefix",
            "10.0.0.0/7",
        ),
        (jit("v6-any", 22, "::/0"), "JitSourcePrefix", "::/0"),
        (
            jit("v4-mapped", 22, "::ffff:10.0.0.1"),
            "JitSourcePrefix",
            "::ffff:10.0.0.1",
        ),
        // Ports and durations.
        (jit("rdp", 3389, "10.0.0.7"), "JitPort", "3389"),
        (
            with_spec(jit("long", 22, "10.0.0.7"), |s| {
                s.duration = IsoDuration::new("PT3H")
            }),
            "MaxDuration",
            "PT3H",
        ),
        (
            with_spec(jit("renew-long", 22, "10.0.0.7"), |s| {
                s.renewal = Some(RenewalSpec {
                    until: accessgrant_operator::clock::now() + chrono::Duration::hours(30),
                    before: None,
                })
            }),
            "RenewalLimit",
            "PT4H",
        ),
        // Ticket rule, and break-glass by someone not allowed to break it.
        (
            jit_grant("no-ticket", 1, 22, "10.0.0.7", "PT1H"),
            "TicketRequired",
            "ticket",
        ),
        // A forged requester.
        (
            {
                let mut g = jit("forged", 22, "10.0.0.7");
                g.metadata.annotations = Some(
                    [
                        (
                            "accessgrant.io/requester".to_string(),
                            r#"{"user":"admin"}"#.to_string(),
                        ),
                        (
                            "accessgrant.io/requester-signature".to_string(),
                            "hmac-sha256:v1:AAAA".to_string(),
                        ),
                    ]
                    .into(),
                );
                g
            },
            "RequesterStamp",
            "accessgrant.io/requester",
        ),
    ];
    for (g, reason, text) in &cases {
        refused(&alice, g, reason, text).await;
    }
    let bg_bob = with_spec(jit_grant("bg-bob", 1, 22, "10.0.0.7", "PT30M"), |s| {
        s.break_glass = Some(true)
    });
    refused(&bob, &bg_bob, "BreakGlassRequester", "bob@example.com").await;
    // None of them exists, and Azure was never called.
    for (g, _, _) in &cases {
        let name = g.metadata.name.clone().unwrap_or_default();
        assert!(
            alice.get_opt(&name).await.expect("get").is_none(),
            "{name} exists"
        );
    }
    assert_eq!(
        arm_calls(&env.calls().await),
        Vec::<String>::new(),
        "ARM calls for refused grants"
    );

    // A valid grant: Active, with the verified requester recorded.
    alice
        .create(&PostParams::default(), &jit("ssh", 22, "10.0.0.7"))
        .await
        .expect("create ssh");
    let g = wait_for(&alice, "ssh", "Active", 60, phase(Phase::Active)).await;
    let st = g.status.clone().expect("status");
    assert_eq!(st.requested_by.as_deref(), Some("alice@example.com"));
    let who = st.requester.clone().expect("requester");
    assert!(who.groups.iter().any(|x| x == "oncall"), "{who:?}");
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == "RequesterVerified")
        .expect("condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Stamped")
    );

    // Editing the target of the Active grant is refused, and so is touching the stamp.
    let edit = json!({"spec": {"jit": {"virtualMachines": [{"id": vm(2), "ports": [{"number": 22, "allowedSourceAddressPrefix": "10.0.0.7"}]}]}}});
    let e = alice
        .patch("ssh", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect_err("target edit");
    assert!(e.to_string().contains("immutable"), "{e}");
    let forge = json!({"metadata": {"annotations": {"accessgrant.io/requester-signature": "hmac-sha256:v1:AAAA"}}});
    match alice
        .patch("ssh", &PatchParams::default(), &Patch::Merge(&forge))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.reason, "RequesterStamp", "{}", e.message),
        other => panic!("stamp edit: {other:?}"),
    }

    // Break-glass by an on-call engineer: no ticket needed, Warning event, audit line, metric.
    let bg = with_spec(jit_grant("bg", 2, 22, "10.0.0.9", "PT30M"), |s| {
        s.break_glass = Some(true)
    });
    alice
        .create(&PostParams::default(), &bg)
        .await
        .expect("break-glass create");
    wait_for(&alice, "bg", "Active", 60, phase(Phase::Active)).await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "esc");
    // Events are published right after the status write: wait for them.
    let warnings = wait::eventually(
        "the BreakGlass event",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let events = events.clone();
            async move {
                let w: Vec<_> = events
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some("BreakGlass"))
                    .collect();
                if w.is_empty() {
                    Err("no BreakGlass event yet".to_string())
                } else {
                    Ok(w)
                }
            }
        },
    )
    .await;
    assert_eq!(warnings.len(), 1, "one BreakGlass event");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        warnings[0]
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("alice@example.com")
    );
    let (_, metrics) = env.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "accessgrant_break_glass_total",
            &[("kind", "JIT")]
        ),
        Some(1.0)
    );
    assert!(
        env.operator_output()
            .lines()
            .any(|l| l.contains("\"audit\":\"BreakGlass\"") && l.contains("alice@example.com")),
        "BreakGlass audit line"
    );

    // Dry run: checked (reads only), recorded, nothing written.
    let writes_before = arm_calls(&env.calls().await)
        .into_iter()
        .filter(|c| !c.starts_with("\"GET\""))
        .count();
    let dry = with_spec(pim("dry", |_| {}), |s| s.dry_run = Some(true));
    alice
        .create(&PostParams::default(), &dry)
        .await
        .expect("dry-run create");
    let g = wait_for(&alice, "dry", "DryRun", 60, phase(Phase::DryRun)).await;
    let d = g.status.and_then(|s| s.dry_run).expect("status.dryRun");
    assert!(
        d.request.starts_with("PUT /subscriptions/"),
        "{}",
        d.request
    );
    assert!(
        d.request.contains("roleAssignmentScheduleRequests"),
        "{}",
        d.request
    );
    assert!(d.body.contains("SelfActivate"), "{}", d.body);
    let writes_after = arm_calls(&env.calls().await)
        .into_iter()
        .filter(|c| !c.starts_with("\"GET\""))
        .count();
    assert_eq!(
        writes_before, writes_after,
        "a dry run writes nothing to Azure"
    );
    assert_eq!(
        count(&env.calls().await, "RoleAssignmentScheduleRequests_Create"),
        0
    );

    // With the webhook out of the way, a forged stamp reaches the controller: it is ignored,
    // reported in a condition and a Warning event, and no requester is recorded.
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .delete("accessgrant-operator", &Default::default())
        .await
        .expect("delete mwc");
    Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .delete("accessgrant-operator", &Default::default())
        .await
        .expect("delete vwc");
    let mut forged = jit("forged-late", 22, "10.0.0.8");
    forged.metadata.annotations = Some(
        [
            (
                "accessgrant.io/requester".to_string(),
                r#"{"user":"admin","at":"2026-11-23T09:00:00Z","name":"forged-late","spec":"00"}"#
                    .to_string(),
            ),
            (
                "accessgrant.io/requester-signature".to_string(),
                "hmac-sha256:v1:AAAA".to_string(),
            ),
        ]
        .into(),
    );
    let admin_api: Api<AccessGrant> = Api::namespaced(env.client.clone(), "esc");
    admin_api
        .create(&PostParams::default(), &forged)
        .await
        .expect("create without webhook");
    let g = wait_for(
        &admin_api,
        "forged-late",
        "RequesterVerified=False",
        60,
        |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "RequesterVerified" && c.reason == "StampInvalid")
        },
    )
    .await;
    let st = g.status.expect("status");
    assert_eq!(st.requested_by, None);
    assert!(st.requester.is_none());
    let invalid_events = wait::eventually(
        "the StampInvalid event",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let events = events.clone();
            async move {
                let n = events
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter(|e| {
                        e.reason.as_deref() == Some("StampInvalid")
                            && e.type_.as_deref() == Some("Warning")
                    })
                    .count();
                if n == 0 {
                    Err("none yet".to_string())
                } else {
                    Ok(n)
                }
            }
        },
    )
    .await;
    assert!(invalid_events >= 1, "StampInvalid Warning event");
}
