//! The one step loop: observe what the planner needs, plan, execute the plan's steps in order
//! (finalizer, intent, Azure write, finalizer removal), plan again after each Azure write, and
//! write the status at the end. It runs in the controller (with the Kubernetes API and the ARM
//! client behind its doors) and in the model tests (with an in-memory grant and Azure model), so
//! the tests check the executor production runs.
//!
//! The doors, after Crossplane's `ExternalClient`: [`AzureDoor`] observes and writes Azure;
//! [`GrantDoor`] holds the grant object and writes it. Every grant write is guarded by the
//! version the plan was made from; a [`Stored::Conflict`] stops the plan (above all its Azure
//! write), and the grant is read again and planned anew.

use crate::api::{AccessGrantStatus, Intent};
use crate::guard::Verdict;
use crate::lifecycle::{
    AzureError, AzureWrite, GrantMeta, Need, Observed, Plan, PlanInput, PlannedEvent,
    PlannerConfig, Step, WriteAnswer, WriteResult, plan,
};
use crate::validate::{InvalidSpec, ValidGrant};
use chrono::{DateTime, Utc};
use std::future::Future;

/// How many plans one pass may make before it gives up (each read or write is one).
pub const MAX_PLANS: usize = 12;

/// A failed grant write.
#[derive(Debug)]
pub enum Stored<E> {
    /// The object changed since the version the write was guarded by (a 409).
    Conflict,
    /// Any other failure.
    Failed(E),
}

/// The grant side (Kubernetes): the object, and guarded writes to it.
pub trait GrantDoor {
    /// What a failed write or read is.
    type Error;
    /// The planner's facts about the object as it is now.
    fn meta(&self) -> GrantMeta;
    /// The status as last read or written.
    fn status(&self) -> AccessGrantStatus;
    /// Now, for this plan (whole seconds in the controller).
    fn now(&self) -> DateTime<Utc>;
    /// Adds the finalizer.
    fn add_finalizer(&mut self) -> impl Future<Output = Result<(), Stored<Self::Error>>> + Send;
    /// Writes the status that records an intent, before its Azure write.
    fn record_intent(
        &mut self,
        status: &AccessGrantStatus,
    ) -> impl Future<Output = Result<(), Stored<Self::Error>>> + Send;
    /// Writes the status at the end of a pass.
    fn write_status(
        &mut self,
        status: &AccessGrantStatus,
    ) -> impl Future<Output = Result<(), Stored<Self::Error>>> + Send;
    /// Removes the finalizer: Azure confirmed the access gone.
    fn remove_finalizer(&mut self) -> impl Future<Output = Result<(), Stored<Self::Error>>> + Send;
    /// After a conflict: the object as it is now. False when it is gone, or its spec or deletion
    /// changed (judged anew by the pass that change triggers).
    fn reread(&mut self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// Events of the pass, published once the status they explain is written.
    fn publish(&mut self, events: &[PlannedEvent]) -> impl Future<Output = ()> + Send;
    /// A status was written over `before` (audit line, metrics).
    fn transition(&mut self, before: &AccessGrantStatus, after: &AccessGrantStatus);
    /// A plan was made (the model tests keep them).
    fn planned(&mut self, _plan: &Plan) {}
    /// A named point between two side effects (crash tests stop the process there).
    fn crashpoint(&mut self, _name: &'static str) {}
    /// Before each step of a plan (the model's crash budget counts them).
    fn before_step(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Before the end-of-pass status write, whether or not the status changed (the model's
    /// crash budget stops there too).
    fn before_settle(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The Azure side: reads the planner needs, and writes.
pub trait AzureDoor {
    /// Answers a read the planner needs into `observed`.
    fn observe(
        &mut self,
        need: &Need,
        status: &AccessGrantStatus,
        observed: &mut Observed,
    ) -> impl Future<Output = Result<(), AzureError>> + Send;
    /// Whether this replica may write to Azure now (the leader-election fence).
    fn may_write(&self) -> bool {
        true
    }
    /// Sends a write. `intent` is the recorded intent it carries out; its answer is not waited
    /// for past `deadline` (the intent's time plus the write deadline).
    fn write(
        &mut self,
        w: &AzureWrite,
        intent: Option<&Intent>,
        deadline: DateTime<Utc>,
    ) -> impl Future<Output = Result<WriteAnswer, AzureError>> + Send;
    /// The HTTP request line and body a write becomes, without sending it (a dry run).
    fn describe(&self, w: &AzureWrite) -> (String, String);
}

/// What the controller judged about the grant before the pass (fixed for the pass: a change of
/// spec or deletion ends it).
#[derive(Clone, Copy, Debug)]
pub struct Judged<'a> {
    /// Validation result of the spec.
    pub spec: Result<&'a ValidGrant, &'a InvalidSpec>,
    /// Raw `spec.suspend`.
    pub suspend: bool,
    /// Policy verdict (None when the spec is invalid).
    pub verdict: Option<&'a Verdict>,
    /// Another live grant covers the same access.
    pub covered_by_other: bool,
    /// Another grant of ours holds a JIT VM port this one asks for.
    pub port_holder: Option<&'a crate::lifecycle::PortHolder>,
    /// Planner settings.
    pub config: &'a PlannerConfig,
}

/// How a pass ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Status written; look again at `wake_at` (None: only on change).
    Settled {
        /// When to come back.
        wake_at: Option<DateTime<Utc>>,
    },
    /// The finalizer is removed: the object goes.
    Released,
    /// The object changed under the pass (spec, deletion) or is gone: look again soon.
    Changed,
    /// The planner did not settle within [`MAX_PLANS`] plans.
    Unsettled,
}

/// Why a pass stopped early.
#[derive(Debug)]
pub enum ExecError<E> {
    /// A grant write or read failed.
    Grant(E),
    /// An Azure read failed (a failed write is part of the plan instead).
    AzureRead(AzureError),
    /// This replica may not write to Azure now.
    NotLeader,
}

/// Runs one pass for a grant. See the module docs.
pub async fn execute<D>(d: &mut D, judged: &Judged<'_>) -> Result<Outcome, ExecError<D::Error>>
where
    D: GrantDoor + AzureDoor,
{
    let mut observed = Observed::default();
    let mut status = d.status();
    let mut events: Vec<PlannedEvent> = Vec::new();
    for _ in 0..MAX_PLANS {
        let meta = d.meta();
        let now = d.now();
        let input = PlanInput {
            meta: &meta,
            spec: judged.spec,
            suspend: judged.suspend,
            status: &status,
            verdict: judged.verdict,
            observed: &observed,
            covered_by_other: judged.covered_by_other,
            port_holder: judged.port_holder,
            now,
            config: judged.config,
        };
        let mut p = plan(&input);
        if let (Some(w), Some(dry)) = (p.dry_run.as_ref(), p.status.dry_run.as_mut()) {
            (dry.request, dry.body) = d.describe(w);
        }
        d.planned(&p);
        if !p.needs.is_empty() {
            for n in &p.needs {
                d.observe(n, &status, &mut observed)
                    .await
                    .map_err(ExecError::AzureRead)?;
            }
            continue;
        }
        let mut wrote = false;
        let mut conflict = false;
        for step in &p.steps {
            d.before_step().map_err(ExecError::Grant)?;
            let done = match step {
                Step::AddFinalizer => {
                    let r = d.add_finalizer().await;
                    if r.is_ok() {
                        d.crashpoint("after-finalizer");
                    }
                    r
                }
                Step::RecordIntent(st) => {
                    // The claim on the Azure write that follows: only the replica whose intent
                    // write lands on the version it planned from may send it.
                    let r = d.record_intent(st).await;
                    if r.is_ok() {
                        d.transition(&status, st);
                        status = (**st).clone();
                        events.extend(p.events.iter().cloned());
                        d.crashpoint("after-intent");
                    }
                    r
                }
                Step::Azure(w) => {
                    // Fence: checked right before the write, never earlier.
                    if !d.may_write() {
                        return Err(ExecError::NotLeader);
                    }
                    let intent = status.intent.clone();
                    // Abandoned `write_deadline` after its intent was recorded: the planner takes
                    // an intent older than that (plus `write_settle`) as no longer in flight, and
                    // may then send it again.
                    let deadline = intent.as_ref().map_or(now, |i| i.recorded_at)
                        + judged.config.write_deadline;
                    let outcome = d.write(w, intent.as_ref(), deadline).await;
                    d.crashpoint("after-azure-write");
                    if let Err(e) = &outcome {
                        tracing::info!(category = e.category(), "azure write failed");
                    }
                    observed = Observed {
                        last_write: intent.map(|i| WriteResult {
                            operation: i.operation,
                            request_id: i.request_id,
                            outcome,
                        }),
                        ..Default::default()
                    };
                    wrote = true;
                    break;
                }
                Step::RemoveFinalizer => {
                    events.extend(p.events.iter().cloned());
                    d.publish(&events).await;
                    d.transition(&status, &p.status);
                    d.crashpoint("before-remove-finalizer");
                    match d.remove_finalizer().await {
                        Ok(()) => return Ok(Outcome::Released),
                        Err(e) => Err(e),
                    }
                }
            };
            match done {
                Ok(()) => {}
                Err(Stored::Conflict) => {
                    conflict = true;
                    break;
                }
                Err(Stored::Failed(e)) => return Err(ExecError::Grant(e)),
            }
        }
        if conflict {
            if !d.reread().await.map_err(ExecError::Grant)? {
                return Ok(Outcome::Changed);
            }
            status = d.status();
            observed = Observed::default();
            continue;
        }
        if wrote {
            continue;
        }
        d.before_settle().map_err(ExecError::Grant)?;
        if p.status != status {
            match d.write_status(&p.status).await {
                Ok(()) => {}
                Err(Stored::Conflict) => {
                    if !d.reread().await.map_err(ExecError::Grant)? {
                        return Ok(Outcome::Changed);
                    }
                    // Plan again from the newer object; the outcome of this pass's Azure write
                    // still applies if that object records the same intent.
                    status = d.status();
                    observed = Observed {
                        last_write: observed.last_write.take(),
                        ..Default::default()
                    };
                    continue;
                }
                Err(Stored::Failed(e)) => return Err(ExecError::Grant(e)),
            }
            d.crashpoint("after-status");
        }
        events.extend(p.events.iter().cloned());
        d.publish(&events).await;
        d.transition(&status, &p.status);
        return Ok(Outcome::Settled { wake_at: p.wake_at });
    }
    Ok(Outcome::Unsettled)
}
