//! Planner regressions found by the crash-injection tests (tests/crash.rs), replayed against
//! the in-memory Azure model: a crash between an intent and its JIT write, and a JIT request
//! already listed with the grant's marker.

use crate::support;

use accessgrant_operator::api::*;
use accessgrant_operator::azure::error::AzureError;
use accessgrant_operator::guard::{GrantContext, guard};
use accessgrant_operator::lifecycle::{JitRequestPortView, JitRequestView, jit_marker};
use accessgrant_operator::lifecycle::{Need, Observed, PlanInput, Read, WriteResult, plan};
use accessgrant_operator::validate::validate;
use accessgrant_testkit::reconcile;
use chrono::Duration;
use std::collections::BTreeMap;
use support::*;

/// One reconcile that stops after `side_effects` side effects (finalizer, intent, write, ...).
fn crash_after(w: &mut World, side_effects: usize) {
    let r = reconcile(
        &mut w.grant,
        &mut w.model,
        &w.policies,
        &BTreeMap::new(),
        false,
        w.now,
        &w.config,
        Some(side_effects),
    );
    assert!(r.crashed, "the reconcile was cut short");
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

fn jit_writes(w: &World) -> usize {
    w.writes().iter().filter(|k| *k == "JitInitiate").count()
}

/// Delete, crash after the close intent is recorded (before the close request is sent): the
/// restarted pass still closes early instead of waiting for the hour-long window to end. It
/// first waits until the lost close could no longer land (another replica may be sending it:
/// a JIT write has no id, so sending it twice closes twice), then sends it with the same marker.
#[test]
fn jit_close_intent_lost_to_a_crash_still_closes_early() {
    let mut w = World::new(jit_spec());
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    w.now += Duration::minutes(1);
    w.delete();
    crash_after(&mut w, 1);
    let intent = w
        .grant
        .status
        .intent
        .clone()
        .expect("close intent recorded");
    assert_eq!(intent.operation, Operation::JitClose);
    assert_eq!(jit_writes(&w), 1, "the close was not sent");

    w.reconcile();
    assert_eq!(
        jit_writes(&w),
        1,
        "not sent again while it may be in flight"
    );
    assert!(!w.grant.gone, "the finalizer stays meanwhile");
    let settled = intent.recorded_at + w.config.write_deadline + w.config.write_settle;
    assert_eq!(
        w.last.wake_at,
        Some(settled),
        "comes back once it cannot land"
    );
    w.wake(Duration::minutes(5));
    assert_eq!(jit_writes(&w), 2, "the close is sent after the restart");
    assert_eq!(
        w.grant.status.attempt, intent.attempt,
        "the same attempt (marker) as the lost close"
    );
    // The close window (1 minute) passes; the ports close and the finalizer goes.
    w.now += Duration::minutes(2);
    w.model.tick(w.now);
    w.reconcile();
    assert!(w.grant.gone, "finalizer removed once the ports closed");
    assert!(w.model.open_jit_ports().is_empty());
}

/// A renewal whose intent was recorded but never sent: the grant keeps the access it holds and
/// renews again (once the lost write could no longer land), instead of taking its missing
/// request for an out-of-band revocation.
#[test]
fn jit_renewal_intent_lost_to_a_crash_renews_again() {
    let mut w = World::new(jit_spec());
    w.grant.spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::hours(5),
        before: Some(IsoDuration::new("PT10M")),
    });
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    let end = w.grant.status.end_time.expect("end");
    w.now = end - Duration::minutes(9);
    crash_after(&mut w, 1);
    let intent = w
        .grant
        .status
        .intent
        .clone()
        .expect("renewal intent recorded");
    assert_eq!(
        (intent.operation, intent.attempt),
        (Operation::JitInitiate, 2)
    );
    assert_eq!(jit_writes(&w), 1, "the renewal was not sent");

    w.reconcile();
    assert_eq!(
        jit_writes(&w),
        1,
        "not sent again while it may be in flight"
    );
    w.wake(Duration::minutes(5));
    assert_eq!(w.phase(), Phase::Active, "{:?}", w.grant.status.message);
    assert_eq!(w.reason(), "Renewed");
    assert_eq!(w.grant.status.renewals, 1);
    assert_eq!(jit_writes(&w), 2, "one renewal");
    // The same attempt, so the same marker as the lost intent.
    let marker = jit_marker(&w.grant.meta, 2);
    assert_eq!(w.grant.status.attempt, 2);
    assert_eq!(
        w.grant.status.jit.as_ref().and_then(|j| j.marker.clone()),
        Some(marker)
    );
}

/// Azure already lists a request carrying this attempt's marker (its intent was lost, or
/// another replica sent it): adopted, not initiated a second time.
#[test]
fn jit_request_already_listed_with_our_marker_is_adopted() {
    let mut w = World::new(jit_spec());
    let marker = jit_marker(&w.grant.meta, 1);
    let pol = w
        .model
        .jit_policies
        .values_mut()
        .next()
        .expect("a JIT policy");
    pol.requests.push(JitRequestView {
        start: Some(t0()),
        justification: Some(format!("asked earlier {marker}")),
        requestor: Some("someone".into()),
        ports: vec![JitRequestPortView {
            vm_id: vm_id("vm1"),
            number: 22,
            prefix: Some("10.0.0.7".into()),
            status: "Initiated".into(),
            closed: false,
            status_reason: Some("UserRequested".into()),
            end: Some(t0() + Duration::hours(1)),
        }],
    });
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    assert_eq!(jit_writes(&w), 0, "no second initiation");
    assert!(
        w.grant.meta.has_finalizer,
        "the finalizer guards adopted access"
    );
    assert_eq!(w.grant.status.end_time, Some(t0() + Duration::hours(1)));
    assert!(w.last.wake_at.is_some(), "comes back to watch the access");
}

/// Two writers raced (leader election off) and Azure lists two requests with our marker: the
/// newer superseded the older. The grant follows the newer one, in force, instead of taking
/// the superseded one for an out-of-band revocation while the ports are open.
#[test]
fn jit_duplicate_marker_follows_the_newer_request() {
    let mut w = World::new(jit_spec());
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    let pol = w
        .model
        .jit_policies
        .values_mut()
        .next()
        .expect("a JIT policy");
    let mut newer = pol.requests.last().cloned().expect("our request");
    for r in &mut pol.requests {
        for p in &mut r.ports {
            p.status = "Revoked".into();
            p.status_reason = Some("NewerRequestInitiated".into());
        }
    }
    newer.start = newer.start.map(|s| s + Duration::milliseconds(90));
    pol.requests.push(newer);
    w.advance(Duration::minutes(6));
    assert_eq!(w.phase(), Phase::Active, "{:?}", w.grant.status.message);
    assert_eq!(
        w.grant
            .status
            .jit
            .as_ref()
            .and_then(|j| j.ports.first())
            .and_then(|p| p.status.clone())
            .as_deref(),
        Some("Initiated")
    );
}

fn assign_with_renewal() -> World {
    let mut w = World::new(pim_spec(PimMode::Assign));
    w.grant.spec.renewal = Some(RenewalSpec {
        until: t0() + Duration::hours(5),
        before: Some(IsoDuration::new("PT10M")),
    });
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    w
}

/// A renewal that got to Azure just after the assignment ended (the operator was down or
/// throttled through the renewal window): AdminExtend answers RoleAssignmentDoesNotExist. The
/// grant expires like any assignment that reached its end, instead of failing as "rejected".
#[test]
fn pim_extend_too_late_expires_instead_of_failing() {
    let mut w = assign_with_renewal();
    let end = w.grant.status.end_time.expect("end");
    w.now = end - Duration::seconds(1);
    crash_after(&mut w, 1);
    let intent = w
        .grant
        .status
        .intent
        .clone()
        .expect("extend intent recorded");
    assert_eq!(intent.operation, Operation::AdminExtend);
    // Azure's answer, and then its view: the assignment had just ended.
    let valid = validate(&w.grant.spec);
    let ctx = GrantContext {
        namespace: w.grant.meta.namespace.clone(),
        namespace_labels: BTreeMap::new(),
        created: w.grant.created,
        requester: None,
    };
    let verdict = valid.as_ref().ok().map(|v| guard(v, &w.policies, &ctx));
    let mut observed = Observed {
        last_write: Some(WriteResult {
            operation: intent.operation,
            request_id: intent.request_id.clone(),
            outcome: Err(AzureError::DoesNotExist {
                message: "The Role assignment does not exist.".into(),
            }),
        }),
        ..Default::default()
    };
    let plan_with = |observed: &Observed| {
        plan(&PlanInput {
            meta: &w.grant.meta,
            spec: valid.as_ref(),
            suspend: false,
            status: &w.grant.status,
            verdict: verdict.as_ref(),
            observed,
            covered_by_other: false,
            port_holder: None,
            now: w.now,
            config: &w.config,
        })
    };
    let p = plan_with(&observed);
    assert_eq!(
        p.needs,
        vec![Need::PimInstance],
        "reads Azure before deciding"
    );
    observed.pim_instance = Read::Missing;
    let p = plan_with(&observed);
    assert_eq!(
        (p.status.phase, p.status.intent.is_none()),
        (Phase::Expired, true),
        "{:?}",
        p.status.message
    );
}

/// The same answer while the assignment is in fact still there (a stale instance in Azure's
/// view): the grant re-reads it and extends again, with the next attempt's request name.
#[test]
fn pim_extend_does_not_exist_but_still_active_extends_again() {
    let mut w = assign_with_renewal();
    let end = w.grant.status.end_time.expect("end");
    w.now = end - Duration::minutes(5);
    w.model.faults.push_back(AzureError::DoesNotExist {
        message: "The Role assignment does not exist.".into(),
    });
    w.reconcile();
    assert_ne!(w.phase(), Phase::Failed, "{:?}", w.grant.status.message);
    w.reconcile();
    assert_eq!(
        (w.phase(), w.reason().as_str()),
        (Phase::Active, "Renewed"),
        "{:?}",
        w.grant.status.message
    );
    assert_eq!(w.grant.status.renewals, 1);
}

/// Found by the removal-lane e2e test (tests/e2e.rs): a close request that waited longer than
/// its window for ARM's write budget reached Azure with its end already past. azure-sim records
/// such a window as expired at once, and it supersedes nothing: the grant's hour-long request
/// stays open. The grant must not take that close for one in force and wait out the hour; it
/// sends a new close.
#[test]
fn jit_close_that_reached_azure_after_its_window_is_sent_again() {
    let mut w = World::new(jit_spec());
    w.reconcile();
    assert_eq!(w.phase(), Phase::Active);
    let first_end = w.grant.status.end_time.expect("end");
    w.now += Duration::minutes(1);
    w.delete();
    w.reconcile();
    assert_eq!(jit_writes(&w), 2, "the close was sent");
    assert_eq!(w.phase(), Phase::Revoking);
    // What Azure shows when the close arrived too late: the close expired at once, the grant's
    // own request still open until its end.
    let now = w.now;
    for pol in w.model.jit_policies.values_mut() {
        for r in &mut pol.requests {
            let close = r
                .justification
                .as_deref()
                .is_some_and(|j| j.contains("closing early"));
            for p in &mut r.ports {
                if close {
                    p.status = "Revoked".into();
                    p.status_reason = Some("Expired".into());
                    p.end = Some(now - Duration::seconds(1));
                } else {
                    p.status = "Initiated".into();
                    p.status_reason = Some("UserRequested".into());
                    p.end = Some(first_end);
                }
            }
        }
    }
    assert_eq!(
        w.model.open_jit_ports().len(),
        1,
        "the grant's ports are open"
    );
    w.advance(Duration::seconds(5));
    assert_eq!(
        jit_writes(&w),
        3,
        "a new close, not a wait for the hour to end"
    );
    assert!(
        w.last.wake_at.is_some_and(|t| t < first_end),
        "comes back when the new close's window ends, not at the old end"
    );
    w.now += Duration::minutes(2);
    w.model.tick(w.now);
    w.reconcile();
    assert!(w.grant.gone, "finalizer removed once the ports closed");
    assert!(w.model.open_jit_ports().is_empty());
}
