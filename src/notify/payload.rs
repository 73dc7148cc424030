//! What a notification says and how it is signed (pure): the events taken from a grant's status
//! history, the three body formats (plain JSON, Slack and Microsoft Teams incoming webhooks) and
//! the HMAC-SHA256 signature. A payload carries the grant's identity, phase, reason, one
//! message, the requester, the ticket and a short target; never the spec, a token or a key.

use super::{EventKind, Format};
use crate::api::{AccessGrant, AccessGrantStatus, HistoryEntry, Phase};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

/// Longest `message` in a payload (characters).
const MESSAGE_MAX: usize = 1000;

/// One notification, as the `json` format sends it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Stable id (also the `X-AccessGrant-Event-Id` header): the same event sent twice, e.g.
    /// again after a restart, carries the same id, so receivers can deduplicate.
    pub id: String,
    /// What happened.
    pub event: EventKind,
    /// When it happened (the history entry's time).
    pub time: DateTime<Utc>,
    /// The grant's namespace.
    pub namespace: String,
    /// The grant's name.
    pub name: String,
    /// The grant's uid (absent for an orphan, whose grant is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `JIT` or `PIM`.
    pub kind: &'static str,
    /// The grant's phase when the notification was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The grant's reason (PascalCase) when the notification was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One human sentence: the history entry's detail, or what the orphan sweep removed.
    pub message: String,
    /// The verified requester, when the grant had a valid stamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Whether the grant is a break-glass grant.
    pub break_glass: bool,
    /// `system/number` of the grant's ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Short target: `vm1:22,3389` or `Reader@rg1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The notification an entry of `status.history` stands for, if any.
pub fn event_of(entry: &HistoryEntry) -> Option<EventKind> {
    use crate::constants::reason;
    match entry.event.as_str() {
        reason::BREAK_GLASS => Some(EventKind::BreakGlass),
        reason::REVOCATION_FAILING => Some(EventKind::RevocationFailing),
        // Transition entries are named after the phase (`lifecycle::status`).
        "Denied" => Some(EventKind::Denied),
        "Failed" => Some(EventKind::Failed),
        _ => None,
    }
}

/// Notifications for the history entries `after` adds to `before`. With `replay_since`, for
/// the first status of a grant this process sees: also every notify-worthy entry of `after`
/// from then on (sent before a restart or not; the ids say which is which).
pub fn from_history(
    g: &AccessGrant,
    before: &AccessGrantStatus,
    after: &AccessGrantStatus,
    replay_since: Option<DateTime<Utc>>,
) -> Vec<Notification> {
    after
        .history
        .iter()
        .filter(|h| !before.history.contains(h) || replay_since.is_some_and(|s| h.time >= s))
        .filter_map(|h| Some((h, event_of(h)?)))
        .map(|(h, event)| of_grant(g, after, h, event))
        .collect()
}

fn of_grant(
    g: &AccessGrant,
    st: &AccessGrantStatus,
    h: &HistoryEntry,
    event: EventKind,
) -> Notification {
    let uid = g.metadata.uid.clone().unwrap_or_default();
    Notification {
        id: format!("{uid}.{}.{}", h.time.timestamp(), event.as_str()),
        event,
        time: h.time,
        namespace: g.metadata.namespace.clone().unwrap_or_default(),
        name: g.metadata.name.clone().unwrap_or_default(),
        uid: Some(uid),
        kind: if g.spec.jit.is_some() { "JIT" } else { "PIM" },
        phase: Some(st.phase),
        reason: st.reason.clone(),
        message: h.detail.chars().take(MESSAGE_MAX).collect(),
        requested_by: st.requested_by.clone(),
        break_glass: g.spec.break_glass.unwrap_or(false),
        ticket: g
            .spec
            .ticket
            .as_ref()
            .map(|t| format!("{}/{}", t.system, t.number)),
        target: st.summary.as_ref().map(|s| s.target.clone()),
    }
}

/// The orphan sweep removed access of a grant that is gone.
pub fn orphan_removed(
    namespace: &str,
    name: &str,
    kind: &'static str,
    what: &str,
    now: DateTime<Utc>,
) -> Notification {
    Notification {
        id: format!("orphan.{namespace}.{name}.{kind}.{}", now.timestamp()),
        event: EventKind::OrphanRemoved,
        time: now,
        namespace: namespace.into(),
        name: name.into(),
        uid: None,
        kind,
        phase: None,
        reason: None,
        message: format!("removed access the grant no longer owns (the grant is gone): {what}")
            .chars()
            .take(MESSAGE_MAX)
            .collect(),
        requested_by: None,
        break_glass: false,
        ticket: None,
        target: None,
    }
}

/// The request body in a sink's format.
pub fn body(n: &Notification, format: Format) -> Value {
    match format {
        Format::Json => serde_json::to_value(n).unwrap_or(Value::Null),
        Format::Slack => slack(n),
        Format::Teams => teams(n),
    }
}

fn title(n: &Notification) -> String {
    format!(
        "AccessGrant {}: {}/{}",
        n.event.as_str(),
        n.namespace,
        n.name
    )
}

/// (label, value) pairs shown as fields or facts.
fn facts(n: &Notification) -> Vec<(&'static str, String)> {
    let mut f = vec![("Kind", n.kind.to_string())];
    if let Some(t) = &n.target {
        f.push(("Target", t.clone()));
    }
    if let Some(p) = n.phase {
        let reason = n
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        f.push(("Phase", format!("{p:?}{reason}")));
    }
    if let Some(r) = &n.requested_by {
        f.push(("Requested by", r.clone()));
    }
    if n.break_glass {
        f.push(("Break-glass", "yes".into()));
    }
    if let Some(t) = &n.ticket {
        f.push(("Ticket", t.clone()));
    }
    f
}

/// Slack's three control characters (<https://api.slack.com/reference/surfaces/formatting#escaping>):
/// a justification cannot turn into `<!channel>` or a link.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A Slack incoming-webhook message: `text` (the notification's fallback) and Block Kit
/// `blocks` (header max 150 characters, section text max 3000, at most 10 fields).
fn slack(n: &Notification) -> Value {
    let title = slack_escape(&title(n));
    let message = slack_escape(&n.message);
    let fields: Vec<Value> = facts(n)
        .into_iter()
        .take(10)
        .map(|(k, v)| json!({"type": "mrkdwn", "text": cut(&format!("*{k}*\n{}", slack_escape(&v)), 2000)}))
        .collect();
    json!({
        "text": cut(&format!("{title}: {message}"), 3000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(&title, 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(&message, 3000)}, "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&format!("{} · event id {}", n.time.to_rfc3339(), slack_escape(&n.id)), 3000)}]},
        ],
    })
}

/// A Microsoft Teams incoming-webhook (or Workflows) message with one Adaptive Card.
fn teams(n: &Notification) -> Value {
    let facts: Vec<Value> = facts(n)
        .into_iter()
        .map(|(k, v)| json!({"title": k, "value": v}))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true, "text": title(n)},
                    {"type": "TextBlock", "wrap": true, "text": n.message},
                    {"type": "FactSet", "facts": facts},
                    {"type": "TextBlock", "isSubtle": true, "size": "Small", "wrap": true, "text": format!("{} · event id {}", n.time.to_rfc3339(), n.id)},
                ],
            },
        }],
    })
}

/// `X-AccessGrant-Signature`: `sha256=` and the lowercase hex HMAC-SHA256, under the sink's
/// key, of `<timestamp>.<body>` (the timestamp is `X-AccessGrant-Timestamp`, unix seconds), as
/// Slack and Stripe sign theirs: a receiver recomputes it and rejects old timestamps.
pub fn signature(key: &ring::hmac::Key, timestamp: i64, body: &[u8]) -> String {
    let mut msg = Vec::with_capacity(body.len() + 21);
    msg.extend_from_slice(timestamp.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    let tag = ring::hmac::sign(key, &msg);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_lowercase_hex() {
        // Cross-checked once with Python:
        //   hmac.new(b"notify-test-key-0123456789abcdef", b"1700000000." + body,
        //            hashlib.sha256).hexdigest()
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"notify-test-key-0123456789abcdef");
        let body = br#"{"event":"BreakGlass","name":"bg"}"#;
        assert_eq!(
            signature(&key, 1_700_000_000, body),
            "sha256=5e2fab5842a213d09ec2ee189bea444652634a8e02b14229aa171fa0b554d4ea"
        );
        assert_ne!(
            signature(&key, 1_700_000_001, body),
            signature(&key, 1_700_000_000, body),
            "the timestamp is signed"
        );
    }

    fn grant() -> AccessGrant {
        serde_json::from_value(json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
            "metadata": {"name": "bg", "namespace": "team-a", "uid": "u-1"},
            "spec": {"justification": "db <!channel> down", "duration": "PT30M", "breakGlass": true,
                "ticket": {"system": "ServiceNow", "number": "INC-7"},
                "pim": {"mode": "Activate", "scope": "/subscriptions/s", "roleDefinitionId": "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/r", "principalId": "p",
                    "identity": {"serviceAccountName": "deployer", "clientId": "c1d2", "tenantId": "t9"}}}
        }))
        .expect("grant")
    }

    fn entry(event: &str, secs: i64, detail: &str) -> HistoryEntry {
        HistoryEntry {
            time: DateTime::from_timestamp(secs, 0).expect("time"),
            event: event.into(),
            detail: detail.into(),
        }
    }

    fn status(history: Vec<HistoryEntry>) -> AccessGrantStatus {
        AccessGrantStatus {
            phase: Phase::Active,
            reason: Some("Granted".into()),
            requested_by: Some("alice@example.com".into()),
            summary: Some(crate::api::GrantSummary {
                kind: "PIM".into(),
                target: "Reader@rg1".into(),
            }),
            history,
            ..Default::default()
        }
    }

    #[test]
    fn only_new_notify_worthy_history_entries_become_notifications_with_stable_ids() {
        let g = grant();
        let before = status(vec![entry("Denied", 100, "PolicyDenied: no")]);
        let after = status(vec![
            entry("Denied", 100, "PolicyDenied: no"),
            entry(
                "BreakGlass",
                200,
                "BREAK-GLASS selfactivate requested by alice: db down",
            ),
            entry("Intent", 200, "selfactivate attempt 1 id x"),
            entry("Active", 201, "Granted: ok"),
        ]);
        let n = from_history(&g, &before, &after, None);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].event, EventKind::BreakGlass);
        assert_eq!(n[0].id, "u-1.200.BreakGlass");
        assert_eq!(n[0].ticket.as_deref(), Some("ServiceNow/INC-7"));
        assert_eq!(n[0].target.as_deref(), Some("Reader@rg1"));
        // Replay after a restart (a first pass that changes nothing): every entry since the
        // window's start, with the same ids.
        let replay = from_history(&g, &after, &after, DateTime::from_timestamp(150, 0));
        assert_eq!(replay, n);
        // A window of zero (`--notifications-replay none`) still sends what is new.
        let none = from_history(&g, &before, &after, DateTime::from_timestamp(10_000, 0));
        assert_eq!(none, n);
        let all = from_history(&g, &after, &after, DateTime::from_timestamp(0, 0));
        assert_eq!(
            all.iter().map(|n| n.event).collect::<Vec<_>>(),
            [EventKind::Denied, EventKind::BreakGlass]
        );
    }

    #[test]
    fn payloads_carry_no_spec_and_slack_and_teams_have_their_shapes() {
        let g = grant();
        let after = status(vec![entry(
            "RevocationFailing",
            300,
            "taking the access away failed (503); retrying",
        )]);
        let n = from_history(&g, &AccessGrantStatus::default(), &after, None).remove(0);
        for format in [Format::Json, Format::Slack, Format::Teams] {
            let text = body(&n, format).to_string();
            for leak in [
                "deployer",
                "principalId",
                "roleDefinitions",
                "justification",
                "spec",
            ] {
                assert!(!text.contains(leak), "{format:?} carries {leak:?}: {text}");
            }
        }
        let j = body(&n, Format::Json);
        assert_eq!(j["event"], "RevocationFailing");
        assert_eq!(j["kind"], "PIM");
        assert_eq!(j["phase"], "Active");
        assert_eq!(j["requestedBy"], "alice@example.com");
        assert_eq!(j["breakGlass"], true);
        let s = body(&n, Format::Slack);
        assert!(
            s["text"]
                .as_str()
                .is_some_and(|t| t.contains("RevocationFailing"))
        );
        assert_eq!(s["blocks"][0]["type"], "header");
        assert_eq!(s["blocks"][1]["type"], "section");
        let t = body(&n, Format::Teams);
        assert_eq!(t["type"], "message");
        assert_eq!(
            t["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(t["attachments"][0]["content"]["type"], "AdaptiveCard");
    }

    #[test]
    fn slack_text_cannot_mention_a_channel() {
        let mut n = orphan_removed(
            "ns",
            "g",
            "JIT",
            "x",
            DateTime::from_timestamp(1, 0).expect("t"),
        );
        n.message = "ping <!channel> & <https://evil|click>".into();
        let s = body(&n, Format::Slack).to_string();
        assert!(!s.contains("<!channel>") && !s.contains("<https"), "{s}");
        assert!(s.contains("&lt;!channel&gt; &amp;"), "{s}");
    }
}
