//! What Azure (azure-sim's `GET /_sim/state`) shows about the operator's grants, checked against
//! the grants a test made: double grants (two JIT requests for one grant attempt, two PIM grant
//! requests for one attempt, a PIM request no grant attempt accounts for) and orphaned access
//! (an open JIT port or an active PIM assignment that no live, active grant explains, or that
//! outlives the end time its grant's status shows).

use accessgrant_operator::api::{AccessGrant, Operation, Phase};
use accessgrant_operator::lifecycle::request_name;
use accessgrant_sim::azure::view::SimState;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// A grant a test created; kept after the object is gone (its uid names its requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub ns: String,
    pub name: String,
    pub uid: String,
}

impl Tracked {
    pub fn of(g: &AccessGrant) -> Tracked {
        Tracked {
            ns: g.namespace().unwrap_or_default(),
            name: g.name_any(),
            uid: g.uid().unwrap_or_default(),
        }
    }
    pub fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    fn marker_prefix(&self) -> String {
        format!("[ag:{}/{}#", self.ns, self.name)
    }
}

/// PIM operations that give access.
pub const GRANT_OPS: [Operation; 3] = [
    Operation::SelfActivate,
    Operation::AdminAssign,
    Operation::AdminExtend,
];
const ALL_OPS: [Operation; 6] = [
    Operation::SelfActivate,
    Operation::AdminAssign,
    Operation::AdminExtend,
    Operation::SelfDeactivate,
    Operation::AdminRemove,
    Operation::Cancel,
];

/// One JIT request of ours, as Azure lists it.
#[derive(Clone, Debug)]
pub struct JitRequest {
    pub marker: String,
    pub attempt: u32,
    pub closing: bool,
    pub start: String,
}

/// One PIM request of ours, attributed to a grant attempt by its deterministic name.
#[derive(Clone, Debug)]
pub struct PimRequest {
    pub name: String,
    pub attempt: u32,
    pub op: Operation,
    pub request_type: String,
    pub status: String,
}

/// The verdict.
#[derive(Debug, Default)]
pub struct Audit {
    /// JIT requests per grant (`ns/name`).
    pub jit: BTreeMap<String, Vec<JitRequest>>,
    /// PIM requests per grant (`ns/name`).
    pub pim: BTreeMap<String, Vec<PimRequest>>,
    /// Two requests for one grant attempt, or a request no tracked grant attempt accounts for.
    pub double_grants: Vec<String>,
    /// Access that no live active grant explains, or that outlives its grant's status.
    pub orphans: Vec<String>,
}

impl Audit {
    /// Grant-type PIM requests (SelfActivate, AdminAssign, AdminExtend) Azure accepted for a grant.
    pub fn pim_grants(&self, key: &str) -> usize {
        self.pim.get(key).map_or(0, |v| {
            v.iter()
                .filter(|r| GRANT_OPS.contains(&r.op))
                .filter(|r| {
                    !matches!(
                        r.status.as_str(),
                        "Denied" | "Canceled" | "Failed" | "Invalid" | "TimedOut"
                    )
                })
                .count()
        })
    }

    /// JIT requests that open (or renew) access for a grant, closing requests excluded.
    pub fn jit_grants(&self, key: &str) -> usize {
        self.jit
            .get(key)
            .map_or(0, |v| v.iter().filter(|r| !r.closing).count())
    }

    /// Panics with every finding when there is any.
    pub fn assert_clean(&self, context: &str) {
        assert!(
            self.double_grants.is_empty() && self.orphans.is_empty(),
            "{context}: {} double grant(s), {} orphan(s)\ndouble grants: {:#?}\norphans: {:#?}",
            self.double_grants.len(),
            self.orphans.len(),
            self.double_grants,
            self.orphans
        );
    }
}

/// Every `[ag:...]` marker in a justification.
pub fn markers(justification: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = justification;
    while let Some(i) = rest.find("[ag:") {
        let tail = &rest[i..];
        match tail.find(']') {
            Some(j) => {
                out.push(tail[..=j].to_string());
                rest = &tail[j + 1..];
            }
            None => break,
        }
    }
    out
}

fn marker_attempt(marker: &str) -> Option<u32> {
    let after = marker.rsplit_once('#')?.1;
    after.split('.').next()?.parse().ok()
}

fn t(v: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    v.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&chrono::Utc))
}

fn guid_tail(id: &str) -> String {
    id.rsplit('/').next().unwrap_or(id).to_ascii_lowercase()
}

/// Slack between the end Azure shows and the end the grant's status shows (whole seconds in
/// status, sub-second in Azure).
const END_SLACK: chrono::Duration = chrono::Duration::seconds(2);

/// Checks azure-sim's `state` against the `tracked` grants (every grant the test made) and the
/// `live` ones (what the cluster holds now). `principals` are the object ids whose PIM requests
/// and assignments are the operator's to account for. With `settled`, only Active/Renewing
/// grants may hold access; otherwise grants in flight (Requesting, Revoking, ...) may too.
pub fn audit(
    state: &SimState,
    tracked: &[Tracked],
    live: &[AccessGrant],
    principals: &[&str],
    settled: bool,
) -> Audit {
    let mut a = Audit::default();
    let by_marker = |m: &str| {
        tracked.iter().find(|g| {
            m.starts_with(&g.marker_prefix())
                && m.rsplit_once('.').is_some_and(|(_, uid8)| {
                    g.uid.starts_with(uid8.trim_end_matches(']')) && !uid8.is_empty()
                })
        })
    };
    let live_of = |g: &Tracked| {
        live.iter()
            .find(|l| l.uid().as_deref() == Some(g.uid.as_str()))
    };
    let holds = |l: &AccessGrant| {
        let phase = l.status.as_ref().map(|s| s.phase);
        let deleting = l.metadata.deletion_timestamp.is_some();
        let suspended = l.spec.suspend == Some(true);
        if settled {
            !deleting && !suspended && matches!(phase, Some(Phase::Active) | Some(Phase::Renewing))
        } else {
            !matches!(
                phase,
                Some(Phase::Expired)
                    | Some(Phase::Revoked)
                    | Some(Phase::Denied)
                    | Some(Phase::Failed)
            ) || l.status.as_ref().is_some_and(|s| s.intent.is_some())
        }
    };

    // ----- JIT -----
    let mut per_marker: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, req) in state.jit_requests() {
        {
            let just = req.justification.as_deref().unwrap_or_default();
            let ms = markers(just);
            let Some(m) = ms.last().cloned() else {
                continue;
            };
            let start = req.start_time_utc.clone();
            per_marker.entry(m.clone()).or_default().push(start.clone());
            let owner = by_marker(&m);
            match owner {
                Some(g) => a.jit.entry(g.key()).or_default().push(JitRequest {
                    marker: m.clone(),
                    attempt: marker_attempt(&m).unwrap_or(0),
                    closing: just.contains("closing early"),
                    start: start.clone(),
                }),
                None => a.double_grants.push(format!(
                    "JIT request {m} (started {start}) belongs to no grant the test made"
                )),
            }
            for vm in &req.virtual_machines {
                for port in &vm.ports {
                    if !port.open() {
                        continue;
                    }
                    let what = format!(
                        "JIT port {}:{} open until {} by {m}",
                        guid_tail(&vm.id),
                        port.number,
                        port.end_time_utc.as_deref().unwrap_or("?")
                    );
                    let Some(g) = owner else {
                        a.orphans.push(format!("{what}: no grant"));
                        continue;
                    };
                    match live_of(g) {
                        None => a.orphans.push(format!("{what}: grant {} is gone", g.key())),
                        Some(l) if !holds(l) => a.orphans.push(format!(
                            "{what}: grant {} is {:?} (deleting: {}, suspend: {:?})",
                            g.key(),
                            l.status.as_ref().map(|s| s.phase),
                            l.metadata.deletion_timestamp.is_some(),
                            l.spec.suspend
                        )),
                        Some(l) => {
                            let status_end = l.status.as_ref().and_then(|s| s.end_time);
                            let open_end = t(port.end_time_utc.as_deref());
                            let closing = just.contains("closing early");
                            if settled
                                && !closing
                                && let (Some(se), Some(oe)) = (status_end, open_end)
                                && oe > se + END_SLACK
                            {
                                a.orphans.push(format!(
                                    "{what}: outlives the end {se} that grant {} shows",
                                    g.key()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    for (m, starts) in per_marker {
        if starts.len() > 1 {
            a.double_grants.push(format!(
                "JIT marker {m} initiated {} times (starts {starts:?})",
                starts.len()
            ));
        }
    }

    // ----- PIM -----
    let mut names: BTreeMap<String, (usize, u32, Operation)> = BTreeMap::new();
    for (i, g) in tracked.iter().enumerate() {
        for attempt in 0..=64u32 {
            for op in ALL_OPS {
                names.insert(request_name(&g.uid, attempt, op), (i, attempt, op));
            }
        }
    }
    let ours = |p: Option<&str>| {
        let p = p.unwrap_or_default();
        principals.iter().any(|x| x.eq_ignore_ascii_case(p))
    };
    let mut per_attempt: BTreeMap<(usize, u32), Vec<Operation>> = BTreeMap::new();
    for r in &state.role_assignment_schedule_requests {
        let p = &r.properties;
        if !ours(Some(&p.principal_id)) && !ours(p.requestor_id.as_deref()) {
            continue;
        }
        let name = r.name.to_ascii_lowercase();
        let request_type = p.request_type.clone();
        let status = p.status.clone();
        match names.get(&name) {
            None => a.double_grants.push(format!(
                "PIM {request_type} request {name} ({status}) is no grant attempt's deterministic name"
            )),
            Some(&(i, attempt, op)) => {
                if GRANT_OPS.contains(&op) {
                    per_attempt.entry((i, attempt)).or_default().push(op);
                }
                a.pim
                    .entry(tracked[i].key())
                    .or_default()
                    .push(PimRequest {
                        name,
                        attempt,
                        op,
                        request_type,
                        status,
                    });
            }
        }
    }
    for ((i, attempt), ops) in per_attempt {
        if ops.len() > 1 {
            a.double_grants.push(format!(
                "{} attempt {attempt}: {} PIM grant requests ({ops:?})",
                tracked[i].key(),
                ops.len()
            ));
        }
    }
    for inst in &state.role_assignment_schedule_instances {
        let p = &inst.properties;
        if !ours(Some(&p.principal_id)) {
            continue;
        }
        let scope = p.scope.as_str();
        let role = guid_tail(&p.role_definition_id);
        let principal = p.principal_id.as_str();
        let what = format!(
            "PIM assignment of role {role} to {principal} at {scope} ({}) until {}",
            p.assignment_type.as_deref().unwrap_or("?"),
            p.end_date_time.as_deref().unwrap_or("never")
        );
        let owners: Vec<&AccessGrant> = live
            .iter()
            .filter(|l| {
                l.status
                    .as_ref()
                    .and_then(|s| s.target.as_ref())
                    .and_then(|t| t.pim.as_ref())
                    .is_some_and(|t| {
                        t.scope.eq_ignore_ascii_case(scope)
                            && guid_tail(&t.role_definition_id) == role
                            && t.principal_id.eq_ignore_ascii_case(principal)
                    })
            })
            .collect();
        let holder = owners.iter().find(|l| holds(l));
        match holder {
            None => a.orphans.push(format!(
                "{what}: no live active grant holds it (grants on that target: {:?})",
                owners
                    .iter()
                    .map(|l| (l.name_any(), l.status.as_ref().map(|s| s.phase)))
                    .collect::<Vec<_>>()
            )),
            Some(l) => {
                let status_end = l.status.as_ref().and_then(|s| s.end_time);
                if settled
                    && let (Some(se), Some(oe)) = (status_end, t(p.end_date_time.as_deref()))
                    && oe > se + END_SLACK
                {
                    a.orphans.push(format!(
                        "{what}: outlives the end {se} that grant {} shows",
                        l.name_any()
                    ));
                }
            }
        }
    }
    a
}

/// Access Azure shows for one grant: open JIT ports of requests carrying its markers, and
/// active PIM assignments on its target `(principal, role, scope)`.
pub fn access_of(state: &SimState, g: &Tracked, pim: Option<(&str, &str, &str)>) -> Vec<String> {
    let mut out = vec![];
    for (_, req) in state.jit_requests() {
        {
            let just = req.justification.as_deref().unwrap_or_default();
            let Some(m) = markers(just).last().cloned() else {
                continue;
            };
            let uid8: String = g.uid.chars().take(8).collect();
            if !(m.starts_with(&g.marker_prefix()) && m.ends_with(&format!(".{uid8}]"))) {
                continue;
            }
            for vm in &req.virtual_machines {
                for port in &vm.ports {
                    if port.open() {
                        out.push(format!(
                            "JIT port {}:{} open until {} by {m}",
                            guid_tail(&vm.id),
                            port.number,
                            port.end_time_utc.as_deref().unwrap_or("?")
                        ));
                    }
                }
            }
        }
    }
    if let Some((principal, role, scope)) = pim {
        for inst in &state.role_assignment_schedule_instances {
            let p = &inst.properties;
            if p.principal_id.eq_ignore_ascii_case(principal)
                && p.scope.eq_ignore_ascii_case(scope)
                && guid_tail(&p.role_definition_id) == guid_tail(role)
            {
                out.push(format!(
                    "PIM assignment of {role} to {principal} at {scope} until {}",
                    p.end_date_time.as_deref().unwrap_or("never")
                ));
            }
        }
    }
    out
}
