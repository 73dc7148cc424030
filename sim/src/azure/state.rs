//! Mutable simulator state: JIT policies and requests, PIM requests, schedules/instances, the
//! call log, faults and throttle buckets. One `Mutex<State>`; never held across an await.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::arm::{last_segment, normalize_scope, scope_kind, stable_guid, subscription_of};
use super::time::{fmt_time, parse_duration, parse_time};
use super::world::{ThrottleSettings, World};

#[derive(Debug, Clone)]
pub struct JitPolicy {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub name: String,
    pub kind: String,
    /// Canonical `virtualMachines` array (camelCase).
    pub virtual_machines: Value,
    pub requests: Vec<Value>,
    /// No open port of `requests` ends before this (None: no open port with an end time), so
    /// [`JitPolicy::expire`] has nothing to do before it. Whoever adds or replaces requests
    /// lowers it ([`JitPolicy::requests_changed`]); closing ports may leave it lower than needed.
    pub next_end: Option<DateTime<Utc>>,
}

impl JitPolicy {
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Security/locations/{}/jitNetworkAccessPolicies/{}",
            self.subscription, self.resource_group, self.location, self.name
        )
    }
    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "properties": {
                "virtualMachines": self.virtual_machines,
                "requests": self.requests,
                "provisioningState": "Succeeded",
            },
            "id": self.id(),
            "name": self.name,
            "type": "Microsoft.Security/locations/jitNetworkAccessPolicies",
            "location": self.location,
        })
    }
    /// The requests were replaced or added to without tracking their ends: the next
    /// [`JitPolicy::expire`] looks at every port again.
    pub fn requests_changed(&mut self) {
        self.next_end = Some(DateTime::<Utc>::MIN_UTC);
    }
    /// Flips `Initiated` ports whose `endTimeUtc` passed to `Revoked`/`Expired`. Walks the
    /// requests only when an open port may have ended.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        if self.next_end.is_none_or(|t| t > now) {
            return;
        }
        let mut next: Option<DateTime<Utc>> = None;
        for r in &mut self.requests {
            for port in ports_mut(r) {
                let active = port
                    .get("status")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s == "Initiated" || s == "Initiating");
                if !active {
                    continue;
                }
                let Some(end) = port
                    .get("endTimeUtc")
                    .and_then(Value::as_str)
                    .and_then(parse_time)
                else {
                    continue;
                };
                if end <= now {
                    port["status"] = json!("Revoked");
                    port["statusReason"] = json!("Expired");
                } else {
                    next = Some(next.map_or(end, |n| n.min(end)));
                }
            }
        }
        self.next_end = next;
    }
}

/// Mutable references to every port object of a JIT request.
pub fn ports_mut(request: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    if let Some(vms) = request
        .get_mut("virtualMachines")
        .and_then(Value::as_array_mut)
    {
        for vm in vms {
            if let Some(ports) = vm.get_mut("ports").and_then(Value::as_array_mut) {
                out.extend(ports.iter_mut());
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PimRequest {
    pub name: String,
    pub scope: String,
    pub principal_id: String,
    pub principal_type: String,
    pub role_guid: String,
    pub role_definition_id: String,
    pub request_type: String,
    pub status: String,
    pub approval_id: Option<String>,
    pub start: DateTime<Utc>,
    pub expiration_type: String,
    pub duration: Option<String>,
    pub end_date_time: Option<DateTime<Utc>>,
    pub justification: Option<String>,
    pub ticket_number: Option<String>,
    pub ticket_system: Option<String>,
    pub requestor_id: String,
    pub created_on: DateTime<Utc>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub linked_eligibility_id: Option<String>,
    pub target_schedule_id: Option<String>,
    pub target_instance_id: Option<String>,
    /// Effective end computed at creation (for approval and scheduled starts).
    pub planned_end: Option<DateTime<Utc>>,
    /// GETs left that still show `Accepted` for a provisioned request.
    pub accepted_reads_left: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub schedule_name: String,
    pub instance_name: String,
    pub scope: String,
    pub role_guid: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
    pub assignment_type: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    pub linked_eligibility_id: Option<String>,
    pub linked_eligibility_instance_id: Option<String>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub created_on: DateTime<Utc>,
    pub updated_on: DateTime<Utc>,
}

impl Assignment {
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && self.end.is_none_or(|e| e > now)
    }
    pub fn schedule_id(&self) -> String {
        arm_child(&self.scope, "RoleAssignmentSchedules", &self.schedule_name)
    }
    pub fn instance_id(&self) -> String {
        arm_child(
            &self.scope,
            "RoleAssignmentScheduleInstances",
            &self.instance_name,
        )
    }
}

/// Lowercased `(scope, role GUID, principal)`: what PIM's one-assignment-per-target rules key on.
pub type TargetKey = (String, String, String);

pub fn target_key(scope: &str, role: &str, principal: &str) -> TargetKey {
    (
        scope.to_ascii_lowercase(),
        role.to_ascii_lowercase(),
        principal.to_ascii_lowercase(),
    )
}

/// Every scope string `s` (lowercased) for which `scope_at_or_above(s, scope)` can hold: `/`,
/// `scope` itself and each of its prefixes that ends just before a `/`.
pub fn ancestor_keys(scope: &str) -> Vec<String> {
    let lower = scope.to_ascii_lowercase();
    let mut out = vec!["/".to_string()];
    for (i, c) in lower.char_indices() {
        if c == '/' {
            out.push(lower[..i].to_string());
        }
    }
    out.push(lower);
    out.sort();
    out.dedup();
    out
}

/// Schedules (and their instances) in creation order, with the indexes PIM's lookups need and
/// a queue of end times, so that expiry and the per-target rules cost O(log n), not O(n).
#[derive(Debug, Default)]
pub struct Assignments {
    items: BTreeMap<u64, Assignment>,
    next_seq: u64,
    /// Lowercased schedule name -> sequence numbers.
    by_schedule: HashMap<String, BTreeSet<u64>>,
    /// Lowercased instance name -> sequence numbers.
    by_instance: HashMap<String, BTreeSet<u64>>,
    by_target: HashMap<TargetKey, BTreeSet<u64>>,
    /// (lowercased principal, lowercased scope) -> sequence numbers.
    by_principal_scope: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Lowercased scope -> sequence numbers (lists without a principal filter).
    by_scope: BTreeMap<String, BTreeSet<u64>>,
    ends: BTreeSet<(DateTime<Utc>, u64)>,
}

fn index_add<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<u64>>, k: K, seq: u64) {
    m.entry(k).or_default().insert(seq);
}

fn index_remove<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<u64>>, k: &K, seq: u64) {
    if let Some(set) = m.get_mut(k) {
        set.remove(&seq);
        if set.is_empty() {
            m.remove(k);
        }
    }
}

impl Assignments {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// In creation order.
    pub fn iter(&self) -> impl Iterator<Item = &Assignment> {
        self.items.values()
    }
    pub fn get(&self, seq: u64) -> Option<&Assignment> {
        self.items.get(&seq)
    }
    pub fn push(&mut self, a: Assignment) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        index_add(
            &mut self.by_schedule,
            a.schedule_name.to_ascii_lowercase(),
            seq,
        );
        index_add(
            &mut self.by_instance,
            a.instance_name.to_ascii_lowercase(),
            seq,
        );
        index_add(
            &mut self.by_target,
            target_key(&a.scope, &a.role_guid, &a.principal_id),
            seq,
        );
        self.by_principal_scope
            .entry((
                a.principal_id.to_ascii_lowercase(),
                a.scope.to_ascii_lowercase(),
            ))
            .or_default()
            .insert(seq);
        self.by_scope
            .entry(a.scope.to_ascii_lowercase())
            .or_default()
            .insert(seq);
        if let Some(end) = a.end {
            self.ends.insert((end, seq));
        }
        self.items.insert(seq, a);
        seq
    }
    pub fn remove(&mut self, seq: u64) -> Option<Assignment> {
        let a = self.items.remove(&seq)?;
        index_remove(
            &mut self.by_schedule,
            &a.schedule_name.to_ascii_lowercase(),
            seq,
        );
        index_remove(
            &mut self.by_instance,
            &a.instance_name.to_ascii_lowercase(),
            seq,
        );
        index_remove(
            &mut self.by_target,
            &target_key(&a.scope, &a.role_guid, &a.principal_id),
            seq,
        );
        let ps = (
            a.principal_id.to_ascii_lowercase(),
            a.scope.to_ascii_lowercase(),
        );
        if let Some(set) = self.by_principal_scope.get_mut(&ps) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_principal_scope.remove(&ps);
            }
        }
        let sc = a.scope.to_ascii_lowercase();
        if let Some(set) = self.by_scope.get_mut(&sc) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_scope.remove(&sc);
            }
        }
        if let Some(end) = a.end {
            self.ends.remove(&(end, seq));
        }
        Some(a)
    }
    /// Changes an assignment in place (its scope, role, principal and names must stay).
    pub fn modify(&mut self, seq: u64, f: impl FnOnce(&mut Assignment)) {
        let Some(a) = self.items.get_mut(&seq) else {
            return;
        };
        if let Some(end) = a.end {
            self.ends.remove(&(end, seq));
        }
        f(a);
        if let Some(end) = a.end {
            self.ends.insert((end, seq));
        }
    }
    /// Removes every assignment whose end is at or before `now`.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        while let Some(&(end, seq)) = self.ends.first() {
            if end > now {
                break;
            }
            self.ends.pop_first();
            self.remove(seq);
        }
    }
    /// Sequence numbers (ascending) of the assignments at exactly this (scope, role, principal),
    /// compared case-insensitively.
    pub fn for_target(&self, scope: &str, role: &str, principal: &str) -> Vec<u64> {
        self.by_target
            .get(&target_key(scope, role, principal))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
    /// Sequence numbers (ascending) of the schedules named `name` (case-insensitive).
    pub fn by_schedule_name(&self, name: &str) -> Vec<u64> {
        self.by_schedule
            .get(&name.to_ascii_lowercase())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
    /// Sequence numbers (ascending) of the instances named `name` (case-insensitive).
    pub fn by_instance_name(&self, name: &str) -> Vec<u64> {
        self.by_instance
            .get(&name.to_ascii_lowercase())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
    /// Sequence numbers (ascending) of every assignment of `principal` whose scope is at or
    /// above `scope`, or (with `below`) under it: a superset of what a list at `scope` filtered
    /// on that principal can show.
    pub fn for_principal_around(&self, principal: &str, scope: &str, below: bool) -> Vec<u64> {
        let p = principal.to_ascii_lowercase();
        let mut out: Vec<u64> = Vec::new();
        if scope == "/" {
            for (_, set) in self
                .by_principal_scope
                .range((p.clone(), String::new())..)
                .take_while(|((q, _), _)| *q == p)
            {
                out.extend(set.iter().copied());
            }
        } else {
            for anc in ancestor_keys(scope) {
                if let Some(set) = self.by_principal_scope.get(&(p.clone(), anc)) {
                    out.extend(set.iter().copied());
                }
            }
            if below {
                let lower = scope.to_ascii_lowercase();
                // Scopes under `lower` start with `lower/`; '0' is the character after '/'.
                let from = (p.clone(), format!("{lower}/"));
                let to = (p.clone(), format!("{lower}0"));
                for (_, set) in self.by_principal_scope.range(from..to) {
                    out.extend(set.iter().copied());
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
    /// Sequence numbers (ascending) of every assignment whose scope is at or above `scope`, or
    /// (with `below`) under it: a superset of what an unfiltered list at `scope` can show.
    pub fn around(&self, scope: &str, below: bool) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        if scope == "/" {
            out.extend(self.items.keys().copied());
            return out;
        }
        for anc in ancestor_keys(scope) {
            if let Some(set) = self.by_scope.get(&anc) {
                out.extend(set.iter().copied());
            }
        }
        if below {
            let lower = scope.to_ascii_lowercase();
            for (_, set) in self
                .by_scope
                .range(format!("{lower}/")..format!("{lower}0"))
            {
                out.extend(set.iter().copied());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// PIM schedule requests in creation order, indexed by name and target, with the queue of
/// scheduled activations waiting for their start.
#[derive(Debug, Default)]
pub struct Requests {
    items: Vec<PimRequest>,
    /// Lowercased name -> indexes.
    by_name: HashMap<String, Vec<usize>>,
    by_target: HashMap<TargetKey, Vec<usize>>,
    /// `ScheduleCreated` requests by start.
    scheduled: BTreeSet<(DateTime<Utc>, usize)>,
}

impl std::ops::Index<usize> for Requests {
    type Output = PimRequest;
    fn index(&self, i: usize) -> &PimRequest {
        &self.items[i]
    }
}

impl Requests {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, PimRequest> {
        self.items.iter()
    }
    pub fn push(&mut self, r: PimRequest) -> usize {
        let i = self.items.len();
        self.by_name
            .entry(r.name.to_ascii_lowercase())
            .or_default()
            .push(i);
        self.by_target
            .entry(target_key(&r.scope, &r.role_guid, &r.principal_id))
            .or_default()
            .push(i);
        if r.status == "ScheduleCreated" {
            self.scheduled.insert((r.start, i));
        }
        self.items.push(r);
        i
    }
    /// Replaces request `i` (same name, scope, role and principal).
    pub fn set(&mut self, i: usize, r: PimRequest) {
        if r.status == "ScheduleCreated" {
            self.scheduled.insert((r.start, i));
        }
        if let Some(slot) = self.items.get_mut(i) {
            *slot = r;
        }
    }
    /// For changes that do not make a request `ScheduleCreated`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut PimRequest> {
        self.items.get_mut(i)
    }
    /// Indexes (ascending) of the requests named `name` (case-insensitive).
    pub fn named(&self, name: &str) -> &[usize] {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
    /// Indexes (ascending) of the requests for exactly this (scope, role, principal).
    pub fn for_target(&self, scope: &str, role: &str, principal: &str) -> &[usize] {
        self.by_target
            .get(&target_key(scope, role, principal))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
    /// A scheduled activation whose start arrived is now provisioned.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        while let Some(&(start, i)) = self.scheduled.first() {
            if start > now {
                break;
            }
            self.scheduled.pop_first();
            if let Some(r) = self.items.get_mut(i)
                && r.status == "ScheduleCreated"
                && r.start <= now
            {
                r.status = "Provisioned".into();
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct EligibilityState {
    pub name: String,
    pub instance_name: String,
    pub scope: String,
    pub role_guid: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub request_id: String,
}

impl EligibilityState {
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && self.end.is_none_or(|e| e > now)
    }
    pub fn schedule_id(&self) -> String {
        arm_child(&self.scope, "RoleEligibilitySchedules", &self.name)
    }
}

/// Fields in alphabetical order: serialised directly, a record reads as it did when the log
/// went through `serde_json::Value` (whose objects sort their keys).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    pub method: String,
    pub operation: String,
    pub path: String,
    pub status: u16,
    pub time: String,
}

/// The last 100,000 calls (the oldest 10,000 go when there are more), as JSON.
#[derive(Debug, Default)]
pub struct CallLog {
    records: std::collections::VecDeque<Box<[u8]>>,
}

impl CallLog {
    pub const MAX: usize = 100_000;
    pub const DROP: usize = 10_000;

    pub fn push(&mut self, r: &CallRecord) {
        self.records
            .push_back(serde_json::to_vec(r).unwrap_or_default().into_boxed_slice());
        if self.records.len() > Self::MAX {
            self.records.drain(..Self::DROP);
        }
    }
    pub fn clear(&mut self) {
        self.records.clear();
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// The JSON array of the records, oldest first (what serialising the records would give).
    pub fn to_json(&self) -> Vec<u8> {
        let size: usize = self.records.iter().map(|r| r.len() + 1).sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'[');
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(r);
        }
        out.push(b']');
        out
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub id: String,
    pub operation: String,
    pub subscription: Option<String>,
    pub kind: String,
    pub status: u16,
    pub retry_after_seconds: Option<u64>,
    pub latency_ms: u64,
    /// Up to this much more latency, uniformly at random per call.
    pub jitter_ms: u64,
    pub count: Option<u64>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum OpClass {
    Read,
    Write,
    Delete,
}

impl OpClass {
    pub fn header_word(self) -> &'static str {
        match self {
            OpClass::Read => "reads",
            OpClass::Write => "writes",
            OpClass::Delete => "deletes",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BucketState {
    pub tokens: f64,
    pub last: DateTime<Utc>,
    pub blocked_until: Option<DateTime<Utc>>,
    pub block_seconds: u64,
}

/// Lowercased `(subscription, resource group, location, name)` of a JIT policy.
pub type JitKey = (String, String, String, String);

pub fn jit_key(sub: &str, rg: &str, location: &str, name: &str) -> JitKey {
    (
        sub.to_ascii_lowercase(),
        rg.to_ascii_lowercase(),
        location.to_ascii_lowercase(),
        name.to_ascii_lowercase(),
    )
}

pub struct State {
    pub world: World,
    pub jit_policies: Vec<JitPolicy>,
    /// Index of `jit_policies` (first policy per key); [`State::reindex_jit`] after changes.
    jit_index: HashMap<JitKey, usize>,
    pub requests: Requests,
    pub assignments: Assignments,
    /// Fixed after start.
    pub eligibilities: Vec<EligibilityState>,
    /// (lowercased principal, role GUID, scope) -> indexes of `eligibilities`, ascending.
    elig_index: HashMap<TargetKey, Vec<usize>>,
    /// Lowercased eligibility schedule name -> first index in `eligibilities`.
    elig_names: HashMap<String, usize>,
    /// The call log, each record serialised once when made (the log is read often, whole).
    pub calls: CallLog,
    pub faults: Vec<Fault>,
    pub buckets: HashMap<(String, String, OpClass), BucketState>,
    pub throttle: ThrottleSettings,
    pub floor: Duration,
}

/// `{scope}/providers/Microsoft.Authorization/{kind}/{name}` with `/` scope handled.
pub fn arm_child(scope: &str, kind: &str, name: &str) -> String {
    let s = if scope == "/" { "" } else { scope };
    format!("{s}/providers/Microsoft.Authorization/{kind}/{name}")
}

/// Full role definition id for a GUID, as seen from a scope (subscription-qualified when the
/// scope is at or below a subscription, as the examples show).
pub fn role_definition_id(scope: &str, guid: &str) -> String {
    match subscription_of(scope) {
        Some(sub) => {
            format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        }
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
    }
}

impl State {
    pub fn new(world: World, now: DateTime<Utc>) -> Result<State, String> {
        let mut jit_policies = Vec::new();
        for seed in &world.jit_policies {
            let vms = seed
                .properties
                .get("virtualMachines")
                .cloned()
                .unwrap_or_else(|| json!([]));
            let vms = super::jit::canonical_policy_vms(&vms)
                .map_err(|e| format!("jitPolicies {}: {}", seed.name, e.message))?;
            let requests = seed
                .properties
                .get("requests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            jit_policies.push(JitPolicy {
                subscription: seed.subscription_id.clone(),
                resource_group: seed.resource_group.clone(),
                location: seed.location.clone(),
                name: seed.name.clone(),
                kind: seed.kind.clone().unwrap_or_else(|| "Basic".into()),
                virtual_machines: vms,
                requests,
                next_end: Some(DateTime::<Utc>::MIN_UTC),
            });
        }
        let mut eligibilities = Vec::new();
        for e in &world.eligibilities {
            let role_guid = last_segment(&e.role_definition_id).to_string();
            let name = e.id.clone().unwrap_or_default();
            eligibilities.push(EligibilityState {
                instance_name: e.instance_id.clone().unwrap_or_default(),
                scope: e.scope.clone(),
                role_definition_id: role_definition_id(&e.scope, &role_guid),
                role_guid,
                principal_id: e.principal_id.clone(),
                start: e
                    .start_date_time
                    .as_deref()
                    .and_then(parse_time)
                    .unwrap_or(now - Duration::days(1)),
                end: e.end_date_time.as_deref().and_then(parse_time),
                condition: e.condition.clone(),
                condition_version: e.condition_version.clone(),
                request_id: arm_child(
                    &e.scope,
                    "RoleEligibilityScheduleRequests",
                    &stable_guid(&format!("eligreq/{name}")),
                ),
                name,
            });
        }
        let mut assignments = Assignments::default();
        for a in &world.active_assignments {
            let role_guid = last_segment(&a.role_definition_id).to_string();
            let ptype = world
                .principal(&a.principal_id)
                .map(|p| p.kind.as_str())
                .unwrap_or("User");
            let sched = a.schedule_id.clone().unwrap_or_else(|| {
                stable_guid(&format!(
                    "sched/{}/{}/{}",
                    a.scope, role_guid, a.principal_id
                ))
            });
            let linked = a.linked_role_eligibility_schedule_id.clone();
            let linked_inst = linked.as_deref().and_then(|l| {
                eligibilities
                    .iter()
                    .find(|e| e.name.eq_ignore_ascii_case(last_segment(l)))
                    .map(|e| e.instance_name.clone())
            });
            let start = a
                .start_date_time
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(now - Duration::hours(1));
            assignments.push(Assignment {
                instance_name: a
                    .instance_id
                    .clone()
                    .unwrap_or_else(|| stable_guid(&format!("inst/{sched}"))),
                schedule_name: sched,
                scope: a.scope.clone(),
                role_definition_id: role_definition_id(&a.scope, &role_guid),
                role_guid,
                principal_id: a.principal_id.clone(),
                principal_type: ptype.into(),
                assignment_type: a
                    .assignment_type
                    .clone()
                    .unwrap_or_else(|| "Assigned".into()),
                start,
                end: a.end_date_time.as_deref().and_then(parse_time),
                request_id: a.request_id.clone(),
                linked_eligibility_id: linked,
                linked_eligibility_instance_id: linked_inst,
                condition: a.condition.clone(),
                condition_version: a.condition_version.clone(),
                created_on: start,
                updated_on: start,
            });
        }
        let floor = parse_duration(&world.settings.deactivation_floor)
            .ok_or_else(|| "settings.deactivationFloor is not a duration".to_string())?;
        let mut elig_index: HashMap<TargetKey, Vec<usize>> = HashMap::new();
        let mut elig_names: HashMap<String, usize> = HashMap::new();
        for (i, e) in eligibilities.iter().enumerate() {
            elig_index
                .entry((
                    e.principal_id.to_ascii_lowercase(),
                    e.role_guid.to_ascii_lowercase(),
                    e.scope.to_ascii_lowercase(),
                ))
                .or_default()
                .push(i);
            elig_names.entry(e.name.to_ascii_lowercase()).or_insert(i);
        }
        let mut world = world;
        world.build_index();
        let mut state = State {
            throttle: world.settings.throttle,
            floor,
            world,
            jit_policies,
            jit_index: HashMap::new(),
            requests: Requests::default(),
            assignments,
            eligibilities,
            elig_index,
            elig_names,
            calls: CallLog::default(),
            faults: Vec::new(),
            buckets: HashMap::new(),
        };
        state.reindex_jit();
        Ok(state)
    }

    /// Lazy expiry of PIM: runs before every read and write. Costs O(log n) per item that
    /// ended. JIT ports expire when their policy is touched ([`JitPolicy::expire`]).
    pub fn expire(&mut self, now: DateTime<Utc>) {
        self.assignments.expire(now);
        self.requests.expire(now);
    }

    /// Expires the ports of every JIT policy (for views of the whole state).
    pub fn expire_all_jit(&mut self, now: DateTime<Utc>) {
        for p in &mut self.jit_policies {
            p.expire(now);
        }
    }

    /// Rebuilds the JIT policy index after policies were added or removed.
    pub fn reindex_jit(&mut self) {
        self.jit_index.clear();
        for (i, p) in self.jit_policies.iter().enumerate() {
            self.jit_index
                .entry(jit_key(
                    &p.subscription,
                    &p.resource_group,
                    &p.location,
                    &p.name,
                ))
                .or_insert(i);
        }
    }

    /// Index in `jit_policies` of the first policy with this (case-insensitive) key.
    pub fn jit_policy_index(
        &self,
        sub: &str,
        rg: &str,
        location: &str,
        name: &str,
    ) -> Option<usize> {
        self.jit_index
            .get(&jit_key(sub, rg, location, name))
            .copied()
    }

    /// Indexes (ascending) of the eligibilities of `principal` for `role` at `scope` or above
    /// it: a superset of those that allow an activation at `scope`.
    pub fn eligibilities_above(&self, principal: &str, role: &str, scope: &str) -> Vec<usize> {
        let p = principal.to_ascii_lowercase();
        let r = role.to_ascii_lowercase();
        let mut out: Vec<usize> = Vec::new();
        for anc in ancestor_keys(scope) {
            if let Some(v) = self.elig_index.get(&(p.clone(), r.clone(), anc)) {
                out.extend(v.iter().copied());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first eligibility whose schedule name is `name` (case-insensitive).
    pub fn eligibility_named(&self, name: &str) -> Option<&EligibilityState> {
        self.elig_names
            .get(&name.to_ascii_lowercase())
            .and_then(|&i| self.eligibilities.get(i))
    }

    // ---- expandedProperties ----

    pub fn expanded_scope(&self, scope: &str) -> Value {
        let kind = scope_kind(scope);
        let display = match kind {
            "subscription" => subscription_of(scope)
                .and_then(|s| self.world.subscription(&s))
                .and_then(|s| s.display_name.clone())
                .unwrap_or_else(|| last_segment(scope).to_string()),
            "tenant" => "Tenant Root".to_string(),
            _ => last_segment(scope).to_string(),
        };
        json!({"id": scope, "displayName": display, "type": kind})
    }

    pub fn expanded_role(&self, scope: &str, guid: &str) -> Value {
        let (name, kind) = self
            .world
            .role(guid)
            .map(|r| (r.role_name.clone(), r.kind.clone()))
            .unwrap_or_else(|| (guid.to_string(), "BuiltInRole".to_string()));
        json!({"id": role_definition_id(scope, guid), "displayName": name, "type": kind})
    }

    pub fn expanded_principal(&self, id: &str) -> Value {
        match self.world.principal(id) {
            Some(p) => json!({
                "id": p.object_id,
                "displayName": p.display_name,
                "email": p.email,
                "type": p.kind.as_str(),
            }),
            None => json!({"id": id, "displayName": null, "email": null, "type": "User"}),
        }
    }

    fn expanded(&self, scope: &str, role: &str, principal: &str) -> Value {
        json!({
            "scope": self.expanded_scope(scope),
            "roleDefinition": self.expanded_role(scope, role),
            "principal": self.expanded_principal(principal),
        })
    }

    // ---- JSON renderers in the shapes of Microsoft's examples ----

    pub fn request_json(&self, r: &PimRequest) -> Value {
        let mut props = json!({
            "targetRoleAssignmentScheduleId": r.target_schedule_id,
            "targetRoleAssignmentScheduleInstanceId": r.target_instance_id,
            "scope": r.scope,
            "roleDefinitionId": r.role_definition_id,
            "principalId": r.principal_id,
            "principalType": r.principal_type,
            "requestType": r.request_type,
            "status": if r.status == "Provisioned" && r.accepted_reads_left > 0 { "Accepted" } else { r.status.as_str() },
            "approvalId": r.approval_id,
            "scheduleInfo": {
                "startDateTime": fmt_time(r.start),
                "expiration": {
                    "type": r.expiration_type,
                    "endDateTime": r.end_date_time.map(fmt_time),
                    "duration": r.duration,
                }
            },
            "ticketInfo": {"ticketNumber": r.ticket_number, "ticketSystem": r.ticket_system},
            "justification": r.justification,
            "requestorId": r.requestor_id,
            "createdOn": fmt_time(r.created_on),
            "condition": r.condition,
            "conditionVersion": r.condition_version,
            "expandedProperties": self.expanded(&r.scope, &r.role_guid, &r.principal_id),
        });
        if let Some(l) = &r.linked_eligibility_id {
            props["linkedRoleEligibilityScheduleId"] = json!(l);
        }
        json!({
            "properties": props,
            "name": r.name,
            "id": arm_child(&r.scope, "RoleAssignmentScheduleRequests", &r.name),
            "type": "Microsoft.Authorization/RoleAssignmentScheduleRequests",
        })
    }

    pub fn schedule_json(&self, a: &Assignment) -> Value {
        json!({
            "properties": {
                "linkedRoleEligibilityScheduleId": a.linked_eligibility_id,
                "assignmentType": a.assignment_type,
                "scope": a.scope,
                "roleDefinitionId": a.role_definition_id,
                "principalId": a.principal_id,
                "principalType": a.principal_type,
                "status": "Provisioned",
                "roleAssignmentScheduleRequestId": a.request_id,
                "startDateTime": fmt_time(a.start),
                "endDateTime": a.end.map(fmt_time),
                "memberType": "Direct",
                "createdOn": fmt_time(a.created_on),
                "updatedOn": fmt_time(a.updated_on),
                "condition": a.condition,
                "conditionVersion": a.condition_version,
                "expandedProperties": self.expanded(&a.scope, &a.role_guid, &a.principal_id),
            },
            "name": a.schedule_name,
            "id": a.schedule_id(),
            "type": "Microsoft.Authorization/RoleAssignmentSchedules",
        })
    }

    pub fn instance_json(&self, a: &Assignment) -> Value {
        json!({
            "properties": {
                "originRoleAssignmentId": arm_child(&a.scope, "roleAssignments", &a.instance_name),
                "linkedRoleEligibilityScheduleId": a.linked_eligibility_id,
                "linkedRoleEligibilityScheduleInstanceId": a.linked_eligibility_instance_id,
                "assignmentType": a.assignment_type,
                "scope": a.scope,
                "roleDefinitionId": a.role_definition_id,
                "principalId": a.principal_id,
                "principalType": a.principal_type,
                "status": "Provisioned",
                "roleAssignmentScheduleId": a.schedule_id(),
                "startDateTime": fmt_time(a.start),
                "endDateTime": a.end.map(fmt_time),
                "memberType": "Direct",
                "createdOn": fmt_time(a.created_on),
                "condition": a.condition,
                "conditionVersion": a.condition_version,
                "expandedProperties": self.expanded(&a.scope, &a.role_guid, &a.principal_id),
            },
            "name": a.instance_name,
            "id": a.instance_id(),
            "type": "Microsoft.Authorization/RoleAssignmentScheduleInstances",
        })
    }

    pub fn eligibility_json(&self, e: &EligibilityState) -> Value {
        json!({
            "properties": {
                "scope": e.scope,
                "roleDefinitionId": e.role_definition_id,
                "principalId": e.principal_id,
                "principalType": self.principal_type(&e.principal_id),
                "status": "Provisioned",
                "roleEligibilityScheduleRequestId": e.request_id,
                "startDateTime": fmt_time(e.start),
                "endDateTime": e.end.map(fmt_time),
                "memberType": "Direct",
                "createdOn": fmt_time(e.start),
                "updatedOn": fmt_time(e.start),
                "condition": e.condition,
                "conditionVersion": e.condition_version,
                "expandedProperties": self.expanded(&e.scope, &e.role_guid, &e.principal_id),
            },
            "name": e.name,
            "id": e.schedule_id(),
            "type": "Microsoft.Authorization/RoleEligibilitySchedules",
        })
    }

    pub fn eligibility_instance_json(&self, e: &EligibilityState) -> Value {
        json!({
            "properties": {
                "scope": e.scope,
                "roleDefinitionId": e.role_definition_id,
                "principalId": e.principal_id,
                "principalType": self.principal_type(&e.principal_id),
                "status": "Provisioned",
                "roleEligibilityScheduleId": e.schedule_id(),
                "startDateTime": fmt_time(e.start),
                "endDateTime": e.end.map(fmt_time),
                "memberType": "Direct",
                "createdOn": fmt_time(e.start),
                "condition": e.condition,
                "conditionVersion": e.condition_version,
                "expandedProperties": self.expanded(&e.scope, &e.role_guid, &e.principal_id),
            },
            "name": e.instance_name,
            "id": arm_child(&e.scope, "RoleEligibilityScheduleInstances", &e.instance_name),
            "type": "Microsoft.Authorization/RoleEligibilityScheduleInstances",
        })
    }

    pub fn principal_type(&self, id: &str) -> &'static str {
        self.world
            .principal(id)
            .map(|p| p.kind.as_str())
            .unwrap_or("User")
    }

    /// Everything for `GET /_sim/state`.
    pub fn dump(&self, now: DateTime<Utc>) -> Value {
        json!({
            "time": fmt_time(now),
            "jitPolicies": self.jit_policies.iter().map(JitPolicy::to_json).collect::<Vec<_>>(),
            "roleAssignmentScheduleRequests": self.requests.iter().map(|r| self.request_json(r)).collect::<Vec<_>>(),
            "roleAssignmentSchedules": self.assignments.iter().map(|a| self.schedule_json(a)).collect::<Vec<_>>(),
            "roleAssignmentScheduleInstances": self.assignments.iter().filter(|a| a.active(now)).map(|a| self.instance_json(a)).collect::<Vec<_>>(),
            "roleEligibilitySchedules": self.eligibilities.iter().map(|e| self.eligibility_json(e)).collect::<Vec<_>>(),
            "faults": self.faults,
        })
    }
}

pub fn normalize(scope: &str) -> String {
    normalize_scope(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(i: usize) -> CallRecord {
        CallRecord {
            caller: i.is_multiple_of(2).then(|| "c\"aller".to_string()),
            fault: i.is_multiple_of(3).then(|| "reset".to_string()),
            method: "GET".into(),
            operation: "Op".into(),
            path: format!("/p/{i}?a=b"),
            status: 200,
            time: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn call_log_reads_as_the_records_serialised_and_wraps_by_ten_thousand() {
        let mut log = CallLog::default();
        let mut all = Vec::new();
        for i in 0..5 {
            log.push(&call(i));
            all.push(call(i));
        }
        assert_eq!(log.to_json(), serde_json::to_vec(&all).unwrap());
        // Through serde_json::Value (sorted keys), as the log used to be served.
        let via_value = serde_json::to_vec(&serde_json::to_value(&all).unwrap()).unwrap();
        assert_eq!(log.to_json(), via_value);
        for i in 5..=CallLog::MAX {
            log.push(&call(i));
        }
        assert_eq!(log.len(), CallLog::MAX + 1 - CallLog::DROP);
        let v: Vec<Value> = serde_json::from_slice(&log.to_json()).unwrap();
        assert_eq!(v[0]["path"], json!(format!("/p/{}?a=b", CallLog::DROP)));
        assert_eq!(CallLog::default().to_json(), b"[]");
    }
}
