//! Table tests for the planner: every phase transition, every seed error row, and the JIT
//! statusReasons, driven through the in-memory Azure model with an explicit clock.

use crate::support;

use accessgrant_operator::api::*;
use accessgrant_operator::azure::error::AzureError;
use accessgrant_operator::lifecycle::{PimPolicyView, Step};
use chrono::Duration;
use support::*;

type Setup = Box<dyn Fn(&mut World)>;

fn pim_key() -> (String, String, String) {
    (
        scope().to_ascii_lowercase(),
        role().to_ascii_lowercase(),
        PRINCIPAL.to_string(),
    )
}

#[test]
fn pim_activate_then_expire() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.reason(), "Granted");
    assert!(w.grant.meta.has_finalizer);
    assert_eq!(w.writes(), ["SelfActivate"]);
    // The first plan records the intent (with finalizer) before the write.
    let steps = &w
        .last
        .plans
        .iter()
        .find(|p| p.azure_write().is_some())
        .expect("a write plan")
        .steps;
    assert!(matches!(steps[0], Step::AddFinalizer));
    assert!(matches!(steps[1], Step::RecordIntent(_)));
    assert!(matches!(steps[2], Step::Azure(_)));
    let end = w.grant.status.end_time.expect("end time");
    assert_eq!(end, t0() + Duration::hours(1));
    assert_eq!(
        w.last.wake_at,
        Some(t0() + Duration::minutes(5)),
        "drift check comes first"
    );
    w.now = end + Duration::seconds(3);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Expired);
    assert_eq!(w.grant.status.status_reason.as_deref(), Some("Expired"));
    assert_eq!(w.writes(), ["SelfActivate"], "no write at natural expiry");
    // Expired is terminal: a resync re-grants nothing.
    w.advance(Duration::hours(1));
    assert_eq!(w.phase(), Phase::Expired);
    assert_eq!(w.writes().len(), 1);
}

#[test]
fn pim_assign_and_remove_on_delete() {
    let mut w = World::new(pim_spec(PimMode::Assign));
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["AdminAssign"]);
    w.now += Duration::minutes(10);
    w.delete();
    w.reconcile();
    assert_eq!(w.writes(), ["AdminAssign", "AdminRemove"]);
    // The object is gone with the finalizer; the last plan says how it ended.
    let last = &w.last.plans.last().expect("a plan").status;
    assert_eq!(
        (last.phase, last.reason.as_deref()),
        (Phase::Revoked, Some("Deleted"))
    );
    assert!(w.grant.gone, "finalizer removed after Azure confirmed");
    assert!(w.model.instances.is_empty());
}

#[test]
fn deleting_an_active_grant_reads_only_the_assignment_before_removing_it() {
    // The grant request was seen Provisioned: nothing can be pending, so the removal costs one
    // read (the assignment), not two (ARM's read budget bounds revocation bursts).
    use accessgrant_operator::lifecycle::Need;
    for mode in [PimMode::Assign, PimMode::Activate] {
        let mut w = World::new(pim_spec(mode));
        w.reconcile();
        assert_eq!(w.phase(), Phase::Active);
        assert_eq!(
            w.grant
                .status
                .pim
                .as_ref()
                .and_then(|p| p.status.as_deref()),
            Some("Provisioned")
        );
        w.now += Duration::minutes(10);
        w.delete();
        w.reconcile();
        let needs: Vec<&Need> = w
            .last
            .plans
            .iter()
            .take_while(|p| p.azure_write().is_none())
            .flat_map(|p| p.needs.iter())
            .collect();
        assert!(
            needs.iter().all(|n| !matches!(n, Need::PimRequest(_))),
            "{mode:?}: {needs:?}"
        );
        assert_eq!(needs.len(), 1, "{mode:?}: {needs:?}");
        assert!(w.grant.gone);
    }
}

#[test]
fn delete_inside_the_deactivation_floor_waits() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.reconcile();
    w.now += Duration::minutes(1);
    w.delete();
    w.reconcile();
    assert_eq!(w.phase(), Phase::Revoking);
    assert_eq!(w.reason(), "ActiveDurationTooShort");
    assert!(!w.grant.gone);
    let wake = w.last.wake_at.expect("wake");
    assert_eq!(wake, t0() + Duration::minutes(5) + Duration::seconds(1));
    w.now = wake;
    w.reconcile();
    assert_eq!(w.writes(), ["SelfActivate", "SelfDeactivate"]);
    assert!(w.grant.gone);
}

#[test]
fn azure_active_duration_too_short_is_waited_out() {
    // Azure's floor longer than the planner thinks: Azure's answer wins.
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.deactivation_floor = Duration::minutes(7);
    w.reconcile();
    w.now += Duration::minutes(6);
    w.delete();
    w.reconcile();
    assert_eq!(w.reason(), "ActiveDurationTooShort");
    assert_eq!(w.phase(), Phase::Revoking);
    w.now = t0() + Duration::minutes(8);
    w.reconcile();
    assert!(w.grant.gone);
}

#[test]
fn suspend_revokes_and_keeps_the_object() {
    let mut w = World::new(pim_spec(PimMode::Assign));
    w.reconcile();
    w.now += Duration::minutes(10);
    w.edit_spec(|s| s.suspend = Some(true));
    w.reconcile();
    assert_eq!(w.phase(), Phase::Revoked);
    assert_eq!(w.reason(), "Suspended");
    assert!(!w.grant.gone);
    assert_eq!(w.writes(), ["AdminAssign", "AdminRemove"]);
}

#[test]
fn pending_approval_then_approved() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.pim_policies.insert(
        (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
        PimPolicyView {
            approval_required: true,
            ..Default::default()
        },
    );
    w.reconcile();
    assert_eq!(w.phase(), Phase::PendingApproval);
    let name = w
        .grant
        .status
        .pim
        .as_ref()
        .and_then(|p| p.request_name.clone())
        .expect("request name");
    w.advance(Duration::seconds(30));
    assert_eq!(w.phase(), Phase::PendingApproval);
    w.model.decide(&name, true, w.now);
    w.advance(Duration::seconds(30));
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["SelfActivate"]);
}

#[test]
fn pending_approval_then_denied() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.pim_policies.insert(
        (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
        PimPolicyView {
            approval_required: true,
            ..Default::default()
        },
    );
    w.reconcile();
    let name = w
        .grant
        .status
        .pim
        .as_ref()
        .and_then(|p| p.request_name.clone())
        .expect("request name");
    w.model.decide(&name, false, w.now);
    w.advance(Duration::seconds(30));
    assert_eq!(w.phase(), Phase::Denied);
    assert_eq!(w.reason(), "ApprovalDenied");
}

#[test]
fn delete_while_pending_cancels() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.pim_policies.insert(
        (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
        PimPolicyView {
            approval_required: true,
            ..Default::default()
        },
    );
    w.reconcile();
    w.delete();
    w.advance(Duration::seconds(10));
    assert_eq!(w.writes(), ["SelfActivate", "Cancel"]);
    assert!(w.grant.gone);
}

#[test]
fn role_assignment_exists_is_adopted() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.instances.insert(
        pim_key(),
        accessgrant_testkit::ModelInstance {
            id: "pre".into(),
            start: t0() - Duration::minutes(10),
            end: Some(t0() + Duration::minutes(50)),
            assignment_type: "Activated".into(),
            request_name: None,
        },
    );
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.reason(), "Adopted");
    assert_eq!(
        w.grant.status.status_reason.as_deref(),
        Some("RoleAssignmentExists")
    );
    assert!(w.grant.status.pim.as_ref().is_some_and(|p| p.adopted));
    assert_eq!(w.grant.status.end_time, Some(t0() + Duration::minutes(50)));
}

/// Each seed policy rule answered by Azure (role settings not readable, so no pre-check).
#[test]
fn azure_policy_rule_failures_fail_with_the_rule_name() {
    let cases: Vec<(&str, PimMode, Setup)> = vec![
        (
            "ExpirationRule",
            PimMode::Activate,
            Box::new(|w: &mut World| {
                w.model.pim_policies.insert(
                    (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
                    PimPolicyView {
                        enduser_max_duration: Some(Duration::minutes(30)),
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "JustificationRule",
            PimMode::Activate,
            Box::new(|w: &mut World| {
                w.grant.spec.justification = None;
                w.model.pim_policies.insert(
                    (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
                    PimPolicyView {
                        enduser_enabled_rules: vec!["Justification".into()],
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "TicketingRule",
            PimMode::Activate,
            Box::new(|w: &mut World| {
                w.model.pim_policies.insert(
                    (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
                    PimPolicyView {
                        enduser_enabled_rules: vec!["Ticketing".into()],
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "MfaRule",
            PimMode::Activate,
            Box::new(|w: &mut World| {
                w.model.pim_policies.insert(
                    (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
                    PimPolicyView {
                        enduser_enabled_rules: vec!["MultiFactorAuthentication".into()],
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "EligibilityRule",
            PimMode::Activate,
            Box::new(|w: &mut World| {
                w.model.eligible.clear();
            }),
        ),
    ];
    for (rule, mode, setup) in cases {
        let mut w = World::new(pim_spec(mode));
        w.model.hide_pim_policies = true;
        setup(&mut w);
        w.reconcile();
        assert_eq!(w.phase(), Phase::Failed, "{rule}");
        assert_eq!(w.reason(), rule, "{rule}");
        let sr = w.grant.status.status_reason.clone().unwrap_or_default();
        assert!(
            sr.starts_with("RoleAssignmentRequestPolicyValidationFailed") && sr.contains(rule),
            "{rule}: {sr}"
        );
        let msg = w.grant.status.message.clone().unwrap_or_default();
        assert!(
            msg.contains(rule) && msg.contains("spec")
                || rule == "MfaRule"
                || rule == "EligibilityRule",
            "{rule}: hint missing in {msg}"
        );
        // Failed is terminal until the spec changes: no retry.
        w.advance(Duration::minutes(10));
        assert_eq!(w.model.log.len(), 1, "{rule}: no retry");
        let cond = w
            .grant
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready condition");
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", rule)
        );
    }
}

/// The same rules caught by the pre-check: no Azure write at all.
#[test]
fn policy_pre_check_refuses_without_calling_azure() {
    for (rule, setup) in [
        (
            "ExpirationRule",
            PimPolicyView {
                enduser_max_duration: Some(Duration::minutes(30)),
                ..Default::default()
            },
        ),
        (
            "TicketingRule",
            PimPolicyView {
                enduser_enabled_rules: vec!["Ticketing".into()],
                ..Default::default()
            },
        ),
        (
            "MfaRule",
            PimPolicyView {
                enduser_enabled_rules: vec!["MultiFactorAuthentication".into()],
                ..Default::default()
            },
        ),
    ] {
        let mut w = World::new(pim_spec(PimMode::Activate));
        w.model.pim_policies.insert(
            (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
            setup,
        );
        w.reconcile();
        assert_eq!((w.phase(), w.reason().as_str()), (Phase::Failed, rule));
        assert!(w.model.log.is_empty(), "{rule}: no Azure write");
    }
    // Clamp when the grant opts in.
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.grant.spec.clamp_duration = Some(true);
    w.model.pim_policies.insert(
        (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
        PimPolicyView {
            enduser_max_duration: Some(Duration::minutes(30)),
            ..Default::default()
        },
    );
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.grant.status.end_time, Some(t0() + Duration::minutes(30)));
}

#[test]
fn throttling_retries_after_retry_after_with_phase_unchanged() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.faults.push_back(AzureError::Throttled {
        code: "TooManyRequests".into(),
        retry_after_secs: 17,
    });
    w.reconcile();
    assert_eq!(w.phase(), Phase::Requesting);
    assert_eq!(w.last.wake_at, Some(t0() + Duration::seconds(17)));
    let cond = w
        .grant
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Retrying")
        .expect("Retrying");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Throttled")
    );
    // Early wake-up: nothing is sent.
    w.advance(Duration::seconds(5));
    assert_eq!(w.model.log.len(), 1);
    w.now = t0() + Duration::seconds(17);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["SelfActivate"]);
    let name = w
        .grant
        .status
        .pim
        .as_ref()
        .and_then(|p| p.request_name.clone());
    assert_eq!(
        w.model.log[0].id, w.model.log[1].id,
        "the retry reuses the request name"
    );
    assert_eq!(Some(w.model.log[1].id.clone()), name);
}

#[test]
fn transient_error_then_lost_answer_adopts_without_a_second_grant() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.model.faults.push_back(AzureError::Transient {
        status: Some(503),
        code: "ServiceUnavailable".into(),
        message: "x".into(),
    });
    w.reconcile();
    assert_eq!(w.phase(), Phase::Requesting);
    w.model.lose_next_answer = true;
    w.wake(Duration::minutes(1));
    // The write was applied but its answer lost; next pass reads and adopts it.
    w.wake(Duration::minutes(1));
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["SelfActivate"]);
}

#[test]
fn out_of_band_revocation_is_recorded_and_not_regranted() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.reconcile();
    w.model.revoke_out_of_band(&pim_key());
    w.advance(Duration::minutes(5));
    assert_eq!(w.phase(), Phase::Revoked);
    assert_eq!(w.reason(), "RevokedOutOfBand");
    w.advance(Duration::minutes(30));
    assert_eq!(w.writes(), ["SelfActivate"]);
}

#[test]
fn scheduled_start() {
    let mut spec = pim_spec(PimMode::Activate);
    spec.start_time = Some(t0() + Duration::hours(2));
    let mut w = World::new(spec);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Scheduled);
    assert_eq!(w.last.wake_at, Some(t0() + Duration::hours(2)));
    assert!(w.model.log.is_empty());
    w.wake(Duration::hours(3));
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.grant.status.end_time, Some(t0() + Duration::hours(3)));
}

#[test]
fn missed_window_expires_without_granting() {
    let mut spec = pim_spec(PimMode::Activate);
    spec.start_time = Some(t0() - Duration::hours(2));
    let mut w = World::new(spec);
    w.reconcile();
    assert_eq!(
        (w.phase(), w.reason().as_str()),
        (Phase::Expired, "WindowElapsed")
    );
    assert!(w.model.log.is_empty());
}

#[test]
fn new_generation_requests_again() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.reconcile();
    w.now += Duration::hours(2);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Expired);
    w.edit_spec(|s| s.justification = Some("again".into()));
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.grant.status.attempt, 2);
    assert_eq!(w.writes(), ["SelfActivate", "SelfActivate"]);
    assert_ne!(w.model.log[0].id, w.model.log[1].id);
}

#[test]
fn pim_assign_renews_by_extend_without_gap() {
    let mut spec = pim_spec(PimMode::Assign);
    spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::hours(3),
        before: Some(IsoDuration::new("PT5M")),
    });
    let mut w = World::new(spec);
    w.reconcile();
    let end = w.grant.status.end_time.expect("end");
    w.now = end - Duration::minutes(5);
    w.reconcile();
    assert_eq!(w.writes(), ["AdminAssign", "AdminExtend"]);
    assert_eq!(w.reason(), "Renewed");
    assert_eq!(w.grant.status.renewals, 1);
    assert_eq!(w.grant.status.end_time, Some(w.now + Duration::hours(1)));
}

#[test]
fn pim_activate_renews_after_the_end_and_records_the_gap() {
    let mut spec = pim_spec(PimMode::Activate);
    spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::hours(3),
        before: None,
    });
    let mut w = World::new(spec);
    w.reconcile();
    let end = w.grant.status.end_time.expect("end");
    w.now = end + Duration::seconds(1);
    w.reconcile();
    assert_eq!(w.writes(), ["SelfActivate", "SelfActivate"]);
    assert_eq!((w.phase(), w.reason().as_str()), (Phase::Active, "Renewed"));
    assert!(
        w.grant
            .status
            .message
            .clone()
            .unwrap_or_default()
            .contains("gap")
    );
}

#[test]
fn jit_active_then_expired() {
    let mut w = World::new(jit_spec());
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["JitInitiate"]);
    assert!(w.model.log[0].id.contains("[ag:team-a/g1#1."));
    let end = w.grant.status.end_time.expect("end");
    w.now = end + Duration::seconds(3);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Expired);
    assert_eq!(w.grant.status.status_reason.as_deref(), Some("Expired"));
    assert_eq!(w.writes().len(), 1);
}

#[test]
fn jit_renewal_supersedes_our_own_request() {
    let mut spec = jit_spec();
    spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::hours(3),
        before: Some(IsoDuration::new("PT5M")),
    });
    let mut w = World::new(spec);
    w.reconcile();
    w.now = t0() + Duration::minutes(55);
    w.reconcile();
    assert_eq!(w.writes(), ["JitInitiate", "JitInitiate"]);
    assert_eq!((w.phase(), w.reason().as_str()), (Phase::Active, "Renewed"));
    let pol = w.model.jit_policies.values().next().expect("policy");
    assert_eq!(
        pol.requests[0].ports[0].status_reason.as_deref(),
        Some("NewerRequestInitiated")
    );
    assert_eq!(pol.requests[1].ports[0].status, "Initiated");
    // A later drift check must not mistake our renewal for someone else's.
    w.advance(Duration::minutes(5));
    assert_eq!(w.phase(), Phase::Active);
}

#[test]
fn jit_out_of_band_status_reasons_are_recorded() {
    for (reason, f) in [
        ("UserRequested", "UserRequested"),
        ("NewerRequestInitiated", "NewerRequestInitiated"),
    ] {
        let mut w = World::new(jit_spec());
        w.reconcile();
        for pol in w.model.jit_policies.values_mut() {
            for r in &mut pol.requests {
                for p in &mut r.ports {
                    p.status = "Revoked".into();
                    p.status_reason = Some(f.into());
                }
            }
        }
        w.advance(Duration::minutes(5));
        assert_eq!(
            (w.phase(), w.reason().as_str()),
            (Phase::Revoked, "RevokedOutOfBand"),
            "{reason}"
        );
        assert_eq!(w.grant.status.status_reason.as_deref(), Some(reason));
        assert_eq!(w.writes().len(), 1, "not re-granted");
    }
}

#[test]
fn jit_port_or_prefix_not_in_policy_fails_without_a_write() {
    let mut spec = jit_spec();
    if let Some(j) = spec.jit.as_mut() {
        j.virtual_machines[0].ports[0].number = 3389;
        j.virtual_machines[0].ports[0].allowed_source_address_prefix = Some("192.168.1.1".into());
    }
    let mut w = World::new(spec);
    w.policies[0]
        .spec
        .jit
        .as_mut()
        .expect("jit rules")
        .source_prefixes
        .push("192.168.0.0/16".into());
    w.reconcile();
    assert_eq!(
        (w.phase(), w.reason().as_str()),
        (Phase::Failed, "JitRequestRejected")
    );
    assert!(
        w.grant
            .status
            .message
            .clone()
            .unwrap_or_default()
            .contains("192.168.1.1")
    );
    assert!(w.model.log.is_empty());
}

#[test]
fn jit_delete_closes_early_then_lets_go() {
    let mut w = World::new(jit_spec());
    w.reconcile();
    w.now += Duration::minutes(10);
    w.delete();
    w.reconcile();
    assert_eq!(w.writes(), ["JitInitiate", "JitInitiate"]);
    assert_eq!(w.phase(), Phase::Revoking);
    assert!(!w.grant.gone, "the close window is still open");
    let wake = w.last.wake_at.expect("wake");
    assert!(wake <= w.now + Duration::minutes(1) + Duration::seconds(5));
    w.now = wake;
    w.reconcile();
    assert!(w.grant.gone);
    assert!(w.model.open_jit_ports().is_empty());
}

#[test]
fn jit_delete_without_early_close_waits_for_the_end() {
    let mut w = World::new(jit_spec());
    w.config.jit_early_close = None;
    w.reconcile();
    w.now += Duration::minutes(10);
    w.delete();
    w.reconcile();
    assert_eq!(w.writes(), ["JitInitiate"]);
    assert_eq!(w.phase(), Phase::Revoking);
    w.now = t0() + Duration::hours(1) + Duration::seconds(3);
    w.reconcile();
    assert!(w.grant.gone);
}

#[test]
fn invalid_spec_fails_with_the_field_and_no_azure_call() {
    let mut spec = jit_spec();
    if let Some(j) = spec.jit.as_mut() {
        j.virtual_machines[0].ports[0].allowed_source_address_prefix = Some("Internet".into());
    }
    let mut w = World::new(spec);
    w.reconcile();
    assert_eq!(
        (w.phase(), w.reason().as_str()),
        (Phase::Failed, "InvalidSpec")
    );
    let msg = w.grant.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("spec.jit.virtualMachines[0].ports[0].allowedSourceAddressPrefix"),
        "{msg}"
    );
    assert!(w.model.log.is_empty() && w.model.reads == 0);
    let cond = w
        .grant
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("SpecValid");
    assert_eq!(cond.status, "False");
}

#[test]
fn denied_by_policy_makes_no_azure_call() {
    let mut w = World::new(pim_spec(PimMode::Activate));
    w.policies.clear();
    w.reconcile();
    assert_eq!(
        (w.phase(), w.reason().as_str()),
        (Phase::Denied, "PolicyDenied")
    );
    assert_eq!(w.grant.status.status_reason.as_deref(), Some("NoPolicy"));
    assert!(w.model.log.is_empty() && w.model.reads == 0);
    assert!(!w.grant.meta.has_finalizer);
}

#[test]
fn policy_withdrawn_revokes_active_access() {
    let mut w = World::new(pim_spec(PimMode::Assign));
    w.reconcile();
    w.now += Duration::minutes(10);
    w.policies.clear();
    w.reconcile();
    assert_eq!(
        (w.phase(), w.reason().as_str()),
        (Phase::Revoked, "Withdrawn")
    );
    assert_eq!(w.writes(), ["AdminAssign", "AdminRemove"]);
}

#[test]
fn overlap_hands_over_instead_of_removing() {
    let mut w = World::new(pim_spec(PimMode::Assign));
    w.reconcile();
    w.now += Duration::minutes(10);
    w.covered_by_other = true;
    w.delete();
    w.reconcile();
    let last = &w.last.plans.last().expect("a plan").status;
    assert_eq!(last.reason.as_deref(), Some("HandedOver"));
    assert_eq!(w.writes(), ["AdminAssign"]);
    assert!(w.grant.gone);
}

#[test]
fn history_is_bounded() {
    let mut spec = jit_spec();
    spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::days(1),
        before: Some(IsoDuration::new("PT5M")),
    });
    spec.duration = IsoDuration::new("PT10M");
    let mut w = World::new(spec);
    w.reconcile();
    for _ in 0..40 {
        w.wake(Duration::hours(1));
    }
    assert!(w.grant.status.renewals >= 10);
    assert!(w.grant.status.history.len() <= 20);
}

#[test]
fn dry_run_checks_and_records_without_writing() {
    let mut spec = pim_spec(PimMode::Activate);
    spec.dry_run = Some(true);
    let mut w = World::new(spec);
    w.reconcile();
    assert_eq!(w.phase(), Phase::DryRun);
    assert_eq!(w.writes(), Vec::<String>::new(), "a dry run writes nothing");
    assert!(
        !w.grant.meta.has_finalizer,
        "nothing to clean up, no finalizer"
    );
    let d = w.grant.status.dry_run.clone().expect("status.dryRun");
    assert_eq!(d.operation, Operation::SelfActivate);
    assert!(
        d.request.starts_with("PUT /subscriptions/"),
        "{}",
        d.request
    );
    assert!(
        d.body.contains("\"requestType\":\"SelfActivate\""),
        "{}",
        d.body
    );
    assert_eq!(d.end_time, Some(t0() + Duration::hours(1)));
    // Terminal until the spec changes; turning dry run off asks for real.
    w.advance(Duration::minutes(10));
    assert_eq!(w.writes(), Vec::<String>::new());
    w.edit_spec(|s| s.dry_run = None);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["SelfActivate"]);
    // Switching an active grant to dry run takes the access away.
    w.edit_spec(|s| s.dry_run = Some(true));
    w.advance(Duration::minutes(6));
    for _ in 0..5 {
        if w.phase() == Phase::Revoked {
            break;
        }
        w.wake(Duration::minutes(1));
    }
    assert_eq!(w.phase(), Phase::Revoked);
    assert_eq!(w.reason(), "DryRun");
    assert_eq!(w.writes(), ["SelfActivate", "SelfDeactivate"]);
}

#[test]
fn dry_run_reports_the_azure_policy_pre_check() {
    let mut spec = pim_spec(PimMode::Activate);
    spec.dry_run = Some(true);
    spec.duration = IsoDuration::new("PT8H");
    let mut w = World::new(spec);
    w.model.pim_policies.insert(
        (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
        PimPolicyView {
            enduser_max_duration: Some(Duration::hours(2)),
            ..Default::default()
        },
    );
    w.reconcile();
    assert_eq!(w.phase(), Phase::Failed);
    assert_eq!(w.reason(), "ExpirationRule");
    assert_eq!(w.writes(), Vec::<String>::new());
}

#[test]
fn break_glass_is_announced_once_per_request() {
    let mut spec = jit_spec();
    spec.break_glass = Some(true);
    let mut w = World::new(spec);
    let mut p = allow_all_policy();
    p.spec.break_glass = Some(BreakGlassRules::default());
    w.policies = vec![p];
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    let events: Vec<_> = w
        .last
        .plans
        .iter()
        .flat_map(|p| p.events.iter())
        .filter(|e| e.reason == "BreakGlass")
        .collect();
    assert_eq!(events.len(), 1);
    assert!(events[0].warning);
    assert!(events[0].note.contains("alice"), "{}", events[0].note);
    assert!(
        w.grant
            .status
            .history
            .iter()
            .any(|h| h.event == "BreakGlass")
    );
    // Without a break-glass section in the policy, the same grant is denied and never sent.
    let mut spec = jit_spec();
    spec.break_glass = Some(true);
    let mut w = World::new(spec);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Denied);
    assert_eq!(
        w.grant.status.status_reason.as_deref(),
        Some("BreakGlassNotAllowed")
    );
    assert_eq!(w.writes(), Vec::<String>::new());
}

#[test]
fn a_client_side_token_wait_does_not_grow_the_backoff() {
    // Three times in a row our own bucket said "not yet" (nothing reached Azure): each retry is
    // due when the bucket refills (its estimate), not after a doubling backoff.
    let mut w = World::new(pim_spec(PimMode::Activate));
    for _ in 0..3 {
        w.model.faults.push_back(AzureError::Throttled {
            code: "ClientThrottled".into(),
            retry_after_secs: 1,
        });
    }
    w.reconcile();
    for _ in 0..3 {
        let due = w.last.wake_at.expect("wake");
        assert!(
            due <= w.now + Duration::seconds(1),
            "retry at {due}, now {}",
            w.now
        );
        w.now = due;
        w.reconcile();
    }
    assert_eq!(w.phase(), Phase::Active);
    // An answer from Azure itself still backs off: 2 s, then 4 s.
    let mut w = World::new(pim_spec(PimMode::Activate));
    for _ in 0..2 {
        w.model.faults.push_back(AzureError::Throttled {
            code: "TooManyRequests".into(),
            retry_after_secs: 1,
        });
    }
    w.reconcile();
    assert_eq!(w.last.wake_at, Some(w.now + Duration::seconds(2)));
    w.now += Duration::seconds(2);
    w.reconcile();
    assert_eq!(w.last.wake_at, Some(w.now + Duration::seconds(4)));
}

// ----- two replicas (leader election off): an intent whose write may still be in flight -----
//
// Replica A records an intent and calls Azure; replica B plans from the object with A's intent
// before A's write shows in Azure. B must neither send a second JIT initiation nor plan anew
// from an Azure view the in-flight write may change a moment later; it adopts the write as soon
// as Azure shows it, sends a PIM write again only exactly (same request name), and otherwise
// waits until the write can no longer land (`write_deadline + write_settle` after the intent).

/// Runs one reconcile of `w` that stops after `side_effects` side effects (finalizer, intent,
/// Azure write, ...): replica A, whose Azure write is still on its way.
fn record_intent_only(w: &mut World, side_effects: usize) -> Intent {
    let r = accessgrant_testkit::reconcile(
        &mut w.grant,
        &mut w.model,
        &w.policies,
        &std::collections::BTreeMap::new(),
        false,
        w.now,
        &w.config,
        Some(side_effects),
    );
    assert!(r.crashed && r.violations.is_empty(), "{:?}", r.violations);
    w.last = r;
    w.grant.status.intent.clone().expect("intent recorded")
}

/// One plan by replica B at `now`, from the stored object and what B read from Azure.
fn replica_plan(
    w: &World,
    observed: &accessgrant_operator::lifecycle::Observed,
    now: chrono::DateTime<chrono::Utc>,
) -> accessgrant_operator::lifecycle::Plan {
    let valid = accessgrant_operator::validate::validate(&w.grant.spec);
    let ctx = accessgrant_operator::guard::GrantContext {
        namespace: w.grant.meta.namespace.clone(),
        namespace_labels: std::collections::BTreeMap::new(),
        created: w.grant.created,
        requester: None,
    };
    let verdict = valid
        .as_ref()
        .ok()
        .map(|v| accessgrant_operator::guard::guard(v, &w.policies, &ctx));
    accessgrant_operator::lifecycle::plan(&accessgrant_operator::lifecycle::PlanInput {
        meta: &w.grant.meta,
        spec: valid.as_ref(),
        suspend: w.grant.spec.suspend.unwrap_or(false),
        status: &w.grant.status,
        verdict: verdict.as_ref(),
        observed,
        covered_by_other: false,
        port_holder: None,
        now,
        config: &w.config,
    })
}

fn jit_listing(w: &World) -> accessgrant_operator::lifecycle::Observed {
    use accessgrant_operator::lifecycle::{Observed, Read};
    let pol = w
        .model
        .jit_policies
        .values()
        .next()
        .cloned()
        .expect("a JIT policy");
    Observed {
        jit_policy: Read::Found(pol),
        ..Default::default()
    }
}

fn in_flight_until(w: &World, intent: &Intent) -> chrono::DateTime<chrono::Utc> {
    intent.recorded_at + w.config.write_deadline + w.config.write_settle
}

#[test]
fn jit_intent_in_flight_at_another_replica_is_not_sent_again() {
    let mut w = World::new(jit_spec());
    let intent = record_intent_only(&mut w, 2);
    assert_eq!(intent.operation, Operation::JitInitiate);
    // B, a few seconds later: Azure does not list the marker yet.
    for later in [1, 10, 39] {
        let now = w.now + Duration::seconds(later);
        let p = replica_plan(&w, &jit_listing(&w), now);
        assert!(p.needs.is_empty(), "{:?}", p.needs);
        assert!(
            p.steps.is_empty(),
            "no intent write and no Azure call while A's write may land: {:?}",
            p.steps
        );
        assert_eq!(p.status.intent, Some(intent.clone()), "A's intent is kept");
        assert_eq!(p.status.phase, Phase::Requesting);
        assert_eq!(p.wake_at, Some(in_flight_until(&w, &intent)));
    }
    // Once it can no longer land and Azure still does not list it: sent again, same marker.
    let p = replica_plan(&w, &jit_listing(&w), in_flight_until(&w, &intent));
    assert!(matches!(p.steps.first(), Some(Step::RecordIntent(_))));
    let again = p.status.intent.clone().expect("intent recorded again");
    assert_eq!(
        (again.operation, again.attempt, again.request_id.clone()),
        (intent.operation, intent.attempt, intent.request_id.clone())
    );
    assert_eq!(
        again.recorded_at,
        in_flight_until(&w, &intent),
        "the new send is in flight from now"
    );
    assert!(matches!(
        p.azure_write(),
        Some(accessgrant_operator::lifecycle::AzureWrite::JitInitiate { justification, .. })
            if justification.contains(&intent.request_id)
    ));
}

#[test]
fn jit_intent_in_flight_is_adopted_as_soon_as_azure_lists_it() {
    let mut w = World::new(jit_spec());
    let intent = record_intent_only(&mut w, 2);
    // A's write lands now.
    let write = w
        .last
        .plans
        .iter()
        .find_map(|p| p.azure_write().cloned())
        .expect("A's planned write");
    w.model.write(&write, w.now).expect("A's write lands");
    let p = replica_plan(&w, &jit_listing(&w), w.now + Duration::seconds(2));
    assert!(
        p.azure_write().is_none(),
        "adopted, not sent: {:?}",
        p.steps
    );
    assert_eq!(p.status.phase, Phase::Active);
    assert!(p.status.intent.is_none());
    assert_eq!(
        p.status.jit.as_ref().and_then(|j| j.marker.clone()),
        Some(intent.request_id)
    );
}

#[test]
fn deleted_grant_with_a_jit_intent_in_flight_keeps_its_finalizer_until_it_cannot_land() {
    let mut w = World::new(jit_spec());
    let intent = record_intent_only(&mut w, 2);
    w.delete();
    let p = replica_plan(&w, &jit_listing(&w), w.now + Duration::seconds(3));
    assert!(
        p.steps.is_empty(),
        "neither a close nor letting go of the finalizer while the initiation may land: {:?}",
        p.steps
    );
    assert_eq!(p.status.intent, Some(intent.clone()));
    assert_eq!(p.wake_at, Some(in_flight_until(&w, &intent)));
    // It never landed: nothing to take away, the finalizer goes.
    let p = replica_plan(&w, &jit_listing(&w), in_flight_until(&w, &intent));
    assert!(p.azure_write().is_none());
    assert!(matches!(p.steps.last(), Some(Step::RemoveFinalizer)));
}

fn assign_renewal_intent_in_flight() -> (World, Intent) {
    let mut spec = pim_spec(PimMode::Assign);
    spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::hours(3),
        before: Some(IsoDuration::new("PT5M")),
    });
    let mut w = World::new(spec);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    let end = w.grant.status.end_time.expect("end");
    w.now = end - Duration::minutes(5);
    let intent = record_intent_only(&mut w, 1);
    assert_eq!(
        (intent.operation, intent.attempt),
        (Operation::AdminExtend, 2)
    );
    (w, intent)
}

#[test]
fn pim_renewal_in_flight_at_another_replica_is_sent_again_exactly() {
    use accessgrant_operator::lifecycle::{AzureWrite, Observed, PimInstanceView, Read};
    let (w, intent) = assign_renewal_intent_in_flight();
    let now = w.now + Duration::seconds(2);
    // B's GET by name misses A's PUT (in flight); by the time B would read the assignment, A's
    // extend has landed and shows the later end. B must not plan anew from that view (it would
    // find no renewal due and write a status that forgets the extend); it sends the same
    // request again, which Azure answers with a 409 that is adopted.
    let extended = PimInstanceView {
        id: "inst".into(),
        schedule_id: w
            .grant
            .status
            .pim
            .as_ref()
            .and_then(|p| p.target_schedule_id.clone()),
        start: w.grant.status.start_time,
        end: Some(now + Duration::hours(1)),
        assignment_type: "Assigned".into(),
    };
    let mut observed = Observed {
        pim_request: Read::Missing,
        pim_instance: Read::Found(extended),
        ..Default::default()
    };
    let mut p = replica_plan(&w, &observed, now);
    if !p.needs.is_empty() {
        assert!(
            !p.needs
                .contains(&accessgrant_operator::lifecycle::Need::PimInstance),
            "decided without the assignment: {:?}",
            p.needs
        );
        observed.pim_policy = Read::Missing;
        p = replica_plan(&w, &observed, now);
    }
    let again = p
        .status
        .intent
        .clone()
        .expect("the renewal is still recorded");
    assert_eq!(
        (again.operation, again.attempt, again.request_id.clone()),
        (intent.operation, intent.attempt, intent.request_id.clone())
    );
    assert!(
        matches!(p.azure_write(), Some(AzureWrite::Pim { name, .. }) if *name == intent.request_id),
        "the same request name: {:?}",
        p.steps
    );
    assert_eq!(p.status.renewals, w.grant.status.renewals);
}

#[test]
fn pim_grant_in_flight_for_a_deleted_grant_is_waited_out() {
    use accessgrant_operator::lifecycle::{Observed, Read};
    let mut w = World::new(pim_spec(PimMode::Assign));
    let intent = record_intent_only(&mut w, 2);
    assert_eq!(intent.operation, Operation::AdminAssign);
    w.delete();
    let observed = Observed {
        pim_request: Read::Missing,
        pim_instance: Read::Missing,
        ..Default::default()
    };
    let p = replica_plan(&w, &observed, w.now + Duration::seconds(1));
    assert!(
        p.steps.is_empty(),
        "not let go while the assignment may still be made: {:?}",
        p.steps
    );
    assert_eq!(p.status.intent, Some(intent.clone()));
    assert_eq!(p.wake_at, Some(in_flight_until(&w, &intent)));
}

#[test]
fn a_failed_send_is_sent_again_at_its_retry_time_without_the_in_flight_wait() {
    let mut w = World::new(jit_spec());
    w.model.faults.push_back(AzureError::Throttled {
        code: "TooManyRequests".into(),
        retry_after_secs: 5,
    });
    w.reconcile();
    assert_eq!(w.phase(), Phase::Requesting);
    let retry = w.grant.status.retry.clone().expect("retry recorded");
    assert_eq!(retry.not_before, t0() + Duration::seconds(5));
    // The write came back (429): at its retry time it is sent again, not waited out.
    w.now = retry.not_before;
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(w.writes(), ["JitInitiate"]);
    assert_eq!(w.model.log.len(), 2, "one refused send, one applied");
}

#[test]
fn a_jit_write_without_an_answer_is_looked_for_once_it_cannot_land() {
    let mut w = World::new(jit_spec());
    w.model.faults.push_back(AzureError::Transient {
        status: None,
        code: "Timeout".into(),
        message: "no answer".into(),
    });
    w.reconcile();
    let retry = w.grant.status.retry.clone().expect("retry recorded");
    assert!(
        retry.not_before >= t0() + w.config.write_settle,
        "not looked for (nor sent again) before Azure may have applied it: {}",
        retry.not_before
    );
    assert_eq!(w.last.wake_at, Some(retry.not_before));
}

/// PIM grant requests carry the grant's marker (the orphan sweep reads it back), but the marker
/// never stands in for a justification the user did not give: without one it is sent only
/// where the role's settings were read and require none.
#[test]
fn pim_grant_requests_carry_the_marker_but_never_invent_a_justification() {
    use accessgrant_operator::lifecycle::{AzureWrite, Step, parse_marker};
    let sent = |w: &World| -> Option<Option<String>> {
        w.last
            .plans
            .iter()
            .flat_map(|p| &p.steps)
            .find_map(|s| match s {
                Step::Azure(AzureWrite::Pim { body, .. }) => Some(body.justification.clone()),
                _ => None,
            })
    };
    let mut w = World::new(pim_spec(PimMode::Assign));
    w.reconcile();
    let j = sent(&w).flatten().expect("a justification");
    // The verified requester first, then the user's words, then the marker.
    assert!(j.starts_with("[requested-by:"), "{j}");
    assert!(j.contains("] INC-1 investigate"), "{j}");
    let (ns, name, _, uid8) = parse_marker(&j).expect("marker");
    assert_eq!((ns.as_str(), name.as_str()), ("team-a", "g1"), "{j}");
    assert!(w.grant.meta.uid.starts_with(&uid8), "{j}");

    // No justification, role settings readable and not asking for one: the marker alone.
    let mut spec = pim_spec(PimMode::Assign);
    spec.justification = None;
    let mut w = World::new(spec.clone());
    w.model.pim_policies.insert(
        (scope().to_ascii_lowercase(), role().to_ascii_lowercase()),
        PimPolicyView::default(),
    );
    w.reconcile();
    let j = sent(&w).flatten().expect("a marker");
    assert!(parse_marker(&j).is_some(), "{j}");

    // No justification, role settings unreadable: nothing that could pass for one.
    let mut w = World::new(spec);
    w.model.hide_pim_policies = true;
    w.reconcile();
    assert_eq!(sent(&w), Some(None), "no invented justification");
}

/// Azure keeps the justification as the only human attribution (its `requestor` is the
/// operator): the verified requester comes first, in a form user text may not contain; an
/// editor is named beside the requester, who stays `requestedBy`; each edit is a history entry.
#[test]
fn the_verified_requester_leads_the_justification_and_an_editor_never_replaces_them() {
    use accessgrant_operator::lifecycle::{AzureWrite, Step};
    let sent = |w: &World| -> Vec<String> {
        w.last
            .plans
            .iter()
            .flat_map(|p| &p.steps)
            .filter_map(|s| match s {
                Step::Azure(AzureWrite::JitInitiate { justification, .. }) => {
                    Some(justification.clone())
                }
                Step::Azure(AzureWrite::Pim { body, .. }) => body.justification.clone(),
                _ => None,
            })
            .collect()
    };
    for spec in [pim_spec(PimMode::Assign), jit_spec()] {
        let mut w = World::new(spec);
        w.grant.meta.requested_by = Some("alice@example.com".into());
        w.reconcile();
        let first = sent(&w);
        assert!(!first.is_empty(), "a request was sent");
        for j in &first {
            assert!(
                j.starts_with("[requested-by:alice@example.com] "),
                "attribution first: {j}"
            );
        }
        let st = w.grant.status.clone();
        assert_eq!(st.requested_by.as_deref(), Some("alice@example.com"));
        assert_eq!(st.edited_by, None);

        // Bob suspends it: he is the editor, Alice stays the requester, and history says so.
        w.grant.meta.requested_by = Some("bob@example.com".into());
        w.edit_spec(|s| s.suspend = Some(true));
        w.reconcile();
        let st = w.grant.status.clone();
        assert_eq!(st.requested_by.as_deref(), Some("alice@example.com"));
        assert_eq!(st.edited_by.as_deref(), Some("bob@example.com"));
        let edits: Vec<&str> = st
            .history
            .iter()
            .filter(|h| h.event == "Edited")
            .map(|h| h.detail.as_str())
            .collect();
        assert_eq!(edits, ["generation 2 suspended by bob@example.com"]);
        // Planned again: the same edit is not recorded twice.
        w.reconcile();
        assert_eq!(
            w.grant
                .status
                .history
                .iter()
                .filter(|h| h.event == "Edited")
                .count(),
            1
        );

        // Bob resumes it: what is sent names both.
        w.edit_spec(|s| s.suspend = None);
        w.reconcile();
        for j in sent(&w) {
            if !j.contains("closing early") {
                assert!(
                    j.starts_with("[requested-by:alice@example.com; edited-by:bob@example.com] "),
                    "{j}"
                );
            }
        }

        // Unverified: nobody is claimed.
        let mut w = World::new(pim_spec(PimMode::Assign));
        w.grant.meta.requested_by = None;
        w.reconcile();
        for j in sent(&w) {
            assert!(!j.contains("requested-by"), "{j}");
        }
    }
}

/// Resuming a JIT grant while its early close is still running re-grants once the close is
/// done (the policy still allows it): it does not end `Revoked` with nothing open.
#[test]
fn resuming_a_jit_grant_in_its_closing_window_grants_it_again() {
    let mut w = World::new(jit_spec());
    w.reconcile();
    for _ in 0..5 {
        if w.phase() == Phase::Active {
            break;
        }
        w.wake(Duration::seconds(30));
    }
    assert_eq!(w.phase(), Phase::Active);
    w.edit_spec(|s| s.suspend = Some(true));
    w.reconcile();
    let trace = |w: &World| format!("{:?} {} {:?}", w.phase(), w.reason(), w.writes());
    assert_eq!(w.phase(), Phase::Revoking, "{}", trace(&w));
    w.edit_spec(|s| s.suspend = None);
    for _ in 0..20 {
        w.wake(Duration::seconds(30));
        if w.phase() == Phase::Active {
            break;
        }
    }
    assert_eq!(w.phase(), Phase::Active, "{}", trace(&w));
    assert!(
        w.model
            .open_jit_ports()
            .iter()
            .any(|p| p.2.contains("[ag:")),
        "a port is open again: {}",
        trace(&w)
    );
}

fn until_active(w: &mut World) {
    w.reconcile();
    for _ in 0..10 {
        if w.phase() == Phase::Active {
            return;
        }
        w.wake(Duration::seconds(30));
    }
    assert_eq!(w.phase(), Phase::Active, "{:?}", w.writes());
}

/// Editing `spec.duration` of granted access does what it says: longer extends it in Azure
/// (JIT: a new request with the later end; PIM Assign: AdminExtend), shorter closes it at the
/// new end and never asks again; a PIM activation, which Azure cannot extend, says so.
#[test]
fn an_edited_duration_extends_or_shortens_granted_access() {
    // Longer, JIT and PIM Assign: Azure's end moves to start + the new duration.
    for spec in [jit_spec(), pim_spec(PimMode::Assign)] {
        let mut w = World::new(spec);
        until_active(&mut w);
        let start = w.grant.status.start_time.expect("start");
        let before = w.writes().len();
        w.advance(Duration::minutes(10));
        w.edit_spec(|s| s.duration = IsoDuration::new("PT2H"));
        for _ in 0..5 {
            w.wake(Duration::seconds(30));
        }
        let st = &w.grant.status;
        assert_eq!(st.phase, Phase::Active, "{:?}", w.writes());
        let end = st.end_time.expect("end");
        assert!(
            (end - (start + Duration::hours(2))).num_seconds().abs() <= 30,
            "end {end} is not start {start} + PT2H: {:?}",
            w.writes()
        );
        let extra: Vec<String> = w.writes()[before..].to_vec();
        assert_eq!(extra.len(), 1, "one write extends it: {extra:?}");
        assert!(
            st.history.iter().any(|h| h.event == "Extending"),
            "{:?}",
            st.history
        );
        // Still open in the model at the old end + a minute: no gap, nothing closed.
        w.advance(Duration::minutes(55));
        assert_eq!(w.phase(), Phase::Active, "{:?}", w.writes());
    }

    // Longer, PIM activation: not possible in Azure; a condition says so, nothing is sent.
    let mut w = World::new(pim_spec(PimMode::Activate));
    until_active(&mut w);
    let before = w.writes().len();
    w.edit_spec(|s| s.duration = IsoDuration::new("PT2H"));
    w.advance(Duration::minutes(1));
    assert_eq!(w.writes().len(), before, "{:?}", w.writes());
    let c = w
        .grant
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Extended")
        .expect("an Extended condition");
    assert_eq!(c.status, "False");
    assert_eq!(c.reason, "ActivationCannotBeExtended");

    // Shorter, JIT and both PIM modes: closed at the new end, Revoked/Shortened, not asked again.
    for spec in [
        jit_spec(),
        pim_spec(PimMode::Assign),
        pim_spec(PimMode::Activate),
    ] {
        let mut w = World::new(spec);
        until_active(&mut w);
        let start = w.grant.status.start_time.expect("start");
        w.advance(Duration::minutes(10));
        w.edit_spec(|s| s.duration = IsoDuration::new("PT20M"));
        w.reconcile();
        assert_eq!(w.phase(), Phase::Active, "not before the new end");
        let wake = w.last.wake_at.expect("a wake-up");
        assert!(
            wake <= start + Duration::minutes(20) + Duration::seconds(1),
            "{wake}"
        );
        for _ in 0..20 {
            w.wake(Duration::minutes(5));
            if w.phase() == Phase::Revoked {
                break;
            }
        }
        assert_eq!(
            (w.phase(), w.reason().as_str()),
            (Phase::Revoked, "Shortened"),
            "{:?}",
            w.writes()
        );
        assert!(
            w.now <= start + Duration::minutes(25),
            "closed at the new end (+ the close window), not later: {}",
            w.now
        );
        let n = w.writes().len();
        w.advance(Duration::hours(2));
        assert_eq!(w.writes().len(), n, "nothing asked again");
        assert_eq!(w.phase(), Phase::Revoked);
    }
}

/// A later `renewal.until` on a renewing grant keeps it renewed past the old limit (the
/// renewal rules read the current spec).
#[test]
fn a_later_renewal_until_keeps_a_grant_renewed_past_the_old_limit() {
    for spec in [jit_spec(), pim_spec(PimMode::Assign)] {
        let mut spec = spec;
        spec.duration = IsoDuration::new("PT30M");
        spec.renewal = Some(RenewalSpec {
            until: t0() + Duration::hours(1),
            before: Some(IsoDuration::new("PT5M")),
        });
        let mut w = World::new(spec);
        until_active(&mut w);
        w.edit_spec(|s| s.renewal.as_mut().expect("renewal").until = t0() + Duration::hours(3));
        // Past the old limit (t0 + 1h), the grant is still renewed and in force.
        for _ in 0..200 {
            if w.now >= t0() + Duration::minutes(100) {
                break;
            }
            w.wake(Duration::minutes(5));
        }
        assert!(w.now >= t0() + Duration::minutes(100), "{}", w.now);
        assert_eq!(w.phase(), Phase::Active, "{} {:?}", w.reason(), w.writes());
        let end = w.grant.status.end_time.expect("end");
        assert!(
            end > t0() + Duration::hours(1) + Duration::minutes(30),
            "{end}"
        );
        assert!(w.grant.status.renewals >= 2, "{}", w.grant.status.renewals);
    }
}
