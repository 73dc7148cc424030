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

/// The justification marker for (grant, attempt): `[ag:ns/name#attempt.uid8]`. JIT requests
/// have no id, so this is how the operator finds its own request again; PIM grant requests
/// carry it too, so that access in Azure always names the grant it belongs to (the orphan
/// sweep reads it back with [`parse_marker`]). The uid prefix keeps a re-created grant of the same
/// name from adopting its predecessor's requests.
pub fn jit_marker(meta: &GrantMeta, attempt: u32) -> String {
    let uid8: String = meta.uid.chars().take(8).collect();
    format!("[ag:{}/{}#{attempt}.{uid8}]", meta.namespace, meta.name)
}

/// A marker read back from a justification (the last one in it): (namespace, name, attempt,
/// the first 8 characters of the grant's uid).
pub fn parse_marker(justification: &str) -> Option<(String, String, u32, String)> {
    let start = justification.rfind("[ag:")?;
    let rest = &justification[start + 4..];
    let body = &rest[..rest.find(']')?];
    let (path, tail) = body.rsplit_once('#')?;
    let (ns, name) = path.split_once('/')?;
    let (attempt, uid8) = tail.split_once('.')?;
    let attempt = attempt.parse().ok()?;
    if ns.is_empty() || name.is_empty() || uid8.is_empty() {
        return None;
    }
    Some((ns.to_string(), name.to_string(), attempt, uid8.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back() {
        assert_eq!(
            parse_marker("e2e (requested by a@b) [ag:team-a/ssh#3.1a2b3c4d]"),
            Some(("team-a".into(), "ssh".into(), 3, "1a2b3c4d".into()))
        );
        assert_eq!(
            parse_marker("[ag:x/old#1.aaaaaaaa] then [ag:ns/n#2.bbbbbbbb] closing early"),
            Some(("ns".into(), "n".into(), 2, "bbbbbbbb".into()))
        );
        assert_eq!(parse_marker("no marker"), None);
        assert_eq!(parse_marker("[ag:ns/n#x.bbbb]"), None);
        assert_eq!(parse_marker("[ag:ns/n#1.bbbb"), None);
    }
}
