//! Which grants hold which Azure access right now: an index kept from the grant watch.
//!
//! A grant must not take away access that another live grant holds on the same target (same
//! PIM principal, role, scope and mode; or every JIT VM port with the same source prefixes).
//! Scanning the whole grant cache on every reconcile cost ~12% of the operator's CPU at 10k
//! grants and grew with N (BENCHMARKS.md); this index answers in time proportional to the
//! grant's own target.

use crate::api::{AccessGrant, Phase, RecordedTarget};
use crate::lifecycle::PortClaim;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::watcher;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// One unit of access: a PIM assignment or one JIT VM port from given prefixes.
pub type AccessKey = String;

/// The access units of a recorded target (ids compared case-insensitively).
pub fn keys(t: &RecordedTarget) -> Vec<AccessKey> {
    let mut out = Vec::new();
    if let Some(p) = &t.pim {
        out.push(format!(
            "pim\u{0}{}\u{0}{}\u{0}{}\u{0}{:?}",
            p.principal_id.to_ascii_lowercase(),
            p.role_definition_id.to_ascii_lowercase(),
            p.scope.to_ascii_lowercase(),
            p.mode
        ));
    } else if let Some(j) = &t.jit {
        for vm in &j.virtual_machines {
            for port in &vm.ports {
                out.push(format!(
                    "jit\u{0}{}\u{0}{}\u{0}{:?}",
                    vm.id.to_ascii_lowercase(),
                    port.number,
                    port.allowed_source_address_prefixes
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The keys a grant holds, if it holds access that others may rely on: live (not being
/// deleted, not suspended), Active or Renewing, with a recorded target.
fn held(g: &AccessGrant) -> Vec<AccessKey> {
    if g.metadata.deletion_timestamp.is_some() || g.spec.suspend == Some(true) {
        return Vec::new();
    }
    let Some(st) = g.status.as_ref() else {
        return Vec::new();
    };
    if !matches!(st.phase, Phase::Active | Phase::Renewing) {
        return Vec::new();
    }
    st.target.as_ref().map(keys).unwrap_or_default()
}

/// The targets a live grant asks for (from its spec, whatever its phase): whole PIM
/// assignments `(principal, role, scope)` and JIT VM ports. The orphan sweep never touches
/// access on a target some live grant of ours asks for.
pub fn spec_targets(g: &AccessGrant) -> Vec<AccessKey> {
    let mut out = Vec::new();
    if let Some(p) = &g.spec.pim {
        out.push(pim_target_key(
            &p.principal_id,
            &p.role_definition_id,
            &p.scope,
        ));
    }
    if let Some(j) = &g.spec.jit {
        for vm in &j.virtual_machines {
            for port in &vm.ports {
                out.push(jit_port_key(&vm.id, port.number));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The key of a PIM assignment for [`spec_targets`] (role compared by its GUID).
pub fn pim_target_key(principal: &str, role: &str, scope: &str) -> AccessKey {
    let role = role.rsplit('/').next().unwrap_or(role);
    format!(
        "pim\u{0}{}\u{0}{}\u{0}{}",
        principal.to_ascii_lowercase(),
        role.to_ascii_lowercase(),
        scope.trim_end_matches('/').to_ascii_lowercase()
    )
}

/// The key of a JIT VM port for [`spec_targets`].
pub use crate::lifecycle::jit_port_key;

/// The claim of a grant on its JIT VM ports: of another grant ([`PortClaim::of`]), or of the
/// one being planned (`mine`: [`PortClaim::mine`], whatever its phase).
fn port_claim(g: &AccessGrant, mine: bool) -> Option<PortClaim> {
    let name = format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any());
    let uid = g.uid().unwrap_or_default();
    let created = g
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    if mine {
        PortClaim::mine(name, uid, created, &g.spec, g.status.as_ref())
    } else {
        let deleting = g.metadata.deletion_timestamp.is_some();
        PortClaim::of(name, uid, created, &g.spec, g.status.as_ref(), deleting)
    }
}

fn claim(g: &AccessGrant) -> Option<PortClaim> {
    port_claim(g, false)
}

fn claimed_ports(g: &AccessGrant) -> Vec<AccessKey> {
    claim(g)
        .map(|c| c.ports.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}

#[derive(Default)]
struct Maps {
    by_uid: HashMap<String, Vec<AccessKey>>,
    by_key: HashMap<AccessKey, HashSet<String>>,
}

impl Maps {
    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for k in old {
                if let Some(set) = self.by_key.get_mut(&k) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.by_key.remove(&k);
                    }
                }
            }
        }
    }

    fn apply(&mut self, g: &AccessGrant, keys_of: fn(&AccessGrant) -> Vec<AccessKey>) {
        let Some(uid) = g.uid() else {
            return;
        };
        self.remove(&uid);
        let keys = keys_of(g);
        if keys.is_empty() {
            return;
        }
        for k in &keys {
            self.by_key
                .entry(k.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.by_uid.insert(uid, keys);
    }
}

/// The index, fed with the same watch events as the controller's cache.
#[derive(Default)]
pub struct Coverage {
    live: Mutex<Maps>,
    /// Filled during a re-list, swapped in at its end (so a re-list never shows a gap).
    next: Mutex<Option<Maps>>,
    /// Every live grant's [`spec_targets`].
    asked: Mutex<Maps>,
    next_asked: Mutex<Option<Maps>>,
    /// JIT grants by the VM ports they hold or ask for, and their claims by uid.
    ports: Mutex<Maps>,
    next_ports: Mutex<Option<Maps>>,
    claims: Mutex<HashMap<String, PortClaim>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Coverage {
    /// Applies one watch event.
    pub fn observe(&self, ev: &watcher::Event<DeserializeGuard<AccessGrant>>) {
        Self::observe_into(ev, &self.live, &self.next, held);
        Self::observe_into(ev, &self.asked, &self.next_asked, spec_targets);
        Self::observe_into(ev, &self.ports, &self.next_ports, claimed_ports);
        if let watcher::Event::InitDone = ev {
            // A re-list replaced the port index: claims of grants that went in the gap go too.
            // (One lock at a time: `jit_port_holder` takes the port index first.)
            let listed: HashSet<String> = lock(&self.ports).by_uid.keys().cloned().collect();
            lock(&self.claims).retain(|uid, _| listed.contains(uid));
            return;
        }
        let mut c = lock(&self.claims);
        match ev {
            watcher::Event::Apply(DeserializeGuard(Ok(g)))
            | watcher::Event::InitApply(DeserializeGuard(Ok(g))) => {
                if let Some(uid) = g.uid() {
                    match claim(g) {
                        Some(x) => {
                            c.insert(uid, x);
                        }
                        None => {
                            c.remove(&uid);
                        }
                    }
                }
            }
            watcher::Event::Delete(DeserializeGuard(Ok(g))) => {
                if let Some(uid) = g.uid() {
                    c.remove(&uid);
                }
            }
            _ => {}
        }
    }

    /// Another JIT grant of ours that `me` must wait for on one of its VM ports
    /// ([`crate::lifecycle::port_holder`]).
    pub fn jit_port_holder(&self, me: &AccessGrant) -> Option<crate::lifecycle::PortHolder> {
        let mine = port_claim(me, true)?;
        let ports = lock(&self.ports);
        let claims = lock(&self.claims);
        let others = mine
            .ports
            .iter()
            .flat_map(|(k, _)| ports.by_key.get(k).into_iter().flatten())
            .filter_map(|uid| claims.get(uid));
        crate::lifecycle::port_holder(&mine, others)
    }

    fn observe_into(
        ev: &watcher::Event<DeserializeGuard<AccessGrant>>,
        live: &Mutex<Maps>,
        next: &Mutex<Option<Maps>>,
        keys_of: fn(&AccessGrant) -> Vec<AccessKey>,
    ) {
        match ev {
            watcher::Event::Apply(DeserializeGuard(Ok(g))) => lock(live).apply(g, keys_of),
            watcher::Event::Delete(DeserializeGuard(Ok(g))) => {
                if let Some(uid) = g.uid() {
                    lock(live).remove(&uid);
                }
            }
            watcher::Event::Apply(DeserializeGuard(Err(bad)))
            | watcher::Event::Delete(DeserializeGuard(Err(bad))) => {
                if let Some(uid) = &bad.metadata.uid {
                    lock(live).remove(uid);
                }
            }
            watcher::Event::Init => *lock(next) = Some(Maps::default()),
            watcher::Event::InitApply(DeserializeGuard(Ok(g))) => {
                if let Some(next) = lock(next).as_mut() {
                    next.apply(g, keys_of);
                }
            }
            watcher::Event::InitApply(DeserializeGuard(Err(_))) => {}
            watcher::Event::InitDone => {
                if let Some(n) = lock(next).take() {
                    *lock(live) = n;
                }
            }
        }
    }

    /// Whether some live grant asks for this target (a [`spec_targets`] key).
    pub fn asked_for(&self, key: &AccessKey) -> bool {
        lock(&self.asked).by_key.contains_key(key)
    }

    /// Whether another live grant holds every unit of `me`'s recorded target.
    pub fn covered_by_other(&self, me: &AccessGrant) -> bool {
        let Some(target) = me.status.as_ref().and_then(|s| s.target.as_ref()) else {
            return false;
        };
        let mine = keys(target);
        let my_uid = me.uid().unwrap_or_default();
        let live = lock(&self.live);
        let mut candidates: Option<HashSet<&String>> = None;
        for k in &mine {
            let Some(holders) = live.by_key.get(k) else {
                return false;
            };
            candidates = Some(match candidates {
                None => holders.iter().filter(|u| **u != my_uid).collect(),
                Some(c) => c.into_iter().filter(|u| holders.contains(*u)).collect(),
            });
            if candidates.as_ref().is_some_and(|c| c.is_empty()) {
                return false;
            }
        }
        candidates.is_some_and(|c| !c.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JitVirtualMachine;
    use crate::api::{AccessGrantSpec, AccessGrantStatus, IsoDuration, JitPort, JitTarget};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const VM: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1";

    fn jit(name: &str, created: i64, port: i32, phase: Option<Phase>) -> AccessGrant {
        let mut g = AccessGrant::new(
            name,
            AccessGrantSpec {
                duration: IsoDuration::new("PT1H"),
                jit: Some(JitTarget {
                    subscription_id: "s".into(),
                    resource_group: "rg".into(),
                    location: "westeurope".into(),
                    policy_name: "default".into(),
                    virtual_machines: vec![JitVirtualMachine {
                        id: VM.into(),
                        ports: vec![JitPort {
                            number: port,
                            allowed_source_address_prefix: Some(format!("10.0.0.{created}")),
                            allowed_source_address_prefixes: None,
                        }],
                    }],
                }),
                ..Default::default()
            },
        );
        g.metadata.namespace = Some("team".into());
        g.metadata.uid = Some(format!("uid-{name}"));
        g.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + created).expect("time"),
        ));
        g.status = phase.map(|phase| AccessGrantStatus {
            phase,
            end_time: chrono::DateTime::from_timestamp(1_800_003_600, 0),
            ..Default::default()
        });
        g
    }

    fn apply(c: &Coverage, g: &AccessGrant) {
        c.observe(&watcher::Event::Apply(DeserializeGuard(Ok(g.clone()))));
    }

    #[test]
    fn a_grant_waits_for_the_holder_of_its_jit_port_or_the_one_that_asked_first() {
        let c = Coverage::default();
        let alice = jit("alice", 1, 22, Some(Phase::Active));
        let bob = jit("bob", 2, 22, None);
        let carol = jit("carol", 3, 22, Some(Phase::Pending));
        let other_port = jit("dave", 4, 3389, None);
        for g in [&alice, &bob, &carol, &other_port] {
            apply(&c, g);
        }
        // The holder never waits; the others wait for it (named, with its end).
        assert_eq!(c.jit_port_holder(&alice), None);
        let h = c.jit_port_holder(&bob).expect("bob waits");
        assert_eq!(h.grant, "team/alice");
        assert_eq!(h.port, "vm-1:22");
        assert!(h.until.is_some());
        assert_eq!(
            c.jit_port_holder(&carol).map(|h| h.grant),
            Some("team/alice".into())
        );
        assert_eq!(c.jit_port_holder(&other_port), None, "another port");
        // Alice's access is gone: bob asked first, carol waits for him (without an end).
        let mut gone = alice.clone();
        gone.status.as_mut().expect("status").phase = Phase::Revoked;
        apply(&c, &gone);
        assert_eq!(c.jit_port_holder(&bob), None);
        let h = c.jit_port_holder(&carol).expect("carol waits");
        assert_eq!((h.grant.as_str(), h.until), ("team/bob", None));
        // A deleted holder stays one until its access is gone.
        let mut leaving = jit("erin", 0, 3389, Some(Phase::Revoking));
        leaving.metadata.deletion_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_100).expect("time"),
        ));
        apply(&c, &leaving);
        assert_eq!(
            c.jit_port_holder(&other_port).map(|h| h.grant),
            Some("team/erin".into())
        );
        c.observe(&watcher::Event::Delete(DeserializeGuard(Ok(leaving))));
        assert_eq!(c.jit_port_holder(&other_port), None);
        // A re-list without bob (deleted in a watch gap): his claim goes with it.
        c.observe(&watcher::Event::Init);
        for g in [&gone, &carol, &other_port] {
            c.observe(&watcher::Event::InitApply(DeserializeGuard(Ok(
                (*g).clone()
            ))));
        }
        c.observe(&watcher::Event::InitDone);
        assert_eq!(c.jit_port_holder(&carol), None, "bob is gone");
        assert!(!lock(&c.claims).contains_key("uid-bob"));
    }
}
