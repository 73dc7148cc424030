//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! Several operator replicas may run; only the one holding the Lease may write to Azure. The
//! algorithm is client-go's `leaderelection` (LeaseLock) with the same defaults (lease 15 s,
//! renew deadline 10 s, retry 2 s):
//!
//! - a candidate reads the Lease every `retry_period` and takes it when it is free (no holder) or
//!   expired (`now > renewTime + leaseDurationSeconds`, wall clock from [`crate::clock::now`]);
//! - the leader renews every `retry_period`; every write carries the `resourceVersion` it read, so
//!   two replicas can never both win (a 409 means someone else wrote: re-read);
//! - the fence: [`Leadership::may_write`] is true only while this replica is leader AND its last
//!   successful acquire/renew *started* less than `renew_deadline` ago (monotonic clock). The
//!   renewTime it wrote was read after that start, so others cannot consider the Lease expired
//!   before `start + lease_duration`; since `renew_deadline < lease_duration` we stop writing at
//!   least `lease_duration - renew_deadline` before anyone else may start. That margin also covers
//!   clock skew between replicas and an Azure call already in flight when the fence closes.
//! - on graceful shutdown the leader first closes its own fence, then releases the Lease (empty
//!   holder), so a standby takes over at its next poll instead of waiting for expiry.
//!
//! After losing the Lease (renewals failing for `renew_deadline`, or another holder seen) the
//! replica becomes a candidate again and may later re-acquire: subscribers see `false` then
//! `true` and must treat every `true` as a fresh term.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::clock;

/// How many times one attempt re-reads the Lease after a 409 before giving up until next poll.
const CONFLICT_RETRIES: usize = 3;
/// Step-down reason of a graceful stop (logged at info, the others at warn).
const SHUTTING_DOWN: &str = "shutting down";

/// Timings and names of one election. Build with [`LeaderConfig::new`], adjust, then
/// [`LeaderConfig::validate`] (done by [`run_election`] too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (usually the pod name); written to `spec.holderIdentity`.
    pub identity: String,
    /// How long a Lease stays valid after its renewTime without being renewed. Written (rounded
    /// up to whole seconds) as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renew. Must be shorter than
    /// `lease_duration`: the difference is the safety margin of the fence.
    pub renew_deadline: Duration,
    /// Poll / renew interval.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: lease 15 s, renew deadline 10 s, retry 2 s.
    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the ordering the fence depends on: `0 < retry_period < renew_deadline <
    /// lease_duration`, `lease_duration >= 1 s`, non-empty names and identity.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason| Err(LeaderError::InvalidConfig { reason });
        if self.namespace.is_empty() {
            return invalid("namespace must not be empty");
        }
        if self.lease_name.is_empty() {
            return invalid("lease_name must not be empty");
        }
        // An empty holderIdentity means "free": an empty identity could never hold the Lease.
        if self.identity.is_empty() {
            return invalid("identity must not be empty");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return invalid("lease_duration must be at least 1 s (leaseDurationSeconds > 0)");
        }
        if lease_duration_seconds(self.lease_duration).is_none() {
            return invalid("lease_duration is too large");
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid("renew_deadline must be shorter than lease_duration");
        }
        if self.retry_period.is_zero() {
            return invalid("retry_period must be greater than zero");
        }
        if self.retry_period >= self.renew_deadline {
            return invalid("retry_period must be shorter than renew_deadline");
        }
        Ok(())
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The configuration breaks an ordering the fence depends on.
    #[error("invalid leader election config: {reason}")]
    InvalidConfig {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// The Kubernetes API refused or failed a Lease request.
    #[error("lease request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The wall clock is outside what a Lease timestamp can hold.
    #[error("wall clock out of range for a Lease timestamp")]
    Clock,
}

impl LeaderError {
    /// Stable label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidConfig { .. } => "invalid_config",
            Self::Kube(_) => "kube",
            Self::Clock => "clock",
        }
    }
}

/// Handle on a running election. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    identity: String,
    renew_deadline: Duration,
    /// Whether this replica currently leads.
    leader: watch::Sender<bool>,
    /// Monotonic start of the last successful acquire/renew; kept after stepping down.
    renewed_at: Mutex<Option<Instant>>,
    /// Set once the election task has ended (released, or aborted).
    done: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("identity", &self.inner.identity)
            .field("is_leader", &self.is_leader())
            .field("may_write", &self.may_write())
            .finish()
    }
}

impl Leadership {
    /// The identity this replica competes with.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// Whether this replica currently holds the Lease (as far as it knows).
    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow()
    }

    /// The fence: check right before every Azure write. True only while leader and the last
    /// successful acquire/renew started less than `renew_deadline` ago. Turns false on its own
    /// when renewals stall, even if the election task is blocked on a hung request.
    pub fn may_write(&self) -> bool {
        self.is_leader()
            && self
                .last_renewal()
                .is_some_and(|at| at.elapsed() < self.inner.renew_deadline)
    }

    /// Monotonic time at which the last successful acquire/renew started (the fence closes
    /// `renew_deadline` after it). Kept after stepping down; None before the first success.
    pub fn last_renewal(&self) -> Option<Instant> {
        self.inner.renewed_at()
    }

    /// Resolves once this replica leads (at once if it already does).
    pub async fn wait_until_leader(&self) {
        let mut rx = self.inner.leader.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: this only errors if it is gone.
        let _ = rx.wait_for(|leading| *leading).await;
    }

    /// Leadership changes: `true` when a term starts, `false` when it ends.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.leader.subscribe()
    }

    /// Resolves once the election task has ended: after the graceful-shutdown release, or
    /// after [`Leadership::abort_without_release`].
    pub async fn stopped(&self) {
        let mut rx = self.inner.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Test hook simulating a crash: stops the election task without releasing the Lease, so
    /// other replicas must wait for it to expire. Leaves this handle not leading.
    pub async fn abort_without_release(&self) {
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            // Wait until the task is really gone so it cannot flip the state back.
            let _ = task.await;
        }
        self.inner.step_down("aborted without release");
        self.inner.done.send_replace(true);
    }
}

impl Inner {
    fn become_leader(&self, started: Instant) {
        self.record_renewal(started);
        if !self.leader.send_replace(true) {
            info!(identity = %self.identity, "became leader");
        }
    }

    fn renewed_at(&self) -> Option<Instant> {
        *self
            .renewed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record_renewal(&self, started: Instant) {
        *self
            .renewed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(started);
    }

    /// Closes the fence (`may_write` reads the flag first) and tells subscribers.
    fn step_down(&self, why: &'static str) {
        if self.leader.send_replace(false) {
            if why == SHUTTING_DOWN {
                info!(identity = %self.identity, reason = why, "stopped leading");
            } else {
                warn!(identity = %self.identity, reason = why, "stopped leading");
            }
        }
    }
}

/// Starts the election in a background task and returns its handle at once. When `shutdown`
/// resolves the task closes the fence, releases the Lease if this replica holds it, and ends
/// (await [`Leadership::stopped`] before exiting the process).
pub async fn run_election(
    client: kube::Client,
    cfg: LeaderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Leadership, LeaderError> {
    cfg.validate()?;
    let inner = Arc::new(Inner {
        identity: cfg.identity.clone(),
        renew_deadline: cfg.renew_deadline,
        leader: watch::Sender::new(false),
        renewed_at: Mutex::new(None),
        done: watch::Sender::new(false),
        task: Mutex::new(None),
    });
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let state = inner.clone();
    let span = tracing::info_span!(
        "leader_election",
        ns = %cfg.namespace,
        lease = %cfg.lease_name,
        identity = %cfg.identity
    );
    let task = tokio::spawn(
        async move {
            tokio::select! {
                () = shutdown => {}
                never = elect(&state, &api, &cfg) => match never {},
            }
            // Close the fence before the Lease is handed back.
            state.step_down(SHUTTING_DOWN);
            // A replica that never held the Lease has nothing to hand back (and should not
            // wait on an unreachable API while stopping).
            if state.renewed_at().is_some() {
                release(&api, &cfg).await;
            }
            state.done.send_replace(true);
        }
        .instrument(span),
    );
    *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    Ok(Leadership { inner })
}

/// Candidate loop; hands over to [`lead`] on success and comes back when the term ends.
async fn elect(state: &Inner, api: &Api<Lease>, cfg: &LeaderConfig) -> std::convert::Infallible {
    loop {
        let started = Instant::now();
        let attempt =
            tokio::time::timeout(cfg.renew_deadline, try_acquire_or_renew(api, cfg, false)).await;
        let wait = match attempt {
            Ok(Ok(Attempt::Held)) => {
                state.become_leader(started);
                lead(state, api, cfg, started).await;
                cfg.retry_period
            }
            Ok(Ok(Attempt::Other { holder, expires_in })) => {
                debug!(%holder, ?expires_in, "lease held by another replica");
                // Wake right when the holder's lease expires if that is sooner than a poll.
                expires_in.map_or(cfg.retry_period, |left| {
                    cfg.retry_period.min(left + Duration::from_millis(1))
                })
            }
            Ok(Err(e)) => {
                warn!(error = %e, category = e.category(), "acquiring lease failed");
                cfg.retry_period
            }
            Err(_) => {
                warn!("acquiring lease timed out");
                cfg.retry_period
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Leader loop: renews every `retry_period` until a renew is refused or none succeeded for
/// `renew_deadline`; then steps down and returns.
async fn lead(state: &Inner, api: &Api<Lease>, cfg: &LeaderConfig, acquired: Instant) {
    let mut last_ok = acquired;
    let mut next = acquired + cfg.retry_period;
    loop {
        let deadline = last_ok + cfg.renew_deadline;
        tokio::time::sleep_until(next.min(deadline)).await;
        if Instant::now() >= deadline {
            state.step_down("renew deadline passed");
            return;
        }
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, try_acquire_or_renew(api, cfg, true)).await {
            Ok(Ok(Attempt::Held)) => {
                last_ok = started;
                state.record_renewal(started);
                next = started + cfg.retry_period;
            }
            Ok(Ok(Attempt::Other { holder, .. })) => {
                warn!(%holder, "lease taken by another holder");
                state.step_down("lease lost");
                return;
            }
            Ok(Err(e)) => {
                warn!(error = %e, category = e.category(), "renewing lease failed");
                next = started + cfg.retry_period;
            }
            Err(_) => {
                state.step_down("renew deadline passed");
                return;
            }
        }
    }
}

enum Attempt {
    /// We hold the Lease now (acquired or renewed).
    Held,
    /// Someone else holds it (or, when renewing, it is no longer ours).
    Other {
        holder: String,
        /// Time until that holder's lease expires, when known.
        expires_in: Option<Duration>,
    },
}

/// One round of client-go's `tryAcquireOrRenew`. With `renew_only` it never takes a Lease held
/// by someone else (or no one): a leader that lost its Lease steps down first.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
    renew_only: bool,
) -> Result<Attempt, LeaderError> {
    for _ in 0..CONFLICT_RETRIES {
        let current = api.get_opt(&cfg.lease_name).await?;
        // Read after the caller's monotonic `started`: the renewTime we write is never earlier
        // than the fence's start, which keeps the fence on the safe side.
        let now = clock::now();
        let Some(mut lease) = current else {
            if renew_only {
                return Ok(Attempt::Other {
                    holder: String::new(),
                    expires_in: None,
                });
            }
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held_spec(cfg, now, None, false)?),
            };
            match api.create(&PostParams::default(), &fresh).await {
                Ok(_) => return Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == cfg.identity;
        if renew_only && !mine {
            return Ok(Attempt::Other {
                holder,
                expires_in: None,
            });
        }
        if !mine && !holder.is_empty() {
            let left = remaining(&spec, cfg, now);
            if !left.is_zero() {
                return Ok(Attempt::Other {
                    holder,
                    expires_in: Some(left),
                });
            }
            info!(%holder, identity = %cfg.identity, "lease expired; taking over");
        }
        // `lease.metadata.resourceVersion` is the one we read: the update is optimistic.
        lease.spec = Some(held_spec(cfg, now, Some(&spec), mine)?);
        match api
            .replace(&cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => return Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                debug!("lease changed under us (409); re-reading");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Attempt::Other {
        holder: String::from("<conflicting writers>"),
        expires_in: None,
    })
}

/// The spec we write when holding the Lease. `previous` is the spec read (None when creating);
/// a renew (`mine`) keeps acquireTime and the transition count, a take-over bumps the count.
fn held_spec(
    cfg: &LeaderConfig,
    now: DateTime<Utc>,
    previous: Option<&LeaseSpec>,
    mine: bool,
) -> Result<LeaseSpec, LeaderError> {
    let stamp = micro_time(now)?;
    let before = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let (acquire_time, transitions) = match previous {
        Some(p) if mine => (
            p.acquire_time.clone().unwrap_or_else(|| stamp.clone()),
            before,
        ),
        Some(_) => (stamp.clone(), before.saturating_add(1)),
        None => (stamp.clone(), 0),
    };
    Ok(LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: lease_duration_seconds(cfg.lease_duration),
        acquire_time: Some(acquire_time),
        renew_time: Some(stamp),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    })
}

/// How long the current holder's lease stays valid (zero when expired or undated). Uses the
/// holder's own `leaseDurationSeconds`, falling back to ours.
fn remaining(spec: &LeaseSpec, cfg: &LeaderConfig, now: DateTime<Utc>) -> Duration {
    let Some(since) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Duration::ZERO;
    };
    let duration_us = spec.lease_duration_seconds.filter(|s| *s > 0).map_or_else(
        || i64::try_from(cfg.lease_duration.as_micros()).unwrap_or(i64::MAX),
        |s| i64::from(s) * 1_000_000,
    );
    let expires_us = since.0.as_microsecond().saturating_add(duration_us);
    let left_us = expires_us.saturating_sub(now.timestamp_micros());
    u64::try_from(left_us).map_or(Duration::ZERO, Duration::from_micros)
}

/// `leaseDurationSeconds`, rounded up: others then wait at least as long as we promised.
fn lease_duration_seconds(d: Duration) -> Option<i32> {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).ok()
}

fn micro_time(t: DateTime<Utc>) -> Result<MicroTime, LeaderError> {
    k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
        .map(MicroTime)
        .map_err(|_| LeaderError::Clock)
}

/// Hands the Lease back if we hold it: empty holder, so a standby takes it at its next poll.
/// The fence is already closed when this runs. Bounded by `renew_deadline`.
async fn release(api: &Api<Lease>, cfg: &LeaderConfig) {
    let attempt = async {
        for _ in 0..CONFLICT_RETRIES {
            let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
                return Ok(false);
            };
            let spec = lease.spec.take().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
                return Ok(false);
            }
            let stamp = micro_time(clock::now())?;
            // As client-go's release: no holder, 1 s duration, transitions kept.
            lease.spec = Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: spec.lease_transitions,
                ..LeaseSpec::default()
            });
            match api
                .replace(&cfg.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.is_conflict() => continue,
                Err(e) => return Err(LeaderError::from(e)),
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(cfg.renew_deadline, attempt).await {
        Ok(Ok(true)) => info!(identity = %cfg.identity, "released lease"),
        Ok(Ok(false)) => debug!(identity = %cfg.identity, "lease not ours at shutdown"),
        Ok(Err(e)) => warn!(error = %e, category = e.category(), "releasing lease failed"),
        Err(_) => warn!("releasing lease timed out"),
    }
}
