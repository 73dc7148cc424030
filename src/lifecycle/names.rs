//! Names the operator gives its Azure requests, so that it finds them again: PIM request names
//! and JIT justification markers. Shared by every flow.

use super::GrantMeta;
use crate::api::Operation;
use crate::constants::REQUEST_NAMESPACE;

/// Deterministic PIM request name: UUIDv5 of (uid, attempt, operation).
pub fn request_name(uid: &str, attempt: u32, op: Operation) -> String {
    uuid::Uuid::new_v5(
        &REQUEST_NAMESPACE,
        format!("{uid}/{attempt}/{}", op.as_str()).as_bytes(),
    )
    .to_string()
}

/// The JIT justification marker for (grant, attempt). JIT requests have no id, so this is how
/// the operator finds its own request again. The uid prefix keeps a re-created grant of the same
/// name from adopting its predecessor's requests.
pub fn jit_marker(meta: &GrantMeta, attempt: u32) -> String {
    let uid8: String = meta.uid.chars().take(8).collect();
    format!("[ag:{}/{}#{attempt}.{uid8}]", meta.namespace, meta.name)
}
