//! JIT behaviour over HTTPS: initiate, policy rules, supersede, expiry, out-of-band revoke,
//! policy CRUD, errors.

use crate::azure_support;

use std::time::Duration;

use azure_support::*;
use serde_json::{Value, json};

fn port_req(port: u64, prefix: &str, duration: &str) -> Value {
    json!({
        "virtualMachines": [{"id": VM1, "ports": [
            {"number": port, "duration": duration, "allowedSourceAddressPrefix": prefix}
        ]}],
        "justification": "[ag:team-a/ssh#1]",
    })
}

/// The request in the policy whose justification is `marker`, port `port`.
fn find_port(policy: &Value, marker: &str, port: u64) -> Option<Value> {
    policy["properties"]["requests"]
        .as_array()?
        .iter()
        .filter(|r| r["justification"] == marker)
        .flat_map(|r| r["virtualMachines"].as_array().cloned().unwrap_or_default())
        .flat_map(|vm| vm["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| p["number"] == port)
}

#[tokio::test]
async fn initiate_opens_the_port_and_the_policy_shows_it() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let end = (chrono_now() + chrono::Duration::minutes(30)).to_rfc3339();
    let r = sim
        .jit_initiate(
            &tok,
            json!({
                "virtualMachines": [{"id": VM1, "ports": [
                    {"number": 22, "endTimeUtc": end, "allowedSourceAddressPrefix": "10.1.2.3"}
                ]}],
                "justification": "marker-1",
            }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.header("x-ms-ratelimit-remaining-subscription-writes")
            .is_some()
    );
    let p = &r.body["virtualMachines"][0]["ports"][0];
    assert_eq!(p["status"], "Initiated");
    assert_eq!(p["statusReason"], "UserRequested");
    assert_eq!(r.body["requestor"], OPERATOR_OID);
    let start = r.body["startTimeUtc"]
        .as_str()
        .expect("startTimeUtc")
        .to_string();

    let g = sim.jit_get(&tok).await;
    assert_eq!(g.status, 200);
    let port = find_port(&g.body, "marker-1", 22).expect("request in policy");
    assert_eq!(port["status"], "Initiated");
    let req = g.body["properties"]["requests"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["justification"] == "marker-1").cloned())
        .unwrap_or_default();
    assert_eq!(req["startTimeUtc"], start.as_str());
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    // Tests may read the clock (the disallowed-methods lint targets the product code).
    #[allow(clippy::disallowed_methods)]
    chrono::Utc::now()
}

#[tokio::test]
async fn policy_rules_are_enforced() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let cases: Vec<(Value, &str)> = vec![
        (port_req(8080, "10.0.0.1", "PT1H"), "JitPortNotInPolicy"),
        (port_req(22, "10.0.0.1", "PT4H"), "JitDurationExceedsPolicy"),
        (
            port_req(22, "192.168.1.1", "PT1H"),
            "JitSourcePrefixNotAllowed",
        ),
        (
            port_req(22, "not-an-ip", "PT1H"),
            "JitInvalidSourceAddressPrefix",
        ),
        (port_req(22, "10.0.0.1", "forever"), "JitInvalidEndTime"),
        (
            json!({"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "duration": "PT1H", "endTimeUtc": "2030-01-01T00:00:00Z", "allowedSourceAddressPrefix": "10.0.0.1"}]}]}),
            "JitInvalidEndTime",
        ),
        (
            json!({"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "allowedSourceAddressPrefix": "10.0.0.1"}]}]}),
            "JitInvalidEndTime",
        ),
        (
            json!({"virtualMachines": [{"id": VM1.replace("vm-sandbox-1", "vm-other"), "ports": [{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "10.0.0.1"}]}]}),
            "JitVirtualMachineNotInPolicy",
        ),
    ];
    for (body, detail) in cases {
        let r = sim.jit_initiate(&tok, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.code(), "BadRequest");
        assert_eq!(r.body["error"]["details"][0]["code"], detail, "{}", r.body);
    }
    for bad in [json!({}), json!({"virtualMachines": "x"}), json!([1, 2])] {
        let r = sim.jit_initiate(&tok, bad.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "InvalidRequestContent"),
            "{bad}"
        );
    }
    // Nothing was recorded by the refused requests.
    let g = sim.jit_get(&tok).await;
    assert_eq!(g.body["properties"]["requests"], json!([]));
    // A contained prefix, PascalCase keys and the plural form are accepted.
    let r = sim
        .jit_initiate(
            &tok,
            json!({"VirtualMachines": [{"Id": VM1, "Ports": [{"Number": 3389, "Duration": "PT3H", "AllowedSourceAddressPrefixes": ["10.20.0.0/16"]}]}]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.body["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"],
        "10.20.0.0/16"
    );
}

#[tokio::test]
async fn a_newer_request_supersedes_the_older_one() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let mut first = port_req(22, "10.0.0.5", "PT1H");
    first["justification"] = json!("first");
    assert_eq!(sim.jit_initiate(&tok, first).await.status, 202);
    let mut second = port_req(22, "10.0.0.5", "PT2H");
    second["justification"] = json!("second");
    assert_eq!(sim.jit_initiate(&tok, second).await.status, 202);
    let g = sim.jit_get(&tok).await;
    let old = find_port(&g.body, "first", 22).expect("first");
    assert_eq!(
        (old["status"].as_str(), old["statusReason"].as_str()),
        (Some("Revoked"), Some("NewerRequestInitiated"))
    );
    let new = find_port(&g.body, "second", 22).expect("second");
    assert_eq!(new["status"], "Initiated");
}

#[tokio::test]
async fn ports_expire_by_wall_clock() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let mut b = port_req(3389, "10.0.0.7", "PT2S");
    b["justification"] = json!("short");
    assert_eq!(sim.jit_initiate(&tok, b).await.status, 202);
    let port = wait_for("JIT expiry", Duration::from_secs(15), || async {
        let g = sim.jit_get(&tok).await;
        find_port(&g.body, "short", 3389).filter(|p| p["status"] == "Revoked")
    })
    .await;
    assert_eq!(port["statusReason"], "Expired");
    // An end time already in the past is recorded as expired at once.
    let past = json!({"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "endTimeUtc": "2018-07-12T09:53:03.3658798Z", "allowedSourceAddressPrefix": "10.0.0.1"}]}]});
    let r = sim.jit_initiate(&tok, past).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.body["virtualMachines"][0]["ports"][0]["statusReason"],
        "Expired"
    );
}

#[tokio::test]
async fn out_of_band_revoke_marks_user_requested() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    assert_eq!(
        sim.jit_initiate(&tok, port_req(22, "10.0.0.9", "PT1H"))
            .await
            .status,
        202
    );
    let r = sim
        .control(
            "POST",
            "/_sim/jit/revoke",
            Some(&json!({"vmId": VM1, "port": 22})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let g = sim.jit_get(&tok).await;
    let p = find_port(&g.body, "[ag:team-a/ssh#1]", 22).expect("port");
    assert_eq!(
        (p["status"].as_str(), p["statusReason"].as_str()),
        (Some("Revoked"), Some("UserRequested"))
    );
    let again = sim
        .control(
            "POST",
            "/_sim/jit/revoke",
            Some(&json!({"vmId": VM1, "port": 22})),
        )
        .await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn policy_crud_and_errors() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let path = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-sandbox/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/extra?api-version=2020-01-01"
    );
    let missing = sim.call("GET", &path, Some(&tok), None).await;
    assert_eq!((missing.status, missing.code()), (404, "ResourceNotFound"));
    let init = sim
        .call(
            "POST",
            &path.replace("extra?", "extra/initiate?"),
            Some(&tok),
            Some(&port_req(22, "10.0.0.1", "PT1H")),
        )
        .await;
    assert_eq!((init.status, init.code()), (404, "ResourceNotFound"));

    let vm2 = VM1.replace("vm-sandbox-1", "vm-sandbox-2");
    let bad_duration = json!({"properties": {"virtualMachines": [{"id": vm2, "ports": [{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "P2D"}]}]}});
    let r = sim
        .call("PUT", &path, Some(&tok), Some(&bad_duration))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let both = json!({"properties": {"virtualMachines": [{"id": vm2, "ports": [{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "allowedSourceAddressPrefixes": ["10.0.0.0/8"], "maxRequestAccessDuration": "PT1H"}]}]}});
    let r = sim.call("PUT", &path, Some(&tok), Some(&both)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let ok = json!({"kind": "Basic", "properties": {"virtualMachines": [{"id": vm2, "ports": [{"number": 22, "protocol": "tcp", "allowedSourceAddressPrefixes": ["10.0.0.0/8"], "maxRequestAccessDuration": "PT1H"}]}]}});
    let r = sim.call("PUT", &path, Some(&tok), Some(&ok)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        r.body["properties"]["virtualMachines"][0]["ports"][0]["protocol"],
        "TCP"
    );
    assert_eq!(r.body["location"], "westeurope");

    let list = sim
        .call("GET", &format!("/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"), Some(&tok), None)
        .await;
    assert_eq!(
        list.body["value"].as_array().map(Vec::len),
        Some(2),
        "{}",
        list.body
    );
    let by_region = sim
        .call("GET", &format!("/subscriptions/{SUB}/providers/Microsoft.Security/locations/northeurope/jitNetworkAccessPolicies?api-version=2020-01-01"), Some(&tok), None)
        .await;
    assert_eq!(by_region.body["value"].as_array().map(Vec::len), Some(0));

    assert_eq!(
        sim.call("DELETE", &path, Some(&tok), None).await.status,
        200
    );
    assert_eq!(
        sim.call("DELETE", &path, Some(&tok), None).await.status,
        204
    );

    let no_version = sim.call("GET", JIT_POLICY, Some(&tok), None).await;
    assert_eq!(
        (no_version.status, no_version.code()),
        (400, "MissingApiVersionParameter")
    );
    let wrong = sim
        .call(
            "GET",
            &format!("{JIT_POLICY}?api-version=2020-10-01"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (400, "InvalidApiVersionParameter")
    );
    let no_rg = sim
        .call("GET", &format!("/subscriptions/{SUB}/resourceGroups/nope/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"), Some(&tok), None)
        .await;
    assert_eq!((no_rg.status, no_rg.code()), (404, "ResourceGroupNotFound"));
}

#[tokio::test]
async fn initiating_knob_reproduces_the_examples_off_enum_status() {
    let sim = Sim::start_with(|y| {
        set_yaml(
            y,
            &["settings", "jitInitiateStatus"],
            serde_norway::Value::String("Initiating".into()),
        );
    })
    .await;
    let tok = sim.operator().await;
    let mut b = port_req(22, "10.0.0.3", "PT1H");
    b["justification"] = json!("knob");
    let r = sim.jit_initiate(&tok, b).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.body["virtualMachines"][0]["ports"][0]["status"],
        "Initiating"
    );
    let g = sim.jit_get(&tok).await;
    assert_eq!(
        find_port(&g.body, "knob", 22).map(|p| p["status"].clone()),
        Some(json!("Initiated"))
    );
}
