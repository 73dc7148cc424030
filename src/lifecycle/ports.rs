//! JIT grants sharing VM ports (pure): Defender keeps one request per VM port, and a newer one
//! closes the older, so of our grants asking for one port only one may ask at a time. The
//! controller's coverage index and the model tests decide it with the same function.

use crate::api::{AccessGrantSpec, AccessGrantStatus, Phase};
use chrono::{DateTime, Utc};

/// A JIT grant's claim on its VM ports: it may hold access there (until Azure shows it gone,
/// being deleted or suspended included), or it is still to ask (Pending, Requesting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortClaim {
    /// `namespace/name`.
    pub grant: String,
    pub uid: String,
    /// `metadata.creationTimestamp` (Unix seconds).
    pub created: Option<i64>,
    /// May hold access now.
    pub holds: bool,
    /// Its end, when it has one.
    pub until: Option<DateTime<Utc>>,
    /// (key, `vm-name:port`) of each VM port; keys compare VM ids case-insensitively.
    pub ports: Vec<(String, String)>,
}

/// The key of a JIT VM port.
pub fn jit_port_key(vm: &str, port: impl std::fmt::Display) -> String {
    format!("jitport\u{0}{}\u{0}{port}", vm.to_ascii_lowercase())
}

impl PortClaim {
    /// The claim of another grant (None: not a JIT grant, or one that neither holds nor asks).
    pub fn of(
        grant: String,
        uid: String,
        created: Option<i64>,
        spec: &AccessGrantSpec,
        status: Option<&AccessGrantStatus>,
        deleting: bool,
    ) -> Option<PortClaim> {
        let c = Self::mine(grant, uid, created, spec, status)?;
        let live = !deleting && spec.suspend != Some(true);
        let asking =
            live && status.is_none_or(|s| matches!(s.phase, Phase::Pending | Phase::Requesting));
        (c.holds || asking).then_some(c)
    }

    /// The claim of the grant being planned: whatever its phase, its pass may ask (a finished
    /// grant whose spec changed asks again), so it is a claim for every JIT grant.
    pub fn mine(
        grant: String,
        uid: String,
        created: Option<i64>,
        spec: &AccessGrantSpec,
        status: Option<&AccessGrantStatus>,
    ) -> Option<PortClaim> {
        let j = spec.jit.as_ref()?;
        let holds = status.is_some_and(AccessGrantStatus::may_hold_access);
        let mut ports: Vec<(String, String)> = j
            .virtual_machines
            .iter()
            .flat_map(|vm| {
                let short = vm.id.rsplit('/').next().unwrap_or(&vm.id).to_string();
                vm.ports.iter().map(move |p| {
                    (
                        jit_port_key(&vm.id, p.number),
                        format!("{short}:{}", p.number),
                    )
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        Some(PortClaim {
            grant,
            uid,
            created,
            holds,
            until: status.and_then(|s| s.end_time),
            ports,
        })
    }
}

/// The grant `me` must wait for on one of its VM ports: one that may hold access there, or
/// one created earlier that is still to ask (so two new grants never both ask). None when
/// `me` may hold access itself (it is the holder) or shares no port.
pub fn port_holder<'a>(
    me: &PortClaim,
    others: impl IntoIterator<Item = &'a PortClaim>,
) -> Option<super::PortHolder> {
    if me.holds {
        return None;
    }
    let mut best: Option<(&PortClaim, &str)> = None;
    for o in others {
        if o.uid == me.uid {
            continue;
        }
        let first = (o.created, o.uid.as_str()) < (me.created, me.uid.as_str());
        if !(o.holds || first) {
            continue;
        }
        let Some((_, label)) = me
            .ports
            .iter()
            .find(|(k, _)| o.ports.iter().any(|(ok, _)| ok == k))
        else {
            continue;
        };
        if best.is_none_or(|(b, _)| o.holds && !b.holds) {
            best = Some((o, label));
        }
    }
    best.map(|(o, port)| super::PortHolder {
        grant: o.grant.clone(),
        port: port.to_string(),
        until: o.until.filter(|_| o.holds),
    })
}
