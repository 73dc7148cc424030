//! Notifications: signed webhook POSTs on chosen events (break-glass, denied, failed, a
//! revocation failing, an orphan removed), to sinks named in a YAML file (`--notifications`).
//!
//! - **Never in the way.** [`Notifier::notify`] only puts the event in each sink's bounded
//!   queue (`try_send`); a full queue drops it with a warning and
//!   `accessgrant_notifications_total{outcome="dropped"}`. One delivery task per sink sends,
//!   retrying with exponential backoff (1 s, 2 s, 4 s .. 60 s, Retry-After honoured) for up to
//!   the sink's `retryFor` (PT1H), then gives up loudly (warning, `outcome="dropped"`).
//! - **At least once, from status history.** Every event but `OrphanRemoved` is an entry of the
//!   grant's `status.history`, written before the notification is queued. The first status this
//!   process sees of each grant (every grant is reconciled after a start) queues the
//!   notify-worthy entries of the last `--notifications-replay` (PT1H) again: what a crash or a
//!   restart cut off is sent by the next leader. Duplicates are therefore possible (after every
//!   restart, within the window) and carry the same `X-AccessGrant-Event-Id`. `OrphanRemoved`
//!   (its grant is gone) is sent from memory only; at shutdown, after a short grace, whatever
//!   is still undelivered is logged and counted as dropped. Only the leader runs the controller, so only it sends.
//! - **Signed.** `X-AccessGrant-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`
//!   with `X-AccessGrant-Timestamp` (unix seconds) and `X-AccessGrant-Event-Id`, the key read
//!   from the sink's `secretFile` (a mounted Secret) at start-up. Neither the key nor the URL
//!   (a Slack or Teams URL is itself a secret) is ever logged; sinks are named by `name`.
//!
//! See docs/notifications.md.

pub mod payload;

pub use payload::Notification;

use crate::api::{AccessGrant, AccessGrantStatus, IsoDuration};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Notifications queued per sink before new ones are dropped.
const QUEUE: usize = 1024;
/// Deliveries in flight (retrying included) per sink.
const IN_FLIGHT: usize = 16;
/// First and longest wait between two tries.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// An event a sink may subscribe to. New kinds come with new features (`PendingApproval`
/// with approvals), hence non-exhaustive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A break-glass grant was requested from Azure.
    BreakGlass,
    /// A grant moved to phase Denied (AccessPolicy, or an approver).
    Denied,
    /// A grant moved to phase Failed.
    Failed,
    /// Taking a grant's access away failed and is being retried (once per failure streak).
    RevocationFailing,
    /// The orphan sweep removed access whose grant is gone.
    OrphanRemoved,
}

impl EventKind {
    /// The event's name (as in the configuration and the payload).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::BreakGlass => "BreakGlass",
            EventKind::Denied => "Denied",
            EventKind::Failed => "Failed",
            EventKind::RevocationFailing => "RevocationFailing",
            EventKind::OrphanRemoved => "OrphanRemoved",
        }
    }
}

/// A sink's body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The [`Notification`] as JSON.
    Json,
    /// A Slack incoming-webhook message (`text` and Block Kit `blocks`).
    Slack,
    /// A Microsoft Teams incoming-webhook message with an Adaptive Card.
    Teams,
}

/// The file `--notifications` names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    sinks: Vec<SinkFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SinkFile {
    name: String,
    url: String,
    format: Format,
    events: Vec<EventKind>,
    secret_file: PathBuf,
    #[serde(default)]
    timeout: Option<IsoDuration>,
    #[serde(default)]
    retry_for: Option<IsoDuration>,
}

/// One webhook.
#[derive(Clone)]
pub struct Sink {
    /// Name (metric label and logs; the URL is never logged).
    pub name: String,
    url: url::Url,
    /// Body format.
    pub format: Format,
    /// Events sent to it.
    pub events: Vec<EventKind>,
    key: ring::hmac::Key,
    /// One request's timeout.
    pub timeout: Duration,
    /// How long a notification is retried before it is dropped.
    pub retry_for: Duration,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The parsed `--notifications` file.
#[derive(Clone, Debug)]
pub struct Config {
    /// The sinks.
    pub sinks: Vec<Sink>,
}

/// A positive ISO 8601 duration of at most `max`, or `default`.
fn duration_field(
    v: Option<&IsoDuration>,
    default: Duration,
    max: Duration,
    what: &str,
) -> Result<Duration, String> {
    let Some(v) = v else {
        return Ok(default);
    };
    let d = v
        .parse()
        .map_err(|e| format!("{what} {v:?} {e}"))?
        .to_std()
        .map_err(|_| format!("{what} must be longer than zero"))?;
    if d.is_zero() || d > max {
        return Err(format!(
            "{what} must be longer than zero and at most {max:?}"
        ));
    }
    Ok(d)
}

impl Config {
    /// Reads and checks the file and every sink's key: a bad file stops the operator at start.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text, &|p| std::fs::read(p).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the YAML; `read_key` reads a `secretFile`.
    pub fn parse(
        text: &str,
        read_key: &dyn Fn(&Path) -> Result<Vec<u8>, String>,
    ) -> Result<Self, String> {
        let file: File = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let mut sinks: Vec<Sink> = vec![];
        for s in file.sinks {
            let name = s.name;
            let ok_name = (1..=63).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok_name {
                return Err(format!(
                    "sink name {name:?}: 1 to 63 lower-case letters, digits and '-'"
                ));
            }
            let at = |e: String| format!("sink {name}: {e}");
            if sinks.iter().any(|o| o.name == name) {
                return Err(at("the name is used twice".into()));
            }
            // The URL is not repeated in an error: a Slack or Teams URL carries its token.
            let url = url::Url::parse(&s.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| at("url must be an absolute http(s)://host/... URL".into()))?;
            if s.events.is_empty() {
                return Err(at("events is empty".into()));
            }
            let key = read_key(&s.secret_file)
                .map_err(|e| at(format!("secretFile {}: {e}", s.secret_file.display())))?;
            if key.len() < 16 {
                return Err(at(format!(
                    "secretFile {} holds {} bytes; the HMAC key needs at least 16",
                    s.secret_file.display(),
                    key.len()
                )));
            }
            let timeout = duration_field(
                s.timeout.as_ref(),
                Duration::from_secs(5),
                Duration::from_secs(300),
                "timeout",
            )
            .map_err(at)?;
            let retry_for = duration_field(
                s.retry_for.as_ref(),
                Duration::from_secs(3600),
                Duration::from_secs(7 * 86400),
                "retryFor",
            )
            .map_err(at)?;
            let mut events = s.events;
            events.sort();
            events.dedup();
            sinks.push(Sink {
                name,
                url,
                format: s.format,
                events,
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
                timeout,
                retry_for,
            });
        }
        Ok(Self { sinks })
    }
}

/// The handle the controller notifies through (cheap to clone; a no-op when off).
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.as_ref().map_or(0, |i| i.sinks.len());
        write!(f, "Notifier({n} sinks)")
    }
}

struct Inner {
    sinks: Vec<SinkQueue>,
    metrics: crate::telemetry::Metrics,
    replay: chrono::Duration,
    /// Grants whose status this process has seen (their history was replayed once).
    seen: std::sync::Mutex<HashSet<String>>,
}

struct SinkQueue {
    sink: Arc<Sink>,
    tx: mpsc::Sender<Arc<Notification>>,
    /// Queued or being delivered.
    pending: Arc<AtomicUsize>,
}

impl Notifier {
    /// No sinks: every call is a no-op.
    pub fn off() -> Self {
        Self::default()
    }

    /// Starts one delivery task per sink (on the current runtime). `replay`: how far back the
    /// history of a grant seen for the first time is sent again.
    pub fn start(
        cfg: &Config,
        metrics: crate::telemetry::Metrics,
        replay: chrono::Duration,
    ) -> Result<Self, String> {
        if cfg.sinks.is_empty() {
            return Ok(Self::off());
        }
        let http = http_client()?;
        let mut sinks = vec![];
        for s in &cfg.sinks {
            let sink = Arc::new(s.clone());
            for outcome in ["delivered", "retried", "dropped"] {
                metrics.notifications(&sink.name, outcome, 0);
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let pending = Arc::new(AtomicUsize::new(0));
            tokio::spawn(deliver_all(
                sink.clone(),
                rx,
                http.clone(),
                metrics.clone(),
                pending.clone(),
            ));
            sinks.push(SinkQueue { sink, tx, pending });
        }
        tracing::info!(
            sinks = %cfg.sinks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            "notifications on"
        );
        Ok(Self {
            inner: Some(Arc::new(Inner {
                sinks,
                metrics,
                replay,
                seen: Default::default(),
            })),
        })
    }

    /// Queues `n` for every sink that wants its event; never waits.
    pub fn notify(&self, n: Notification) {
        let Some(inner) = &self.inner else {
            return;
        };
        let n = Arc::new(n);
        for q in &inner.sinks {
            if !q.sink.events.contains(&n.event) {
                continue;
            }
            q.pending.fetch_add(1, Ordering::SeqCst);
            if q.tx.try_send(n.clone()).is_err() {
                q.pending.fetch_sub(1, Ordering::SeqCst);
                inner.metrics.notifications(&q.sink.name, "dropped", 1);
                tracing::warn!(sink = %q.sink.name, id = %n.id, event = n.event.as_str(), "notification dropped: the sink's queue is full");
            }
        }
    }

    /// A grant's status was written over `before`: notifications for the history entries it
    /// adds (and, the first time this process sees the grant, for those of the replay window).
    pub fn grant_status(
        &self,
        g: &AccessGrant,
        before: &AccessGrantStatus,
        after: &AccessGrantStatus,
        now: DateTime<Utc>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let uid = g.metadata.uid.clone().unwrap_or_default();
        let first = inner
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid);
        let since = first.then(|| now - inner.replay);
        for n in payload::from_history(g, before, after, since) {
            self.notify(n);
        }
    }

    /// The grant is gone (its finalizer released): forget that it was seen.
    pub fn forget(&self, uid: &str) {
        if let Some(inner) = &self.inner {
            inner
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
    }

    /// At shutdown: waits up to `grace` for what is queued or being retried, then says what is
    /// still undelivered, which this process loses (those from a grant's history are sent
    /// again by the next leader, see the module docs).
    pub async fn shutdown(&self, grace: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        let pending = || {
            inner
                .sinks
                .iter()
                .map(|q| q.pending.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        let until = tokio::time::Instant::now() + grace;
        while pending() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for q in &inner.sinks {
            let n = q.pending.load(Ordering::SeqCst);
            if n > 0 {
                inner
                    .metrics
                    .notifications(&q.sink.name, "dropped", n as u64);
                tracing::warn!(sink = %q.sink.name, undelivered = n, "stopping with notifications undelivered; those recorded in grant history are replayed by the next leader");
            }
        }
    }
}

/// A client that trusts the platform roots and never follows a redirect (a signed body goes
/// only where it was configured to go).
fn http_client() -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(4)
        .build()
        .map_err(|e| format!("notifications HTTP client: {e}"))
}

async fn deliver_all(
    sink: Arc<Sink>,
    mut rx: mpsc::Receiver<Arc<Notification>>,
    http: reqwest::Client,
    metrics: crate::telemetry::Metrics,
    pending: Arc<AtomicUsize>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(n) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (sink, http, metrics, pending) =
            (sink.clone(), http.clone(), metrics.clone(), pending.clone());
        tokio::spawn(async move {
            deliver(&sink, &http, &metrics, &n).await;
            pending.fetch_sub(1, Ordering::SeqCst);
            drop(slot);
        });
    }
}

/// What one try came to.
enum Try {
    Delivered,
    /// Not yet; the receiver may have asked for a wait (Retry-After).
    Again(String, Option<Duration>),
}

async fn post(sink: &Sink, http: &reqwest::Client, n: &Notification, body: &[u8]) -> Try {
    let ts = crate::clock::now().timestamp();
    let r = http
        .post(sink.url.clone())
        .timeout(sink.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-AccessGrant-Event-Id", n.id.as_str())
        .header("X-AccessGrant-Event", n.event.as_str())
        .header("X-AccessGrant-Timestamp", ts.to_string())
        .header(
            "X-AccessGrant-Signature",
            payload::signature(&sink.key, ts, body),
        )
        .body(body.to_vec())
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().is_success() => Try::Delivered,
        Ok(resp) => {
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(300)));
            Try::Again(format!("HTTP {}", resp.status().as_u16()), wait)
        }
        // Without the URL: a Slack or Teams URL carries its token.
        Err(e) => {
            let e = e.without_url();
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why.push_str(": ");
                why.push_str(&c.to_string());
                cause = c.source();
            }
            Try::Again(why, None)
        }
    }
}

async fn deliver(
    sink: &Sink,
    http: &reqwest::Client,
    metrics: &crate::telemetry::Metrics,
    n: &Notification,
) {
    let body = payload::body(n, sink.format).to_string().into_bytes();
    let started = tokio::time::Instant::now();
    let mut wait = BACKOFF_FIRST;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let why = match post(sink, http, n, &body).await {
            Try::Delivered => {
                metrics.notifications(&sink.name, "delivered", 1);
                tracing::info!(sink = %sink.name, id = %n.id, event = n.event.as_str(), tries, "notification delivered");
                return;
            }
            Try::Again(why, asked) => {
                if let Some(a) = asked {
                    wait = wait.max(a);
                }
                why
            }
        };
        if started.elapsed() + wait > sink.retry_for {
            metrics.notifications(&sink.name, "dropped", 1);
            tracing::warn!(sink = %sink.name, id = %n.id, event = n.event.as_str(), tries, error = %why, "notification dropped: not delivered within retryFor");
            return;
        }
        metrics.notifications(&sink.name, "retried", 1);
        tracing::info!(sink = %sink.name, id = %n.id, tries, error = %why, "notification not delivered; retrying in {}s", wait.as_secs());
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, String> {
        Config::parse(yaml, &|p| {
            if p == Path::new("/keys/short") {
                Ok(b"short".to_vec())
            } else if p == Path::new("/keys/ok") {
                Ok(b"0123456789abcdef0123456789abcdef".to_vec())
            } else {
                Err("No such file or directory".into())
            }
        })
    }

    const OK: &str = "sinks:\n- name: ops\n  url: https://hooks.example.com/x\n  format: slack\n  events: [BreakGlass, RevocationFailing, BreakGlass]\n  secretFile: /keys/ok\n";

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = parse(OK).expect("parses");
        assert_eq!(c.sinks.len(), 1);
        let s = &c.sinks[0];
        assert_eq!(s.name, "ops");
        assert_eq!(s.format, Format::Slack);
        assert_eq!(
            s.events,
            [EventKind::BreakGlass, EventKind::RevocationFailing]
        );
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.retry_for, Duration::from_secs(3600));
        assert!(
            !format!("{s:?}").contains("hooks.example.com"),
            "the URL is not in Debug"
        );
        let c = parse(&format!("{OK}  timeout: PT2S\n  retryFor: PT10M\n")).expect("parses");
        assert_eq!(c.sinks[0].timeout, Duration::from_secs(2));
        assert_eq!(c.sinks[0].retry_for, Duration::from_secs(600));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (yaml, says) in [
            (
                OK.replace("BreakGlass,", "PendingApprovals,"),
                "PendingApprovals",
            ),
            (format!("{OK}  colour: red\n"), "colour"),
            (OK.replace("format: slack", "format: xml"), "xml"),
            (
                OK.replace("/keys/ok", "/keys/none"),
                "secretFile /keys/none",
            ),
            (OK.replace("/keys/ok", "/keys/short"), "at least 16"),
            (OK.replace("name: ops", "name: Ops Team"), "sink name"),
            (OK.replace("https://hooks", "ftp://hooks"), "http(s)"),
            (
                OK.replace("[BreakGlass, RevocationFailing, BreakGlass]", "[]"),
                "events is empty",
            ),
            (format!("{OK}  timeout: 5s\n"), "timeout"),
            (format!("{OK}  timeout: PT0S\n"), "longer than zero"),
            (format!("{OK}{}", &OK["sinks:\n".len()..]), "used twice"),
            ("sinks:\n- name: a\n  format: json\n".to_string(), "url"),
        ] {
            let e = parse(&yaml).expect_err(&yaml);
            assert!(
                e.contains(says),
                "{yaml}\n=> {e}\n(expected it to mention {says:?})"
            );
        }
    }
}
