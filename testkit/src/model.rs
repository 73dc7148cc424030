//! A pure in-memory model of Azure's JIT and PIM behaviour (not an HTTP mock), and the doors
//! through which the operator's own executor runs against it. Tests and
//! benchmarks run plan -> apply -> observe -> plan loops with it, including crashes between
//! steps (a crash loses whatever was not yet written).

use accessgrant_operator::api::{
    AccessGrantSpec, AccessGrantStatus, AccessPolicy, Intent, Operation,
};
use accessgrant_operator::arm_id::ArmId;
use accessgrant_operator::azure::error::AzureError;
use accessgrant_operator::azure::models::{is_removal_type, jit_port_closed, pim_class};
use accessgrant_operator::executor::{
    AzureDoor, ExecError, GrantDoor, Judged, Outcome, Stored, execute,
};
use accessgrant_operator::guard::{GrantContext, guard};
use accessgrant_operator::lifecycle::{
    AzureWrite, GrantMeta, JitPolicyView, JitRequestPortView, JitRequestView, Need, Observed,
    PimInstanceView, PimPolicyView, PimRequestView, Plan, PlannedEvent, PlannerConfig, Read,
    WriteAnswer,
};
use accessgrant_operator::validate::validate;
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, VecDeque};

/// (scope, role definition id, principal), normalised lower case.
pub type PimKey = (String, String, String);

/// An active PIM assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInstance {
    /// Instance id.
    pub id: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (None = permanent).
    pub end: Option<DateTime<Utc>>,
    /// `Activated` or `Assigned`.
    pub assignment_type: String,
    /// The request that created it (None when it pre-existed).
    pub request_name: Option<String>,
}

/// A stored PIM request.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    /// The view Azure returns.
    pub view: PimRequestView,
    /// The tuple.
    pub key: PimKey,
}

/// One Azure write as the model recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteLog {
    /// When.
    pub time: DateTime<Utc>,
    /// Kind (`SelfActivate`, `JitInitiate`, ...).
    pub kind: String,
    /// PIM request name or JIT justification.
    pub id: String,
    /// Whether it changed Azure state.
    pub applied: bool,
}

/// The model.
#[derive(Clone, Debug, Default)]
pub struct AzureModel {
    /// PIM eligibilities (tuples that may SelfActivate).
    pub eligible: Vec<PimKey>,
    /// Role management policy per tuple (scope, role) -> rules; missing = permissive.
    pub pim_policies: BTreeMap<(String, String), PimPolicyView>,
    /// Active instances per tuple.
    pub instances: BTreeMap<PimKey, ModelInstance>,
    /// Requests by name.
    pub requests: BTreeMap<String, ModelRequest>,
    /// JIT policies by (sub, rg, location, name), lower case.
    pub jit_policies: BTreeMap<(String, String, String, String), JitPolicyView>,
    /// Errors to return for the next writes (before applying them).
    pub faults: VecDeque<AzureError>,
    /// When true, the next write is applied but its answer is lost (a timeout).
    pub lose_next_answer: bool,
    /// Deactivation floor.
    pub deactivation_floor: Duration,
    /// Every write.
    pub log: Vec<WriteLog>,
    /// Reads served.
    pub reads: usize,
    /// When true, role management policies are not readable (so only Azure's own answer
    /// reveals a rule failure, as when the operator lacks read access to role settings).
    pub hide_pim_policies: bool,
}

fn lc(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn norm_scope(s: &str) -> String {
    ArmId::parse(s).map_or_else(|_| lc(s), |id| lc(&id.to_string()))
}

impl AzureModel {
    /// A model with Azure's 5-minute deactivation floor.
    pub fn new() -> Self {
        Self {
            deactivation_floor: Duration::minutes(5),
            ..Default::default()
        }
    }

    /// Makes a principal eligible for a role at a scope.
    pub fn add_eligibility(&mut self, scope: &str, role: &str, principal: &str) {
        self.eligible
            .push((norm_scope(scope), lc(role), lc(principal)));
    }

    /// Adds a JIT policy.
    pub fn add_jit_policy(
        &mut self,
        sub: &str,
        rg: &str,
        location: &str,
        name: &str,
        policy: JitPolicyView,
    ) {
        self.jit_policies
            .insert((lc(sub), lc(rg), lc(location), lc(name)), policy);
    }

    /// Expires whatever ended by `now` (Azure does this by wall clock).
    pub fn tick(&mut self, now: DateTime<Utc>) {
        self.instances.retain(|_, i| i.end.is_none_or(|e| e > now));
        for pol in self.jit_policies.values_mut() {
            for r in &mut pol.requests {
                for p in &mut r.ports {
                    if p.status != "Revoked" && p.end.is_some_and(|e| e <= now) {
                        p.status = "Revoked".into();
                        p.status_reason = Some("Expired".into());
                    }
                }
            }
        }
    }

    /// Live JIT ports: (vm id lower, port, request justification).
    pub fn open_jit_ports(&self) -> Vec<(String, u16, String)> {
        self.jit_policies
            .values()
            .flat_map(|p| p.requests.iter())
            .flat_map(|r| {
                r.ports
                    .iter()
                    .filter(|p| p.status != "Revoked")
                    .map(move |p| {
                        (
                            lc(&p.vm_id),
                            p.number,
                            r.justification.clone().unwrap_or_default(),
                        )
                    })
            })
            .collect()
    }

    /// Approves (true) or denies (false) a pending request.
    pub fn decide(&mut self, name: &str, approve: bool, now: DateTime<Utc>) {
        let Some(r) = self.requests.get_mut(name) else {
            return;
        };
        if r.view.status != "PendingApproval" {
            return;
        }
        if approve {
            r.view.status = "Provisioned".into();
            let key = r.key.clone();
            let end = r.view.end;
            let name = r.view.name.clone();
            self.instances.insert(
                key,
                ModelInstance {
                    id: format!("inst-{name}"),
                    start: now,
                    end,
                    assignment_type: "Activated".into(),
                    request_name: Some(name),
                },
            );
        } else {
            r.view.status = "Denied".into();
        }
    }

    /// Ends an active assignment out of band.
    pub fn revoke_out_of_band(&mut self, key: &PimKey) {
        self.instances.remove(key);
    }

    /// Serves a read the planner asked for.
    pub fn read(&mut self, need: &Need, st: &AccessGrantStatus, now: DateTime<Utc>) -> ReadAnswer {
        self.read_raw(need, st, now).classified()
    }

    fn read_raw(&mut self, need: &Need, st: &AccessGrantStatus, now: DateTime<Utc>) -> ReadAnswer {
        self.tick(now);
        self.reads += 1;
        match need {
            Need::PimRequest(name) => ReadAnswer::PimRequest(match self.requests.get(name) {
                Some(r) => Read::Found(r.view.clone()),
                None => Read::Missing,
            }),
            Need::PimInstance => {
                let key = st.target.as_ref().and_then(|t| t.pim.as_ref()).map(|p| {
                    (
                        norm_scope(&p.scope),
                        lc(&p.role_definition_id),
                        lc(&p.principal_id),
                    )
                });
                ReadAnswer::PimInstance(match key.and_then(|k| self.instances.get(&k)) {
                    Some(i) => Read::Found(PimInstanceView {
                        id: i.id.clone(),
                        schedule_id: Some(format!("sched-{}", i.id)),
                        start: Some(i.start),
                        end: i.end,
                        assignment_type: i.assignment_type.clone(),
                    }),
                    None => Read::Missing,
                })
            }
            Need::PimPolicy => ReadAnswer::PimPolicy(Read::Missing),
            Need::JitPolicy => {
                let key = st.target.as_ref().and_then(|t| t.jit.as_ref()).map(|j| {
                    (
                        lc(&j.subscription_id),
                        lc(&j.resource_group),
                        lc(&j.location),
                        lc(&j.policy_name),
                    )
                });
                ReadAnswer::JitPolicy(match key.and_then(|k| self.jit_policies.get(&k)) {
                    Some(p) => Read::Found(p.clone()),
                    None => Read::Missing,
                })
            }
        }
    }

    /// Serves the policy read before anything is recorded (the target is still in the spec).
    pub fn read_for_spec(
        &mut self,
        need: &Need,
        spec: &AccessGrantSpec,
        now: DateTime<Utc>,
    ) -> ReadAnswer {
        self.read_for_spec_raw(need, spec, now).classified()
    }

    fn read_for_spec_raw(
        &mut self,
        need: &Need,
        spec: &AccessGrantSpec,
        now: DateTime<Utc>,
    ) -> ReadAnswer {
        self.tick(now);
        self.reads += 1;
        match need {
            Need::PimPolicy if self.hide_pim_policies => ReadAnswer::PimPolicy(Read::Missing),
            Need::PimPolicy => ReadAnswer::PimPolicy(
                match spec.pim.as_ref().and_then(|p| {
                    self.pim_policies
                        .get(&(norm_scope(&p.scope), lc(&p.role_definition_id)))
                }) {
                    Some(p) => Read::Found(p.clone()),
                    None => Read::Missing,
                },
            ),
            Need::JitPolicy => {
                let key = spec.jit.as_ref().map(|j| {
                    (
                        lc(&j.subscription_id),
                        lc(&j.resource_group),
                        lc(&j.location),
                        lc(&j.policy_name),
                    )
                });
                ReadAnswer::JitPolicy(match key.and_then(|k| self.jit_policies.get(&k)) {
                    Some(p) => Read::Found(p.clone()),
                    None => Read::Missing,
                })
            }
            _ => ReadAnswer::PimRequest(Read::NotRead),
        }
    }

    /// Executes a write as Azure would.
    pub fn write(&mut self, w: &AzureWrite, now: DateTime<Utc>) -> Result<WriteAnswer, AzureError> {
        self.tick(now);
        let (kind, id) = match w {
            AzureWrite::Pim { name, body, .. } => (body.request_type.to_string(), name.clone()),
            AzureWrite::PimCancel { name, .. } => ("Cancel".to_string(), name.clone()),
            AzureWrite::JitInitiate { justification, .. } => {
                ("JitInitiate".to_string(), justification.clone())
            }
        };
        if let Some(e) = self.faults.pop_front() {
            self.log.push(WriteLog {
                time: now,
                kind,
                id,
                applied: false,
            });
            return Err(e);
        }
        let result = self.apply(w, now);
        self.log.push(WriteLog {
            time: now,
            kind,
            id,
            applied: result.is_ok(),
        });
        if self.lose_next_answer {
            self.lose_next_answer = false;
            return Err(AzureError::Transient {
                status: None,
                code: "Timeout".into(),
                message: "the answer was lost".into(),
            });
        }
        result.map(classified_answer)
    }

    fn apply(&mut self, w: &AzureWrite, now: DateTime<Utc>) -> Result<WriteAnswer, AzureError> {
        match w {
            AzureWrite::Pim {
                scope, name, body, ..
            } => {
                if self.requests.contains_key(name) {
                    return Err(AzureError::RequestExists {
                        message: format!(
                            "A role assignment request with Id: {name} already exists."
                        ),
                    });
                }
                let key = (
                    norm_scope(scope),
                    lc(&body.role_definition_id),
                    lc(&body.principal_id),
                );
                let mut view = PimRequestView {
                    name: name.clone(),
                    id: Some(format!(
                        "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}"
                    )),
                    status: String::new(),
                    class: Default::default(),
                    request_type: body.request_type.to_string(),
                    removal: false,
                    start: body.start,
                    end: None,
                    target_schedule_id: None,
                };
                match body.request_type {
                    "SelfActivate" | "AdminAssign" => {
                        if body.request_type == "SelfActivate" && !self.eligible.contains(&key) {
                            return Err(policy_rules(&["EligibilityRule"]));
                        }
                        let pol = self
                            .pim_policies
                            .get(&(key.0.clone(), key.1.clone()))
                            .cloned()
                            .unwrap_or_default();
                        let (max, enabled) = if body.request_type == "SelfActivate" {
                            (pol.enduser_max_duration, pol.enduser_enabled_rules.clone())
                        } else {
                            (pol.admin_max_duration, pol.admin_enabled_rules.clone())
                        };
                        let mut failed = vec![];
                        if let (Some(max), Some(d)) = (max, body.duration)
                            && d > max
                        {
                            failed.push("ExpirationRule");
                        }
                        if enabled.iter().any(|r| r == "Justification")
                            && body.justification.is_none()
                        {
                            failed.push("JustificationRule");
                        }
                        if enabled.iter().any(|r| r == "Ticketing") && body.ticket.is_none() {
                            failed.push("TicketingRule");
                        }
                        if enabled.iter().any(|r| r == "MultiFactorAuthentication") {
                            failed.push("MfaRule");
                        }
                        if !failed.is_empty() {
                            return Err(policy_rules(&failed));
                        }
                        if self.instances.contains_key(&key) {
                            return Err(AzureError::RoleAssignmentExists {
                                message: "The Role assignment already exists.".into(),
                            });
                        }
                        let start = body.start.unwrap_or(now).max(now);
                        let end = body.duration.map(|d| start + d);
                        view.start = Some(start);
                        view.end = end;
                        if body.request_type == "SelfActivate" && pol.approval_required {
                            view.status = "PendingApproval".into();
                        } else {
                            view.status = "Provisioned".into();
                            view.target_schedule_id = Some(format!("sched-inst-{name}"));
                            let assignment_type = if body.request_type == "SelfActivate" {
                                "Activated"
                            } else {
                                "Assigned"
                            };
                            self.instances.insert(
                                key.clone(),
                                ModelInstance {
                                    id: format!("inst-{name}"),
                                    start,
                                    end,
                                    assignment_type: assignment_type.into(),
                                    request_name: Some(name.clone()),
                                },
                            );
                        }
                    }
                    "AdminExtend" => {
                        let Some(inst) = self.instances.get_mut(&key) else {
                            return Err(AzureError::DoesNotExist {
                                message: "The Role assignment does not exist.".into(),
                            });
                        };
                        let end =
                            body.start.unwrap_or(now).max(now) + body.duration.unwrap_or_default();
                        inst.end = Some(end);
                        view.status = "Provisioned".into();
                        view.end = Some(end);
                        view.target_schedule_id = Some(format!("sched-{}", inst.id));
                    }
                    "SelfDeactivate" | "AdminRemove" => {
                        let Some(inst) = self.instances.get(&key) else {
                            return Err(AzureError::DoesNotExist {
                                message: "The Role assignment does not exist.".into(),
                            });
                        };
                        if now < inst.start + self.deactivation_floor {
                            return Err(AzureError::ActiveDurationTooShort { message: "The Active duration is too short. Miniumum Required is 5 minutes.".into() });
                        }
                        self.instances.remove(&key);
                        view.status = "Revoked".into();
                    }
                    other => {
                        return Err(AzureError::Invalid {
                            status: 400,
                            code: "InvalidRequestType".into(),
                            message: other.to_string(),
                        });
                    }
                }
                self.requests.insert(
                    name.clone(),
                    ModelRequest {
                        view: view.clone(),
                        key,
                    },
                );
                Ok(WriteAnswer::Pim(view))
            }
            AzureWrite::PimCancel { name, .. } => {
                let Some(r) = self.requests.get_mut(name) else {
                    return Err(AzureError::NotFound {
                        code: "RoleAssignmentScheduleRequestNotFound".into(),
                        message: name.clone(),
                    });
                };
                if r.view.status != "PendingApproval" {
                    return Err(AzureError::Invalid {
                        status: 400,
                        code: "InvalidRequestState".into(),
                        message: "only pending requests can be canceled".into(),
                    });
                }
                r.view.status = "Canceled".into();
                Ok(WriteAnswer::Canceled)
            }
            AzureWrite::JitInitiate {
                subscription_id,
                resource_group,
                location,
                policy_name,
                vms,
                justification,
            } => {
                let key = (
                    lc(subscription_id),
                    lc(resource_group),
                    lc(location),
                    lc(policy_name),
                );
                let Some(pol) = self.jit_policies.get_mut(&key) else {
                    return Err(AzureError::NotFound {
                        code: "ResourceNotFound".into(),
                        message: "JIT policy not found".into(),
                    });
                };
                for vm in vms {
                    let Some(pvm) = pol.vms.iter().find(|v| lc(&v.id) == lc(&vm.id)) else {
                        return Err(AzureError::Invalid {
                            status: 400,
                            code: "BadRequest".into(),
                            message: format!("VM {} is not in the policy", vm.id),
                        });
                    };
                    for p in &vm.ports {
                        let Some(rule) = pvm.ports.iter().find(|r| r.number == p.number) else {
                            return Err(AzureError::Invalid {
                                status: 400,
                                code: "BadRequest".into(),
                                message: format!("port {} is not in the policy", p.number),
                            });
                        };
                        if let Some(max) = rule.max_duration
                            && p.end_time_utc - now > max
                        {
                            return Err(AzureError::Invalid {
                                status: 400,
                                code: "BadRequest".into(),
                                message: "duration exceeds maxRequestAccessDuration".into(),
                            });
                        }
                    }
                }
                let mut ports = vec![];
                for vm in vms {
                    for p in &vm.ports {
                        for r in &mut pol.requests {
                            for old in &mut r.ports {
                                if lc(&old.vm_id) == lc(&vm.id)
                                    && old.number == p.number
                                    && old.status != "Revoked"
                                {
                                    old.status = "Revoked".into();
                                    old.status_reason = Some("NewerRequestInitiated".into());
                                }
                            }
                        }
                        ports.push(JitRequestPortView {
                            vm_id: vm.id.clone(),
                            number: p.number,
                            prefix: Some(p.allowed_source_address_prefix.clone()),
                            end: Some(p.end_time_utc),
                            status: "Initiated".into(),
                            closed: false,
                            status_reason: Some("UserRequested".into()),
                        });
                    }
                }
                let req = JitRequestView {
                    justification: Some(justification.clone()),
                    start: Some(now),
                    requestor: Some("operator".into()),
                    ports,
                };
                pol.requests.push(req.clone());
                Ok(WriteAnswer::Jit(req))
            }
        }
    }
}

fn policy_rules(rules: &[&str]) -> AzureError {
    let list = serde_json::to_string(rules).unwrap_or_default();
    AzureError::PolicyRules {
        rules: rules.iter().map(|s| s.to_string()).collect(),
        message: format!("The following policy rules failed: {list}"),
    }
}

/// A read answer from the model.
#[derive(Clone, Debug)]
pub enum ReadAnswer {
    /// PIM request.
    PimRequest(Read<PimRequestView>),
    /// PIM instance.
    PimInstance(Read<PimInstanceView>),
    /// PIM policy.
    PimPolicy(Read<PimPolicyView>),
    /// JIT policy.
    JitPolicy(Read<JitPolicyView>),
}

/// The model keeps Azure's words; the planner reads what they mean, as the ARM adapter
/// classifies them (`azure::models`).
fn classified_pim(mut v: PimRequestView) -> PimRequestView {
    v.class = pim_class(&v.status);
    v.removal = is_removal_type(&v.request_type);
    v
}

fn classified_jit(mut v: JitRequestView) -> JitRequestView {
    for p in &mut v.ports {
        p.closed = jit_port_closed(&p.status);
    }
    v
}

fn classified_answer(a: WriteAnswer) -> WriteAnswer {
    match a {
        WriteAnswer::Pim(v) => WriteAnswer::Pim(classified_pim(v)),
        WriteAnswer::Jit(v) => WriteAnswer::Jit(classified_jit(v)),
        WriteAnswer::Canceled => WriteAnswer::Canceled,
    }
}

impl ReadAnswer {
    fn classified(self) -> Self {
        match self {
            ReadAnswer::PimRequest(Read::Found(v)) => {
                ReadAnswer::PimRequest(Read::Found(classified_pim(v)))
            }
            ReadAnswer::JitPolicy(Read::Found(mut p)) => {
                p.requests = p.requests.into_iter().map(classified_jit).collect();
                ReadAnswer::JitPolicy(Read::Found(p))
            }
            other => other,
        }
    }

    /// Stores the answer in an observation.
    pub fn store(self, o: &mut Observed) {
        match self {
            ReadAnswer::PimRequest(r) => o.pim_request = r,
            ReadAnswer::PimInstance(r) => o.pim_instance = r,
            ReadAnswer::PimPolicy(r) => o.pim_policy = r,
            ReadAnswer::JitPolicy(r) => o.jit_policy = r,
        }
    }
}

/// A grant object as the API server holds it.
#[derive(Clone, Debug)]
pub struct ModelGrant {
    /// Metadata the planner sees.
    pub meta: GrantMeta,
    /// Spec.
    pub spec: AccessGrantSpec,
    /// Status (what was persisted).
    pub status: AccessGrantStatus,
    /// Deleted for good (finalizer removed while deleting).
    pub gone: bool,
    /// `metadata.creationTimestamp`.
    pub created: Option<DateTime<Utc>>,
}

/// What one reconcile did.
#[derive(Clone, Debug, Default)]
pub struct ReconcileReport {
    /// Plans computed.
    pub plans: Vec<Plan>,
    /// Side effects performed (finalizer patches, status writes, Azure writes).
    pub side_effects: usize,
    /// Crashed before finishing.
    pub crashed: bool,
    /// When to come back.
    pub wake_at: Option<DateTime<Utc>>,
    /// Violations of the write-ordering rules, if any.
    pub violations: Vec<String>,
}

/// The model's crash: the process stopped after its budget of side effects.
#[derive(Debug)]
pub struct Crashed;

/// The executor's doors over a model grant and the Azure model.
struct ModelPass<'a> {
    g: &'a mut ModelGrant,
    model: &'a mut AzureModel,
    rep: &'a mut ReconcileReport,
    covered_by_other: bool,
    now: DateTime<Utc>,
    crash_after: Option<usize>,
}

impl ModelPass<'_> {
    fn budget_ok(&self) -> bool {
        self.crash_after.is_none_or(|n| self.rep.side_effects < n)
    }
}

impl GrantDoor for ModelPass<'_> {
    type Error = Crashed;

    fn meta(&self) -> GrantMeta {
        self.g.meta.clone()
    }

    fn status(&self) -> AccessGrantStatus {
        self.g.status.clone()
    }

    fn now(&self) -> DateTime<Utc> {
        self.now
    }

    async fn add_finalizer(&mut self) -> Result<(), Stored<Crashed>> {
        self.g.meta.has_finalizer = true;
        Ok(())
    }

    async fn record_intent(&mut self, st: &AccessGrantStatus) -> Result<(), Stored<Crashed>> {
        self.g.status = st.clone();
        Ok(())
    }

    async fn write_status(&mut self, st: &AccessGrantStatus) -> Result<(), Stored<Crashed>> {
        if !self.g.gone {
            self.rep.side_effects += 1;
            self.g.status = st.clone();
        }
        Ok(())
    }

    async fn remove_finalizer(&mut self) -> Result<(), Stored<Crashed>> {
        let ours = self
            .g
            .status
            .pim
            .as_ref()
            .and_then(|p| p.request_name.clone());
        if self.model.instances.values().any(|i| {
            i.request_name
                .as_deref()
                .is_some_and(|n| ours.as_deref() == Some(n))
        }) && !self.covered_by_other
        {
            self.rep
                .violations
                .push("finalizer removed while our PIM access is live".into());
        }
        self.g.meta.has_finalizer = false;
        if self.g.meta.deleting {
            self.g.gone = true;
        }
        Ok(())
    }

    async fn reread(&mut self) -> Result<bool, Crashed> {
        // The model's grant never changes under a pass: no write conflicts.
        Ok(true)
    }

    async fn publish(&mut self, _events: &[PlannedEvent]) {}

    fn transition(&mut self, _before: &AccessGrantStatus, _after: &AccessGrantStatus) {}

    fn planned(&mut self, plan: &Plan) {
        self.rep.plans.push(plan.clone());
    }

    fn before_step(&mut self) -> Result<(), Crashed> {
        if !self.budget_ok() {
            return Err(Crashed);
        }
        self.rep.side_effects += 1;
        Ok(())
    }

    fn before_settle(&mut self) -> Result<(), Crashed> {
        if self.budget_ok() {
            Ok(())
        } else {
            Err(Crashed)
        }
    }
}

impl AzureDoor for ModelPass<'_> {
    async fn observe(
        &mut self,
        need: &Need,
        _status: &AccessGrantStatus,
        observed: &mut Observed,
    ) -> Result<(), AzureError> {
        let ans = if self.g.status.target.is_none()
            && matches!(need, Need::PimPolicy | Need::JitPolicy)
        {
            self.model.read_for_spec(need, &self.g.spec, self.now)
        } else {
            self.model.read(need, &self.g.status, self.now)
        };
        ans.store(observed);
        Ok(())
    }

    async fn write(
        &mut self,
        w: &AzureWrite,
        intent: Option<&Intent>,
        _deadline: DateTime<Utc>,
    ) -> Result<WriteAnswer, AzureError> {
        if !self.g.meta.has_finalizer {
            self.rep
                .violations
                .push("Azure write without the finalizer".into());
        }
        let intent_ok = intent.is_some_and(|i| match w {
            AzureWrite::Pim { name, .. } | AzureWrite::PimCancel { name, .. } => {
                &i.request_id == name
            }
            AzureWrite::JitInitiate { justification, .. } => justification.contains(&i.request_id),
        });
        if !intent_ok {
            self.rep
                .violations
                .push("Azure write without a recorded intent".into());
        }
        self.model.write(w, self.now)
    }

    fn describe(&self, w: &AzureWrite) -> (String, String) {
        accessgrant_operator::azure::ops::describe(w)
    }
}

/// Runs one reconcile of `g` against `model` through the operator's executor: observe on
/// demand, plan, execute steps in order, plan again after each Azure write, write status at the
/// end. `crash_after` stops after that many side effects (0 = before the first).
#[allow(clippy::too_many_arguments)] // mirrors what the controller passes; a test driver
pub fn reconcile(
    g: &mut ModelGrant,
    model: &mut AzureModel,
    policies: &[AccessPolicy],
    ns_labels: &BTreeMap<String, String>,
    covered_by_other: bool,
    now: DateTime<Utc>,
    config: &PlannerConfig,
    crash_after: Option<usize>,
) -> ReconcileReport {
    reconcile_sharing(
        g,
        model,
        policies,
        ns_labels,
        covered_by_other,
        None,
        now,
        config,
        crash_after,
    )
}

/// [`reconcile`] of a grant that shares JIT VM ports with others: `port_holder` is what the
/// controller's coverage index would say ([`accessgrant_operator::lifecycle::port_holder`]).
#[allow(clippy::too_many_arguments)] // mirrors what the controller passes; a test driver
pub fn reconcile_sharing(
    g: &mut ModelGrant,
    model: &mut AzureModel,
    policies: &[AccessPolicy],
    ns_labels: &BTreeMap<String, String>,
    covered_by_other: bool,
    port_holder: Option<&accessgrant_operator::lifecycle::PortHolder>,
    now: DateTime<Utc>,
    config: &PlannerConfig,
    crash_after: Option<usize>,
) -> ReconcileReport {
    let mut rep = ReconcileReport::default();
    if g.gone {
        return rep;
    }
    let valid = validate(&g.spec);
    let ctx =
        GrantContext {
            namespace: g.meta.namespace.clone(),
            namespace_labels: ns_labels.clone(),
            created: g.created,
            requester: g.meta.requested_by.as_ref().map(|u| {
                accessgrant_operator::guard::Requester {
                    username: u.clone(),
                    groups: vec![],
                }
            }),
        };
    let verdict = valid.as_ref().ok().map(|v| guard(v, policies, &ctx));
    let judged = Judged {
        spec: valid.as_ref(),
        suspend: g.spec.suspend.unwrap_or(false),
        verdict: verdict.as_ref(),
        covered_by_other,
        port_holder,
        config,
    };
    let mut pass = ModelPass {
        g,
        model,
        rep: &mut rep,
        covered_by_other,
        now,
        crash_after,
    };
    let outcome = futures::executor::block_on(execute(&mut pass, &judged));
    match outcome {
        Ok(Outcome::Settled { wake_at }) => rep.wake_at = wake_at,
        Ok(Outcome::Released | Outcome::Changed) => {}
        Ok(Outcome::Unsettled) => rep
            .violations
            .push("reconcile did not settle within 12 plans".into()),
        Err(ExecError::Grant(Crashed)) => rep.crashed = true,
        Err(ExecError::AzureRead(e)) => rep.violations.push(format!("model read failed: {e}")),
        Err(ExecError::NotLeader) => rep.violations.push("not the leader".into()),
    }
    rep
}

/// Whether an operation name is a PIM grant (for counting live grants per attempt).
pub fn is_grant_kind(kind: &str) -> bool {
    matches!(kind, "SelfActivate" | "AdminAssign" | "JitInitiate")
}

/// Marker check helper: the operation of a logged write.
pub fn op_of(kind: &str) -> Option<Operation> {
    Some(match kind {
        "SelfActivate" => Operation::SelfActivate,
        "AdminAssign" => Operation::AdminAssign,
        "AdminExtend" => Operation::AdminExtend,
        "SelfDeactivate" => Operation::SelfDeactivate,
        "AdminRemove" => Operation::AdminRemove,
        "Cancel" => Operation::Cancel,
        "JitInitiate" => Operation::JitInitiate,
        _ => return None,
    })
}
