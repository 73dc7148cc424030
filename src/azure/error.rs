//! Azure errors, classified (pure). The ARM client turns every failed call into an
//! [`AzureError`] (defined with the planner, which decides what each class means for the
//! grant); this module holds the wire side: ARM's error envelope.

pub use crate::lifecycle::AzureError;
use serde::Deserialize;

#[derive(Deserialize)]
struct Envelope {
    error: Option<CloudErrorBody>,
}

#[derive(Deserialize)]
struct CloudErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Classifies an ARM error answer from its status, body and `Retry-After` (seconds).
/// Tolerates non-JSON bodies (gateway HTML, empty 502).
pub fn classify(status: u16, body: &str, retry_after_secs: Option<u64>) -> AzureError {
    let (code, message) = match serde_json::from_str::<Envelope>(body) {
        Ok(Envelope { error: Some(e) }) => (
            e.code.unwrap_or_else(|| format!("Http{status}")),
            e.message.unwrap_or_default(),
        ),
        _ => (format!("Http{status}"), truncate(body, 300)),
    };
    let c = code.to_ascii_lowercase();
    match (status, c.as_str()) {
        (429, _) => AzureError::Throttled {
            code,
            retry_after_secs: retry_after_secs.unwrap_or(0),
        },
        (s, _) if s >= 500 || s == 408 => AzureError::Transient {
            status: Some(s),
            code,
            message,
        },
        (_, "roleassignmentrequestpolicyvalidationfailed") => AzureError::PolicyRules {
            rules: parse_policy_rules(&message),
            message,
        },
        (_, "roleassignmentexists") => AzureError::RoleAssignmentExists { message },
        (_, "roleassignmentrequestexists" | "roleassignmentschedulerequestexists") => {
            AzureError::RequestExists { message }
        }
        (_, "pendingroleassignmentrequest") => AzureError::PendingRequestExists { message },
        (_, "activedurationtooshort") => AzureError::ActiveDurationTooShort { message },
        (_, "roleassignmentdoesnotexist") => AzureError::DoesNotExist { message },
        (401, _) => AzureError::Auth { code, message },
        (403, _) => AzureError::Forbidden { code, message },
        (404, _) => AzureError::NotFound { code, message },
        (409, _) if message.to_ascii_lowercase().contains("already exists") => {
            AzureError::RequestExists { message }
        }
        (s, _) => AzureError::Invalid {
            status: s,
            code,
            message,
        },
    }
}

/// Extracts the rule names from `The following policy rules failed: ["ExpirationRule","JustificationRule"]`.
pub fn parse_policy_rules(message: &str) -> Vec<String> {
    let Some(start) = message.find('[') else {
        return vec![];
    };
    let Some(len) = message[start..].find(']') else {
        return vec![];
    };
    let list = &message[start..=start + len];
    if let Ok(v) = serde_json::from_str::<Vec<String>>(list) {
        return v;
    }
    list.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules_are_parsed_from_the_message() {
        let body = r#"{"error":{"code":"RoleAssignmentRequestPolicyValidationFailed","message":"The following policy rules failed: [\"ExpirationRule\",\"JustificationRule\"]"}}"#;
        assert_eq!(
            classify(400, body, None),
            AzureError::PolicyRules {
                rules: vec!["ExpirationRule".into(), "JustificationRule".into()],
                message:
                    r#"The following policy rules failed: ["ExpirationRule","JustificationRule"]"#
                        .into()
            }
        );
    }

    #[test]
    fn classes() {
        assert_eq!(classify(429, "", Some(7)).category(), "Throttled");
        assert_eq!(
            classify(502, "<html>bad gateway</html>", None).category(),
            "Transient"
        );
        assert_eq!(
            classify(
                400,
                r#"{"error":{"code":"RoleAssignmentExists","message":"x"}}"#,
                None
            )
            .category(),
            "RoleAssignmentExists"
        );
        assert_eq!(
            classify(
                409,
                r#"{"error":{"code":"RoleAssignmentRequestExists","message":"x"}}"#,
                None
            )
            .category(),
            "RequestExists"
        );
        assert_eq!(
            classify(
                400,
                r#"{"error":{"code":"ActiveDurationTooShort","message":"x"}}"#,
                None
            )
            .category(),
            "ActiveDurationTooShort"
        );
        assert_eq!(
            classify(
                400,
                r#"{"error":{"code":"RoleAssignmentDoesNotExist","message":"x"}}"#,
                None
            )
            .category(),
            "DoesNotExist"
        );
        assert_eq!(
            classify(
                403,
                r#"{"error":{"code":"AuthorizationFailed","message":"x"}}"#,
                None
            )
            .category(),
            "Forbidden"
        );
        assert_eq!(classify(404, "", None).category(), "NotFound");
        assert_eq!(
            classify(400, r#"{"error":{"code":"InvalidScope"}}"#, None).category(),
            "Invalid"
        );
        assert_eq!(classify(401, "{}", None).category(), "Auth");
    }
}
