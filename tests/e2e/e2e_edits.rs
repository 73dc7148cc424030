//! Honest lifecycle when grants are edited, through the real kubectl as ordinary users:
//! - a second user extends alice's Active JIT and PIM Assign grants by editing `duration`:
//!   Azure's end moves (no gap), alice stays `requestedBy`, bob is `editedBy` and in history;
//! - text that would forge Azure's attribution, and the inputs whose messages misled, are
//!   refused at admission with the right message.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use e2e_support::*;
use kube::api::Api;
use serde_json::json;
use std::time::Duration;

const NS: &str = "edits";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

fn manifest(g: &AccessGrant) -> String {
    let mut v = serde_json::to_value(g).expect("json");
    v["metadata"]["namespace"] = json!(NS);
    v.to_string()
}

fn policy_spec() -> serde_json::Value {
    json!({
        "jit": {"virtualMachines": [format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg())], "ports": [22, 3389], "sourcePrefixes": ["10.0.0.0/8"]},
        "pim": {"scopes": [rg()], "roleDefinitionIds": [role(READER)], "principals": [DEPLOYER_OID], "modes": ["Assign"]},
        "maxDuration": "PT4H"
    })
}

fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Azure's end of the open JIT port for `prefix`, and of the PIM instance for `principal`.
async fn azure_ends(
    env: &Env,
    prefix: &str,
    principal: &str,
) -> (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    let st = env.state().await;
    let jit = st
        .jit_requests()
        .flat_map(|(_, r)| r.virtual_machines.iter().flat_map(|v| v.ports.iter()))
        .filter(|p| {
            p.open()
                && (p.allowed_source_address_prefix.as_deref() == Some(prefix)
                    || p.allowed_source_address_prefixes
                        .iter()
                        .any(|x| x == prefix))
        })
        .filter_map(|p| p.end_time_utc.as_deref().map(parse_time))
        .max();
    let pim = st
        .role_assignment_schedule_instances
        .iter()
        .filter(|i| i.properties.principal_id.eq_ignore_ascii_case(principal))
        .filter_map(|i| i.properties.end_date_time.as_deref().map(parse_time))
        .max();
    (jit, pim)
}

async fn with_webhook(env: &mut Env) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    env.register_webhooks(addr).await;
    env.namespace_with_policy(NS, policy_spec()).await;
    env.bind(ALICE, "accessgrant-requester").await;
    env.bind(BOB, "accessgrant-requester").await;
    env.start_operator_with(&[("WEBHOOK_ADDR", &addr.to_string())]);
    env.webhook_serving(NS, ALICE, &[]).await;
}

#[tokio::test]
async fn a_second_user_extends_active_jit_and_pim_assign_grants_by_editing_duration() {
    let mut env = Env::start_bare().await;
    with_webhook(&mut env).await;
    let api: Api<AccessGrant> = Api::namespaced(env.client.clone(), NS);
    let alice = Some((ALICE, &[][..]));
    let bob = Some((BOB, &[][..]));
    let prefix = "10.7.7.7";
    let ssh = jit_grant("ssh", 1, 22, prefix, "PT30M");
    let assign = with_spec(pim_grant("reader", "Assign", READER, "PT30M"), |s| {
        s.pim.as_mut().expect("pim").principal_id = DEPLOYER_OID.into()
    });
    for g in [&ssh, &assign] {
        let out = env
            .kubectl(alice, &["apply", "-f", "-"], Some(&manifest(g)))
            .await;
        assert!(out.ok, "create: {}", out.stderr);
    }
    let mut starts = Vec::new();
    for n in ["ssh", "reader"] {
        let g = wait_for(&api, n, "Active", 60, phase(Phase::Active)).await;
        starts.push(g.status.and_then(|s| s.start_time).expect("start"));
    }
    let (jit_end, pim_end) = azure_ends(&env, &format!("{prefix}/32"), DEPLOYER_OID).await;
    let (jit_end, pim_end) = (jit_end.expect("JIT open"), pim_end.expect("PIM in force"));

    // Bob extends both to an hour.
    for n in ["ssh", "reader"] {
        let out = env
            .kubectl(
                bob,
                &[
                    "patch",
                    &format!("accessgrant/{n}"),
                    "-n",
                    NS,
                    "--type",
                    "merge",
                    "-p",
                    r#"{"spec":{"duration":"PT1H"}}"#,
                ],
                None,
            )
            .await;
        assert!(out.ok, "bob's edit of {n}: {}", out.stderr);
    }
    // Azure's ends move to start + PT1H, and access never lapsed: it is open all along.
    let (new_jit, new_pim) = wait::eventually(
        "Azure's ends to move to start + PT1H",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let (j, p) = azure_ends(&env, &format!("{prefix}/32"), DEPLOYER_OID).await;
            match (j, p) {
                (Some(j), Some(p))
                    if j > jit_end + chrono::Duration::minutes(25)
                        && p > pim_end + chrono::Duration::minutes(25) =>
                {
                    Ok((j, p))
                }
                other => Err(format!("{other:?} (were {jit_end}, {pim_end})")),
            }
        },
    )
    .await;
    for (end, start) in [(new_jit, starts[0]), (new_pim, starts[1])] {
        let off = (end - (start + chrono::Duration::hours(1)))
            .num_seconds()
            .abs();
        assert!(off <= 30, "end {end} is not start {start} + PT1H");
    }
    for n in ["ssh", "reader"] {
        // The status follows Azure's answer (it may still say Renewing for a moment).
        let soon = accessgrant_operator::clock::now() + chrono::Duration::minutes(50);
        let g = wait_for(&api, n, "Active with the later end", 60, |s| {
            s.phase == Phase::Active && s.end_time.is_some_and(|e| e > soon)
        })
        .await;
        let st = g.status.expect("status");
        assert_eq!(st.requested_by.as_deref(), Some(ALICE), "{n}");
        assert_eq!(st.edited_by.as_deref(), Some(BOB), "{n}");
        assert!(
            st.history
                .iter()
                .any(|h| h.event == "Edited" && h.detail.ends_with(&format!("by {BOB}"))),
            "{n}: {:?}",
            st.history
        );
        let end = st.end_time.expect("end");
        assert!(
            end > accessgrant_operator::clock::now() + chrono::Duration::minutes(50),
            "{n}: {end}"
        );
    }
    // What Azure keeps says who asked and who extended.
    let st = env.state().await;
    let j = st
        .jit_requests()
        .filter_map(|(_, r)| r.justification.clone())
        .find(|j| j.contains("edited-by"))
        .expect("the extending JIT request names the editor");
    assert!(
        j.starts_with(&format!("[requested-by:{ALICE}; edited-by:{BOB}] ")),
        "{j}"
    );
}

#[tokio::test]
async fn forged_attribution_and_the_misleading_inputs_are_refused_with_the_right_message() {
    let mut env = Env::start_bare().await;
    with_webhook(&mut env).await;
    let alice = Some((ALICE, &[][..]));
    let base = jit_grant("x", 1, 22, "10.0.0.5", "PT1H");
    let cases: Vec<(&str, AccessGrant, &str)> = vec![
        (
            "spoofed requester",
            with_spec(base.clone(), |s| {
                s.justification = Some("INC-9 (requested by alice@example.com)".into())
            }),
            "must not say who asked",
        ),
        (
            "right-to-left override",
            with_spec(base.clone(), |s| {
                s.justification = Some("INC-9 \u{202E}moc.elpmaxe@ecila".into())
            }),
            "invisible format characters (found U+202E",
        ),
        (
            "weeks and days",
            with_spec(base.clone(), |s| s.duration = IsoDuration::new("P1W1D")),
            "spec.duration",
        ),
        (
            "an hour count too big for 32 bits",
            with_spec(base.clone(), |s| {
                s.duration = IsoDuration::new("PT4294967296H")
            }),
            "longer than the maximum of 366 days",
        ),
        (
            "tenant root with a subscription's role",
            with_spec(pim_grant("x", "Assign", READER, "PT1H"), |s| {
                let p = s.pim.as_mut().expect("pim");
                p.principal_id = DEPLOYER_OID.into();
                p.scope = "/".into();
            }),
            "is not at or beneath an allowed scope",
        ),
    ];
    for (what, g, want) in cases {
        let out = env
            .kubectl(alice, &["apply", "-f", "-"], Some(&manifest(&g)))
            .await;
        assert!(!out.ok, "{what} was accepted: {}", out.stdout);
        assert!(out.stderr.contains(want), "{what}: {}", out.stderr);
    }
    // Weeks alone are fine, and mean seven days.
    let out = env
        .kubectl(
            alice,
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&manifest(&with_spec(base, |s| {
                s.duration = IsoDuration::new("P1W")
            }))),
        )
        .await;
    // (P1W is longer than the policy's PT4H: refused by the policy, not as a bad duration.)
    assert!(!out.ok);
    assert!(
        out.stderr.contains("duration P7D exceeds the maximum PT4H"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("combines weeks"), "{}", out.stderr);
    // Nothing reached Azure.
    assert!(
        env.calls()
            .await
            .iter()
            .all(|c| c["operation"] != "JitNetworkAccessPolicies_Initiate"),
        "an Azure write was made"
    );
}

/// Two users' JIT grants on one VM port (different prefixes): Azure keeps one request per VM
/// port, so the second waits, saying for whom and until when, instead of closing the first;
/// once the first is revoked its prefix is closed and the second opens.
#[tokio::test]
async fn a_second_grant_on_a_held_jit_port_waits_instead_of_closing_the_first() {
    let mut env = Env::start_bare().await;
    with_webhook(&mut env).await;
    let api: Api<AccessGrant> = Api::namespaced(env.client.clone(), NS);
    let alice = Some((ALICE, &[][..]));
    let bob = Some((BOB, &[][..]));
    let out = env
        .kubectl(
            alice,
            &["apply", "-f", "-"],
            Some(&manifest(&jit_grant(
                "alice-ssh",
                1,
                22,
                "10.1.1.1",
                "PT1H",
            ))),
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    wait_for(&api, "alice-ssh", "Active", 60, phase(Phase::Active)).await;
    let out = env
        .kubectl(
            bob,
            &["apply", "-f", "-"],
            Some(&manifest(&jit_grant("bob-ssh", 1, 22, "10.2.2.2", "PT1H"))),
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    let waiting = wait_for(&api, "bob-ssh", "waiting for the port", 60, |s| {
        s.reason.as_deref() == Some("PortHeld")
    })
    .await;
    let msg = waiting.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "vm-sandbox-1:22 is held by AccessGrant {NS}/alice-ssh until "
        )),
        "{msg}"
    );
    let open = |st: &accessgrant_sim::azure::view::SimState, prefix: &str| {
        st.jit_requests()
            .flat_map(|(_, r)| r.virtual_machines.iter().flat_map(|v| v.ports.iter()))
            .any(|p| {
                p.open()
                    && p.number == 22
                    && (p.allowed_source_address_prefix.as_deref() == Some(prefix)
                        || p.allowed_source_address_prefixes
                            .iter()
                            .any(|x| x == prefix))
            })
    };
    // Some passes later, alice's access is still open and bob's was never asked for.
    let st = env.state().await;
    assert!(open(&st, "10.1.1.1/32"), "alice's port was closed");
    assert!(!open(&st, "10.2.2.2/32"));
    let g = api.get("alice-ssh").await.expect("alice");
    assert_eq!(g.status.map(|s| s.phase), Some(Phase::Active));

    // Alice revokes hers: her prefix closes, then bob's grant opens.
    let out = env
        .kubectl(
            alice,
            &["delete", "accessgrant/alice-ssh", "-n", NS, "--wait=false"],
            None,
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    wait_for(&api, "bob-ssh", "Active", 90, phase(Phase::Active)).await;
    let st = env.state().await;
    assert!(!open(&st, "10.1.1.1/32"), "alice's prefix still open");
    assert!(open(&st, "10.2.2.2/32"), "bob's prefix not open");
    let g = api.get("bob-ssh").await.expect("bob");
    assert!(
        g.status
            .expect("status")
            .history
            .iter()
            .any(|h| h.event == "Pending" && h.detail.starts_with("PortHeld")),
        "the wait is in bob's history"
    );
}
