//! Start-up reads, batched per subscription.
//!
//! After a start (or a restart with many grants), every grant is reconciled from the initial
//! list, and each Active grant reads Azure once to confirm it still holds its access and to
//! re-arm its timers. Instead of one read per grant, this lists once per subscription (every JIT
//! policy of the subscription; every role assignment schedule instance at, above or below it)
//! and lets those passes use the answer.
//!
//! A snapshot answer is only ever used where it cannot change a decision:
//! - only for a pass of an Active grant with no write of unknown outcome (no intent), not being
//!   deleted or suspended, whose end and renewal both lie after the snapshot's validity: such a
//!   pass only confirms the access and re-arms timers, and no time-driven transition can fall
//!   inside the window;
//! - only where the snapshot shows the grant's own access (a JIT policy that is present; an
//!   instance matching the grant): anything else is read individually, as before;
//! - a write (ours) forgets the entries it touches, and a pass that used the snapshot checks for
//!   drift again `drift_check` after the snapshot was taken, not after the pass.

use crate::azure::client::ArmClient;
use crate::azure::models::{JitNetworkAccessPolicy, ScheduleItem};
use crate::lifecycle::JitPolicyView;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// JIT policy key: (subscription, resource group, location, name), lower-case.
pub type JitKey = (String, String, String, String);

/// Longest a start-up snapshot may serve passes (shorter when the drift check is: a pass that
/// used it checks again `drift_check` after it was taken).
pub const VALIDITY: Duration = Duration::from_secs(240);

/// Longest a pass waits for the start-up lists before reading on its own.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Concurrent subscription lists at start-up.
const LIST_CONCURRENCY: usize = 8;

/// The start-up snapshot.
pub struct Warm {
    validity: Duration,
    ready: tokio::sync::watch::Sender<bool>,
    inner: Mutex<Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    taken: Option<Instant>,
    jit: HashMap<JitKey, JitPolicyView>,
    /// Instances by (scope, principal), both normalised (see `pim_key`): a lookup costs the
    /// grant's own few items, not every item of a principal that holds thousands.
    pim: HashMap<(String, String), Vec<ScheduleItem>>,
    /// While the lists are being read: what writes touched meanwhile. Those keys are left out
    /// of the snapshot when it is installed (a list may have been answered before the write).
    priming: Option<Touched>,
}

#[derive(Default)]
struct Touched {
    jit: std::collections::HashSet<JitKey>,
    pim: std::collections::HashSet<(String, String)>,
}

/// What the start-up lists read, for the log and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Primed {
    /// Subscriptions listed for JIT policies.
    pub jit_subscriptions: usize,
    /// Subscriptions listed for schedule instances.
    pub pim_subscriptions: usize,
    /// JIT policies held.
    pub jit_policies: usize,
    /// Schedule instances held.
    pub pim_instances: usize,
    /// Lists that failed (those grants read on their own).
    pub failed: usize,
}

impl Warm {
    /// An empty snapshot, not ready; it will serve for `validity` (at most `VALIDITY`).
    pub fn new(validity: Duration) -> Self {
        Self {
            validity: validity.min(VALIDITY),
            ready: tokio::sync::watch::channel(false).0,
            inner: Mutex::new(Snapshot::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Marks the snapshot complete (or abandoned): waiting passes go on.
    pub fn finish(&self) {
        self.ready.send_replace(true);
    }

    /// Waits until the start-up lists are done, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let mut rx = self.ready.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
    }

    /// Until when the snapshot may serve (None: there is none, or it expired).
    pub fn valid_until(&self) -> Option<Instant> {
        let mut s = self.lock();
        let until = s.taken? + self.validity;
        if Instant::now() >= until {
            // Expired: let the memory go.
            *s = Snapshot::default();
            return None;
        }
        Some(until)
    }

    /// When the snapshot was taken, if it is still valid.
    pub fn taken(&self) -> Option<Instant> {
        self.valid_until().map(|u| u - self.validity)
    }

    /// The policy from the snapshot, if held.
    pub fn jit(&self, key: &JitKey) -> Option<JitPolicyView> {
        self.valid_until()?;
        self.lock().jit.get(key).cloned()
    }

    /// The instance matching (scope, role, principal) from the snapshot, if held.
    pub fn pim(&self, scope: &str, role: &str, principal: &str) -> Option<ScheduleItem> {
        self.valid_until()?;
        self.lock()
            .pim
            .get(&pim_key(scope, principal))?
            .iter()
            .find(|i| i.matches(scope, role, principal))
            .cloned()
    }

    /// A write changed this policy: the snapshot no longer speaks for it.
    pub fn forget_jit(&self, key: &JitKey) {
        let mut s = self.lock();
        s.jit.remove(key);
        if let Some(t) = s.priming.as_mut() {
            t.jit.insert(key.clone());
        }
    }

    /// A write changed this principal's assignments at `scope`: the snapshot no longer speaks
    /// for them.
    pub fn forget_pim(&self, scope: &str, principal: &str) {
        let key = pim_key(scope, principal);
        let mut s = self.lock();
        s.pim.remove(&key);
        if let Some(t) = s.priming.as_mut() {
            t.pim.insert(key);
        }
    }

    /// Lists JIT policies in `jit_subs` and schedule instances in `pim_subs` (one list each,
    /// paged), and keeps them for `VALIDITY`. Failures only mean those grants read on their own.
    pub async fn prime(
        &self,
        arm: &ArmClient,
        jit_subs: BTreeSet<String>,
        pim_subs: BTreeSet<String>,
    ) -> Primed {
        use futures::StreamExt;
        let taken = Instant::now();
        self.begin();
        let mut primed = Primed {
            jit_subscriptions: jit_subs.len(),
            pim_subscriptions: pim_subs.len(),
            ..Default::default()
        };
        enum Got {
            Jit(Result<Vec<JitNetworkAccessPolicy>, String>),
            Pim(Result<Vec<ScheduleItem>, String>),
        }
        let jobs = jit_subs
            .into_iter()
            .map(|s| (true, s))
            .chain(pim_subs.into_iter().map(|s| (false, s)));
        let mut results = futures::stream::iter(jobs)
            .map(|(jit, sub)| async move {
                if jit {
                    Got::Jit(
                        arm.jit_policies_in_subscription(&sub)
                            .await
                            .map_err(|e| e.to_string()),
                    )
                } else {
                    Got::Pim(
                        arm.pim_instances_in_subscription(&sub)
                            .await
                            .map_err(|e| e.to_string()),
                    )
                }
            })
            .buffer_unordered(LIST_CONCURRENCY);
        let mut jit: HashMap<JitKey, JitPolicyView> = HashMap::new();
        let mut pim: HashMap<(String, String), Vec<ScheduleItem>> = HashMap::new();
        while let Some(got) = results.next().await {
            match got {
                Got::Jit(Ok(policies)) => {
                    for p in policies {
                        if let Some(key) = p.id.as_deref().and_then(jit_key_of_id) {
                            jit.insert(key, p.view());
                        }
                    }
                }
                Got::Pim(Ok(items)) => {
                    for i in items {
                        if let (Some(s), Some(p)) = (
                            i.properties.scope.as_deref(),
                            i.properties.principal_id.as_deref(),
                        ) {
                            pim.entry(pim_key(s, p)).or_default().push(i);
                        }
                    }
                }
                Got::Jit(Err(e)) | Got::Pim(Err(e)) => {
                    primed.failed += 1;
                    tracing::info!(error = %e, "a start-up list failed; those grants read on their own");
                }
            }
        }
        (primed.jit_policies, primed.pim_instances) = self.install(taken, jit, pim);
        primed
    }

    /// From now until `install`, writes are remembered as well as forgotten.
    fn begin(&self) {
        self.lock().priming = Some(Touched::default());
    }

    /// Installs what the lists read, without what writes touched since `begin` (a list may
    /// have been answered before the write). Returns the policies and instances kept.
    fn install(
        &self,
        taken: Instant,
        mut jit: HashMap<JitKey, JitPolicyView>,
        mut pim: HashMap<(String, String), Vec<ScheduleItem>>,
    ) -> (usize, usize) {
        let mut s = self.lock();
        if let Some(touched) = s.priming.take() {
            for k in &touched.jit {
                jit.remove(k);
            }
            for k in &touched.pim {
                pim.remove(k);
            }
        }
        let counts = (jit.len(), pim.values().map(Vec::len).sum());
        *s = Snapshot {
            taken: Some(taken),
            jit,
            pim,
            priming: None,
        };
        counts
    }
}

/// (subscription, resource group, location, name) of a JIT policy id, lower-case.
pub fn jit_key_of_id(id: &str) -> Option<JitKey> {
    let parsed = crate::arm_id::ArmId::parse(id).ok()?;
    let seg = parsed.lower_segments();
    let sub = parsed.subscription_id()?.to_ascii_lowercase();
    let rg = parsed.resource_group()?.to_ascii_lowercase();
    let loc = seg
        .iter()
        .position(|s| s == "locations")
        .and_then(|i| seg.get(i + 1))?;
    let at = seg.iter().position(|s| s == "jitnetworkaccesspolicies")?;
    let name = seg.get(at + 1)?;
    if at + 2 != seg.len() {
        return None;
    }
    Some((sub, rg, loc.clone(), name.clone()))
}

/// Snapshot key of a (scope, principal): the scope normalised as ARM ids compare (case,
/// the two spellings of a subscription scope), the principal lower-case.
fn pim_key(scope: &str, principal: &str) -> (String, String) {
    let scope = match crate::arm_id::ArmId::parse(scope) {
        Ok(id) => id.lower_segments().join("/"),
        Err(_) => scope.to_ascii_lowercase(),
    };
    (scope, principal.to_ascii_lowercase())
}

/// The subscription of an ARM scope, lower-case (None for management groups and `/`).
pub fn subscription_of_scope(scope: &str) -> Option<String> {
    crate::arm_id::ArmId::parse(scope)
        .ok()?
        .subscription_id()
        .map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_policy_ids_give_their_key() {
        let id = "/subscriptions/5F1E7A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B/resourceGroups/RG1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/Default";
        assert_eq!(
            jit_key_of_id(id),
            Some((
                "5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
                "rg1".into(),
                "westeurope".into(),
                "default".into()
            ))
        );
        assert_eq!(
            jit_key_of_id("/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/resourceGroups/RG1"),
            None
        );
        assert_eq!(jit_key_of_id("not an id"), None);
        assert_eq!(
            subscription_of_scope(
                "/subscriptions/5F1E7A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B/resourceGroups/x"
            ),
            Some("5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b".into())
        );
        assert_eq!(
            subscription_of_scope("/providers/Microsoft.Management/managementGroups/mg"),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_while_the_lists_are_read_keeps_its_key_out_of_the_snapshot() {
        let w = Warm::new(Duration::from_secs(600));
        let written: JitKey = ("s".into(), "rg".into(), "l".into(), "written".into());
        let other: JitKey = ("s".into(), "rg".into(), "l".into(), "other".into());
        w.begin();
        // The list answered for both policies; then our write changed one of them.
        let mut jit = HashMap::new();
        jit.insert(written.clone(), JitPolicyView::default());
        jit.insert(other.clone(), JitPolicyView::default());
        w.forget_jit(&written);
        w.forget_pim("/subscriptions/x/resourceGroups/rg", "P");
        let mut pim = HashMap::new();
        pim.insert(pim_key("/subscriptions/x/resourceGroups/rg", "p"), vec![]);
        assert_eq!(w.install(Instant::now(), jit, pim), (1, 0));
        assert!(
            w.jit(&written).is_none(),
            "the written policy reads on its own"
        );
        assert!(w.jit(&other).is_some());
        assert!(w.lock().pim.is_empty());
        // Outside priming a forget only forgets.
        w.forget_jit(&other);
        assert!(w.lock().priming.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_snapshot_expires_and_forgets_what_writes_touch() {
        let w = Warm::new(Duration::from_secs(600));
        let key: JitKey = ("s".into(), "rg".into(), "l".into(), "p".into());
        {
            let mut s = w.lock();
            s.taken = Some(Instant::now());
            s.jit.insert(key.clone(), JitPolicyView::default());
        }
        assert!(w.jit(&key).is_some());
        w.forget_jit(&key);
        assert!(w.jit(&key).is_none());
        w.lock().jit.insert(key.clone(), JitPolicyView::default());
        // PIM: found by its own (scope, principal), whatever the spelling; a write at one scope
        // forgets that scope only.
        let sub = "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let role = format!(
            "{sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        );
        let principal = "6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E01";
        for rg in ["rg-a", "rg-b"] {
            let item: ScheduleItem = serde_json::from_value(serde_json::json!({
                "id": format!("{sub}/resourceGroups/{rg}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances/x"),
                "properties": {"scope": format!("{sub}/resourceGroups/{rg}"), "roleDefinitionId": role,
                    "principalId": principal.to_ascii_lowercase(), "memberType": "Direct"}
            }))
            .expect("item");
            let k = pim_key(&format!("{sub}/resourceGroups/{rg}"), principal);
            w.lock().pim.entry(k).or_default().push(item);
        }
        let upper_a = format!("{}/RESOURCEGROUPS/RG-A", sub.to_ascii_uppercase());
        assert!(w.pim(&upper_a, &role, principal).is_some());
        assert!(
            w.pim(&format!("{sub}/resourceGroups/rg-c"), &role, principal)
                .is_none()
        );
        w.forget_pim(&format!("{sub}/resourceGroups/rg-a"), principal);
        assert!(w.pim(&upper_a, &role, principal).is_none());
        assert!(
            w.pim(&format!("{sub}/resourceGroups/rg-b"), &role, principal)
                .is_some()
        );
        tokio::time::advance(VALIDITY).await;
        assert!(w.jit(&key).is_none(), "an expired snapshot serves nothing");
        assert!(w.valid_until().is_none());
    }
}
