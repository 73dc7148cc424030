//! Property tests of JIT grants sharing one VM port (Defender keeps one request per VM port;
//! a newer one closes the older): random interleavings of passes of three grants, deletions,
//! suspensions and resumptions, time and crashes between steps. Each pass is told what the
//! controller's coverage index would say (`lifecycle::port_holder` over every grant's claim).
//! Invariants: no grant of ours is ever closed by another while its status says it is open,
//! and no prefix of a grant whose access is gone (or that has finished) stays open past the
//! early-close window.

use crate::support;

use accessgrant_operator::api::*;
use accessgrant_operator::lifecycle::{PortClaim, port_holder};
use accessgrant_testkit::{ModelGrant, reconcile_sharing};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use std::collections::BTreeMap;
use support::*;

#[derive(Clone, Debug)]
enum Step {
    Pass(usize),
    Crash(usize, usize),
    Advance(i64),
    Delete(usize),
    Suspend(usize, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0usize..3).prop_map(Step::Pass),
        2 => (0usize..3, 0usize..5).prop_map(|(i, k)| Step::Crash(i, k)),
        3 => (1i64..900).prop_map(Step::Advance),
        1 => (0usize..3).prop_map(Step::Delete),
        1 => (0usize..3, any::<bool>()).prop_map(|(i, s)| Step::Suspend(i, s)),
    ]
}

fn grant(i: usize, duration_min: i64, port: i32) -> ModelGrant {
    let mut g = World::new(jit_spec()).grant;
    let c = char::from(b'a' + i as u8);
    g.meta.uid = format!("{}-0000-4000-8000-000000000000", c.to_string().repeat(8));
    g.meta.name = format!("g{i}");
    g.created = Some(t0() + Duration::seconds(i as i64));
    g.spec.duration = IsoDuration::new(format!("PT{duration_min}M"));
    let jit = g.spec.jit.as_mut().expect("jit");
    jit.virtual_machines[0].ports[0].number = port;
    jit.virtual_machines[0].ports[0].allowed_source_address_prefix =
        Some(format!("10.0.0.{}", i + 1));
    g
}

fn claim(g: &ModelGrant) -> Option<PortClaim> {
    if g.gone {
        return None;
    }
    PortClaim::of(
        format!("{}/{}", g.meta.namespace, g.meta.name),
        g.meta.uid.clone(),
        g.created.map(|t| t.timestamp()),
        &g.spec,
        Some(&g.status),
        g.meta.deleting,
    )
}

/// The grant whose marker `justification` carries (`[ag:ns/name#`).
fn owner(grants: &[ModelGrant], justification: &str) -> Option<usize> {
    grants
        .iter()
        .position(|g| justification.contains(&format!("[ag:{}/{}#", g.meta.namespace, g.meta.name)))
}

fn check(w: &World, grants: &[ModelGrant], now: DateTime<Utc>) -> Result<(), TestCaseError> {
    let open: Vec<(String, DateTime<Utc>, String)> = w
        .model
        .jit_policies
        .values()
        .flat_map(|p| p.requests.iter())
        .flat_map(|r| {
            r.ports
                .iter()
                .filter(|p| p.status != "Revoked" && p.end.is_some_and(|e| e > now))
                .map(move |p| {
                    (
                        format!("{}:{}", p.vm_id.to_ascii_lowercase(), p.number),
                        p.end.unwrap_or(now),
                        r.justification.clone().unwrap_or_default(),
                    )
                })
        })
        .collect();
    let window = Duration::minutes(1) + Duration::seconds(5);
    for (i, g) in grants.iter().enumerate() {
        let st = &g.status;
        // Open by its status: Azure must show its request open (nobody of ours closed it).
        if st.phase == Phase::Active
            && st.intent.is_none()
            && st.end_time.is_some_and(|e| e > now + Duration::seconds(1))
            && let Some(marker) = st.jit.as_ref().and_then(|j| j.marker.as_deref())
        {
            prop_assert!(
                open.iter().any(|(_, _, j)| j.contains(marker)),
                "grant {i} is Active until {:?} but its request {marker} is closed; open: {open:?}",
                st.end_time
            );
        }
        // Gone or finished: nothing of it stays open past the early-close window.
        if g.gone || st.phase.is_terminal() {
            for (port, end, j) in &open {
                if owner(grants, j) == Some(i) {
                    prop_assert!(
                        *end <= now + window,
                        "grant {i} ({:?}, gone {}) still has {port} open until {end}",
                        st.phase,
                        g.gone
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn grants_sharing_a_jit_port_never_close_each_other(
        durations in prop::collection::vec(10i64..90, 3),
        other_port in any::<bool>(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut w = World::new(jit_spec());
        let mut grants: Vec<ModelGrant> = (0..3)
            .map(|i| grant(i, durations[i], if other_port && i == 2 { 3389 } else { 22 }))
            .collect();
        for s in steps {
            match s {
                Step::Advance(secs) => w.now += Duration::seconds(secs),
                Step::Delete(i) => grants[i].meta.deleting = true,
                Step::Suspend(i, on) => {
                    grants[i].spec.suspend = on.then_some(true);
                    grants[i].meta.generation += 1;
                }
                Step::Pass(i) | Step::Crash(i, _) => {
                    let crash = match s {
                        Step::Crash(_, k) => Some(k),
                        _ => None,
                    };
                    let g = &grants[i];
                    let mine = PortClaim::mine(
                        String::new(),
                        g.meta.uid.clone(),
                        g.created.map(|t| t.timestamp()),
                        &g.spec,
                        Some(&g.status),
                    );
                    let others: Vec<PortClaim> = grants
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .filter_map(|(_, g)| claim(g))
                        .collect();
                    let holder = mine.as_ref().and_then(|m| port_holder(m, &others));
                    let rep = reconcile_sharing(
                        &mut grants[i],
                        &mut w.model,
                        &w.policies,
                        &BTreeMap::new(),
                        false,
                        holder.as_ref(),
                        w.now,
                        &w.config,
                        crash,
                    );
                    prop_assert!(rep.violations.is_empty(), "{:?}", rep.violations);
                }
            }
            check(&w, &grants, w.now)?;
        }
    }
}
