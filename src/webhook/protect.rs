//! What only the operator may write: an AccessGrant's status (the record of what Azure holds)
//! and the removal of its finalizer while the grant may hold access (without the finalizer a
//! delete would leave the access in Azure). Pure: the operator's own identity is a parameter.

use super::{deny, parse};
use crate::api::{AccessGrant, AccessGrantStatus};
use crate::constants::FINALIZER;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

/// Reason of a refused status write.
pub const REASON_STATUS: &str = "StatusIsTheOperators";
/// Reason of a refused finalizer removal.
pub const REASON_FINALIZER: &str = "FinalizerProtected";

/// How to end access instead of forcing it.
const HOW_TO_REVOKE: &str = "to end the access, delete the grant (kubectl delete accessgrant NAME) or set spec.suspend: true; the operator revokes it in Azure and then lets the object go";

/// Whether a grant with this status may hold Azure access (or have a request in flight).
pub fn may_hold_access(status: Option<&AccessGrantStatus>) -> bool {
    status.is_some_and(AccessGrantStatus::may_hold_access)
}

fn has_finalizer(g: &AccessGrant) -> bool {
    g.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// The refusal for a write only the operator (`operator`, its Kubernetes user name) may make,
/// or None.
pub fn refusal(req: &AdmissionRequest<DynamicObject>, operator: &str) -> Option<AdmissionResponse> {
    if req.operation != Operation::Update {
        return None;
    }
    let user = req.user_info.username.as_deref().unwrap_or_default();
    if user == operator {
        return None;
    }
    let resp = AdmissionResponse::from(req);
    if req.sub_resource.as_deref() == Some("status") {
        return Some(deny(
            resp,
            403,
            REASON_STATUS,
            format!(
                "the status of an AccessGrant is written only by the operator ({operator}): it records what Azure holds and is the audit trail; {HOW_TO_REVOKE}"
            ),
        ));
    }
    let old = req.old_object.as_ref().map(parse)?.ok()?;
    let new = req.object.as_ref().map(parse)?.ok()?;
    if has_finalizer(&old) && !has_finalizer(&new) && may_hold_access(old.status.as_ref()) {
        return Some(deny(
            resp,
            403,
            REASON_FINALIZER,
            format!(
                "finalizer {FINALIZER} is removed only by the operator, once Azure shows the grant's access gone (phase {:?}); removing it by hand would leave the access open in Azure; {HOW_TO_REVOKE}",
                old.status.as_ref().map(|s| s.phase).unwrap_or_default()
            ),
        ));
    }
    None
}
