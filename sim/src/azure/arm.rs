//! ARM conventions: the error envelope, scopes and ids, case-insensitive JSON access.

use serde_json::{Value, json};

/// An ARM error answer: `{"error": {"code", "message", "details"?}}` with an HTTP status.
#[derive(Debug, Clone)]
pub struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Sim-specific detail codes (CloudError `details`), e.g. the precise JIT violation.
    pub details: Vec<(String, String)>,
    pub retry_after: Option<u64>,
}

impl ArmError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ArmError {
            status,
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn with_detail(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.details.push((code.into(), message.into()));
        self
    }
    pub fn body(&self) -> Value {
        let mut err = json!({"code": self.code, "message": self.message});
        if !self.details.is_empty() {
            err["details"] = Value::Array(
                self.details
                    .iter()
                    .map(|(c, m)| json!({"code": c, "message": m}))
                    .collect(),
            );
        }
        json!({ "error": err })
    }
    pub fn invalid_body(msg: impl Into<String>) -> Self {
        Self::bad_request("InvalidRequestContent", msg)
    }
}

/// Case-insensitive object member lookup (ARM reads property names case-insensitively).
/// A JSON `null` counts as absent.
pub fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    let found = obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })?;
    if found.is_null() { None } else { Some(found) }
}

/// A string member, or an error when it has another JSON type.
pub fn get_str_ci(v: &Value, key: &str, ctx: &str) -> Result<Option<String>, ArmError> {
    match get_ci(v, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ArmError::invalid_body(format!(
            "The property '{ctx}{key}' must be a string."
        ))),
    }
}

/// Normalises a scope: leading slash, no trailing slash, the
/// `/providers/Microsoft.Subscription/subscriptions/{id}` alias folded into `/subscriptions/{id}`,
/// canonical casing of the `subscriptions` and `resourceGroups` segments. The root is `/`.
pub fn normalize_scope(raw: &str) -> String {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        return "/".to_string();
    }
    let mut segs: Vec<String> = trimmed
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect();
    if segs.len() >= 3
        && segs[0].eq_ignore_ascii_case("providers")
        && segs[1].eq_ignore_ascii_case("Microsoft.Subscription")
        && segs[2].eq_ignore_ascii_case("subscriptions")
    {
        segs.drain(0..2);
    }
    if let Some(first) = segs.first_mut()
        && first.eq_ignore_ascii_case("subscriptions")
    {
        *first = "subscriptions".into();
    }
    if segs.len() >= 3 && segs[2].eq_ignore_ascii_case("resourceGroups") {
        segs[2] = "resourceGroups".into();
    }
    format!("/{}", segs.join("/"))
}

/// True when `ancestor` is `scope` itself or one of its parents (case-insensitive).
pub fn scope_at_or_above(ancestor: &str, scope: &str) -> bool {
    if ancestor == "/" {
        return true;
    }
    let a = ancestor.to_ascii_lowercase();
    let s = scope.to_ascii_lowercase();
    s == a || s.starts_with(&format!("{a}/"))
}

pub fn scope_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The subscription id of a scope, if it is at or below a subscription.
pub fn subscription_of(scope: &str) -> Option<String> {
    let segs: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 2 && segs[0].eq_ignore_ascii_case("subscriptions") {
        Some(segs[1].to_string())
    } else {
        None
    }
}

/// The resource group name of a scope, if it is at or below a resource group.
pub fn resource_group_of(scope: &str) -> Option<String> {
    let segs: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 4
        && segs[0].eq_ignore_ascii_case("subscriptions")
        && segs[2].eq_ignore_ascii_case("resourceGroups")
    {
        Some(segs[3].to_string())
    } else {
        None
    }
}

/// `subscription`, `resourcegroup`, `managementgroup`, `resource` or `tenant` (the casing ARM's
/// PIM `expandedProperties.scope.type` uses).
pub fn scope_kind(scope: &str) -> &'static str {
    let segs: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    match segs.len() {
        0 => "tenant",
        2 if segs[0].eq_ignore_ascii_case("subscriptions") => "subscription",
        4 if segs[0].eq_ignore_ascii_case("subscriptions")
            && segs[2].eq_ignore_ascii_case("resourceGroups") =>
        {
            "resourcegroup"
        }
        4 if segs[0].eq_ignore_ascii_case("providers")
            && segs[1].eq_ignore_ascii_case("Microsoft.Management") =>
        {
            "managementgroup"
        }
        _ => "resource",
    }
}

/// The nearest parent scope (`/` for subscriptions and management groups, `None` for `/`).
pub fn parent_scope(scope: &str) -> Option<String> {
    let segs: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        return None;
    }
    match scope_kind(scope) {
        "subscription" | "managementgroup" => Some("/".into()),
        "resourcegroup" => Some(format!("/{}/{}", segs[0], segs[1])),
        "resource" if segs.len() > 4 && segs[0].eq_ignore_ascii_case("subscriptions") => {
            Some(format!("/{}/{}/{}/{}", segs[0], segs[1], segs[2], segs[3]))
        }
        _ => Some("/".into()),
    }
}

/// The last path segment of an id (a bare GUID stays as is).
pub fn last_segment(id: &str) -> &str {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or(id)
}

pub fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// A stable GUID derived from a string (SHA-256, formatted as a version-4-looking UUID).
pub fn stable_guid(seed: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            normalize_scope("providers/Microsoft.Subscription/subscriptions/abc"),
            "/subscriptions/abc"
        );
        assert_eq!(normalize_scope("/"), "/");
        assert_eq!(normalize_scope(""), "/");
        assert_eq!(
            normalize_scope("/SUBSCRIPTIONS/abc/RESOURCEGROUPS/rg/"),
            "/subscriptions/abc/resourceGroups/rg"
        );
        assert!(scope_at_or_above(
            "/subscriptions/a",
            "/subscriptions/A/resourceGroups/x"
        ));
        assert!(!scope_at_or_above("/subscriptions/a", "/subscriptions/ab"));
        assert!(scope_at_or_above("/", "/subscriptions/a"));
        assert_eq!(
            scope_kind("/subscriptions/a/resourceGroups/b"),
            "resourcegroup"
        );
        assert_eq!(
            parent_scope("/subscriptions/a/resourceGroups/b").as_deref(),
            Some("/subscriptions/a")
        );
        assert_eq!(parent_scope("/subscriptions/a").as_deref(), Some("/"));
        assert!(is_guid(&stable_guid("x")));
    }
}
