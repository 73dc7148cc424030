//! Load benchmark: the real operator binary against in-process kube-sim and azure-sim.
//!
//! Run: `cargo bench --bench load -- --grants 10000` (scenario `load`, the default), or
//! `cargo bench --bench load -- --scenario burst --grants 20000` (ARM throttling budgets).
//! `--help` lists every flag. Prints figures; asserts nothing about time.
//!
//! Scenario `load` (azure-sim throttling off, zero latency): a generated world with enough
//! subscriptions, JIT policies, VMs, PIM eligibilities and principals that every grant has its
//! own target; one AccessPolicy and one namespace per subscription; N grants (a third JIT, a
//! third PIM Activate, a third PIM Assign) created concurrently while the operator runs.
//! Reports time until every grant was Active, ARM reads/writes per grant in each phase (from
//! azure-sim's call log), expiry -> status Expired lag, delete -> Azure-accepted revoke lag on a
//! sample, the operator's RSS/peak RSS/CPU, and the CPU each simulator used.
//!
//! Scenario `burst` (azure-sim enforcing ARM's token buckets): N grants at once over a few
//! subscriptions; reports how much of ARM's write refill rate the operator used, 429s after the
//! first second, and whether revocations issued mid-burst overtake grants still waiting.
//!
//! The simulators run on their own tokio runtimes (threads named `kube-sim`, `azure-sim`), the
//! bench's own client work on `driver`, so per-thread CPU (/proc/self/task) says where time
//! went. The operator is a child process: /proc/<pid> gives its RSS, peak RSS and CPU.

use accessgrant_operator::api::{AccessGrant, AccessPolicy, Phase};

/// The simulators live in this process: with glibc's malloc about a third of kube-sim's CPU was
/// malloc/free (perf, BENCHMARKS.md); jemalloc, as in the operator, leaves more of the two cores
/// to what is measured.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use accessgrant_operator::clock;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accessgrant_sim::harness::{OPERATOR_APP, OPERATOR_OID, TENANT};
const OPERATOR_SECRET: &str = "bench-operator-secret";
/// Roles the operator is eligible for at every resource group (distinct Activate targets).
const ROLES: usize = 10;
/// Principals that AdminAssign grants name (distinct Assign targets).
const USERS: usize = 20;
/// VMs per JIT policy (each with ports 22 and 3389: one grant per VM and port).
const VMS_PER_POLICY: usize = 10;
const JIT_PORTS: [u16; 2] = [22, 3389];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- flags

/// Load benchmark of the operator binary against kube-sim and azure-sim (see benches/load.rs).
/// Prints figures; asserts nothing about time.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "load",
    about = "Load benchmark of the operator binary against kube-sim and azure-sim"
)]
struct Args {
    /// load: throttling off, N grants to Active, expiry, revoke sample. burst: azure-sim
    /// enforces ARM buckets; budget use, 429s, priority. restart: N grants Active, the operator
    /// restarted (SIGTERM, start): time to every grant reconciled, ARM calls after the restart,
    /// and a sample expiring after it (its timers were re-armed).
    #[arg(long, value_enum, default_value = "load")]
    scenario: Scenario,
    /// Grants to create.
    #[arg(long, default_value_t = 10_000, value_parser = positive)]
    grants: usize,
    /// Subscriptions in the world (load: N/200 rounded up, so each stays inside ARM's write
    /// burst; burst: 10).
    #[arg(long)]
    subscriptions: Option<usize>,
    /// load: duration of the expiring grants in seconds (default max(120, N/50)).
    #[arg(long)]
    expire_after: Option<u64>,
    /// load: durations spread over this many extra seconds.
    #[arg(long, default_value_t = 60)]
    expiry_spread: u64,
    /// Grants deleted to measure revoke lag (load: min(1000, N/10); burst: 100).
    #[arg(long)]
    revoke_sample: Option<usize>,
    /// burst: delete the sample this many seconds after the first create.
    #[arg(long, default_value_t = 30)]
    revoke_at: u64,
    /// load: send the deletes at R per second instead of all at once.
    #[arg(long)]
    revoke_rate: Option<f64>,
    /// Operator --concurrency (default: the operator's own).
    #[arg(long)]
    concurrency: Option<u16>,
    /// Concurrent creates/deletes by the bench.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    create_concurrency: usize,
    /// Operator binary (default: the one cargo built for this bench).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_accessgrant-operator"))]
    operator: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// kube-sim watch history (default max(100000, 8N)).
    #[arg(long)]
    watch_history: Option<usize>,
    /// Keep operator logs, world and kubeconfig in DIR.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Extra environment for the operator, K=V (repeatable), e.g. MALLOC_ARENA_MAX=2.
    #[arg(long, value_parser = key_value)]
    operator_env: Vec<(String, String)>,
    /// azure-sim answers every ARM call this many ms late, as Azure does in 100 ms to seconds;
    /// token requests are not delayed.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// And up to this many ms more, uniformly per call.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Passed by `cargo bench` to benches without the libtest harness.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Scenario {
    Load,
    Burst,
    Restart,
}

fn positive(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn key_value(v: &str) -> Result<(String, String), String> {
    v.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("K=V, not {v}"))
}

// ---------------------------------------------------------------- the generated world

fn guid(prefix: u32, n: usize) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}
fn sub_id(s: usize) -> String {
    guid(0xb000_0000, s + 1)
}
fn role_guid(r: usize) -> String {
    guid(0xb100_0000, r + 1)
}
fn user_oid(u: usize) -> String {
    guid(0xb200_0000, u + 1)
}
fn rg_scope(s: usize, rg: usize) -> String {
    format!("/subscriptions/{}/resourceGroups/rg-{rg}", sub_id(s))
}
fn role_id(s: usize, r: usize) -> String {
    format!(
        "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{}",
        sub_id(s),
        role_guid(r)
    )
}
fn vm_id(s: usize, rg: usize, v: usize) -> String {
    format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-{v}",
        rg_scope(s, rg)
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Jit,
    Activate,
    Assign,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Jit => "JIT",
            Kind::Activate => "PIM Activate",
            Kind::Assign => "PIM Assign",
        }
    }
}

/// Where grant `i` lands: subscription, kind and its own target (no two grants share one).
#[derive(Clone, Debug)]
struct Slot {
    sub: usize,
    kind: Kind,
    rg: usize,
    /// JIT: VM index; Activate/Assign: role index.
    a: usize,
    /// JIT: port; Assign: user index.
    b: usize,
}

struct Layout {
    subs: usize,
    rgs: usize,
}

impl Layout {
    fn new(grants: usize, subs: usize) -> Layout {
        let per_sub = grants.div_ceil(subs);
        let per_kind = per_sub.div_ceil(3);
        let jit_rgs = per_kind.div_ceil(VMS_PER_POLICY * JIT_PORTS.len());
        let act_rgs = per_kind.div_ceil(ROLES);
        Layout {
            subs,
            rgs: jit_rgs.max(act_rgs).max(1),
        }
    }

    fn slot(&self, i: usize) -> Slot {
        let sub = i % self.subs;
        let k = i / self.subs;
        let j = k / 3;
        match k % 3 {
            0 => {
                let per_rg = VMS_PER_POLICY * JIT_PORTS.len();
                let rg = j / per_rg;
                let r = j % per_rg;
                Slot {
                    sub,
                    kind: Kind::Jit,
                    rg,
                    a: r / JIT_PORTS.len(),
                    b: JIT_PORTS[r % JIT_PORTS.len()] as usize,
                }
            }
            1 => Slot {
                sub,
                kind: Kind::Activate,
                rg: j / ROLES,
                a: j % ROLES,
                b: 0,
            },
            _ => Slot {
                sub,
                kind: Kind::Assign,
                rg: j % self.rgs,
                a: (j / self.rgs) % ROLES,
                b: (j / (self.rgs * ROLES)) % USERS,
            },
        }
    }

    fn world(&self, throttle: bool) -> Result<accessgrant_sim::azure::World, BoxError> {
        let subs: Vec<String> = (0..self.subs).map(sub_id).collect();
        let mut principals = vec![json!({
            "objectId": OPERATOR_OID, "type": "ServicePrincipal", "displayName": "accessgrant-operator",
            "appId": OPERATOR_APP, "clientSecret": OPERATOR_SECRET,
            "adminScopes": subs.iter().map(|s| format!("/subscriptions/{s}")).collect::<Vec<_>>(),
        })];
        for u in 0..USERS {
            principals.push(json!({"objectId": user_oid(u), "type": "User", "displayName": format!("user {u}"), "email": format!("user{u}@bench.example")}));
        }
        let mut subscriptions = Vec::new();
        let mut vms = Vec::new();
        let mut jit = Vec::new();
        let mut elig = Vec::new();
        for s in 0..self.subs {
            let rgs: Vec<Value> = (0..self.rgs)
                .map(|rg| json!({"name": format!("rg-{rg}"), "location": "westeurope"}))
                .collect();
            subscriptions.push(json!({"id": sub_id(s), "displayName": format!("bench {s}"), "resourceGroups": rgs}));
            for rg in 0..self.rgs {
                let mut pvms = Vec::new();
                for v in 0..VMS_PER_POLICY {
                    vms.push(json!({"id": vm_id(s, rg, v), "location": "westeurope"}));
                    let ports: Vec<Value> = JIT_PORTS.iter().map(|p| json!({"number": p, "protocol": "TCP", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT3H"})).collect();
                    pvms.push(json!({"id": vm_id(s, rg, v), "ports": ports}));
                }
                jit.push(json!({"subscriptionId": sub_id(s), "resourceGroup": format!("rg-{rg}"), "location": "westeurope", "name": "default", "kind": "Basic", "properties": {"virtualMachines": pvms}}));
                for r in 0..ROLES {
                    elig.push(json!({"scope": rg_scope(s, rg), "roleDefinitionId": role_guid(r), "principalId": OPERATOR_OID}));
                }
            }
        }
        let roles: Vec<Value> = (0..ROLES)
            .map(|r| json!({"id": role_guid(r), "roleName": format!("Bench Role {r}")}))
            .collect();
        let mut settings = json!({"deactivationFloor": "PT1S"});
        if !throttle {
            settings["throttle"] = json!({"enabled": false});
        }
        let world = json!({
            "tenants": [{"id": TENANT, "displayName": "Bench", "domains": ["bench.onmicrosoft.com"]}],
            "principals": principals,
            "subscriptions": subscriptions,
            "virtualMachines": vms,
            "jitPolicies": jit,
            "roleDefinitions": roles,
            "eligibilities": elig,
            "settings": settings,
        });
        Ok(accessgrant_sim::azure::World::from_yaml_str(
            &serde_norway::to_string(&world)?,
        )?)
    }

    fn policy(&self, s: usize) -> Result<AccessPolicy, serde_json::Error> {
        let mut principals = vec![OPERATOR_OID.to_string()];
        principals.extend((0..USERS).map(user_oid));
        serde_json::from_value(json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": format!("bench-s{s}")},
            "spec": {
                "namespaceSelector": {"matchLabels": {"bench-team": format!("s{s}")}},
                "jit": {"virtualMachines": [format!("/subscriptions/{}/resourceGroups/*/providers/Microsoft.Compute/virtualMachines/*", sub_id(s))],
                        "ports": JIT_PORTS, "sourcePrefixes": ["10.0.0.0/8"]},
                "pim": {"scopes": [format!("/subscriptions/{}", sub_id(s))],
                        "roleDefinitionIds": (0..ROLES).map(|r| role_id(s, r)).collect::<Vec<_>>(),
                        "principals": principals, "modes": ["Activate", "Assign"]},
                "maxDuration": "PT8H"
            }
        }))
    }

    fn grant(&self, i: usize, duration_secs: u64) -> Result<AccessGrant, serde_json::Error> {
        let sl = self.slot(i);
        let target = match sl.kind {
            Kind::Jit => {
                json!({"jit": {"subscriptionId": sub_id(sl.sub), "resourceGroup": format!("rg-{}", sl.rg), "location": "westeurope", "policyName": "default",
                "virtualMachines": [{"id": vm_id(sl.sub, sl.rg, sl.a), "ports": [{"number": sl.b, "allowedSourceAddressPrefix": "10.1.2.3"}]}]}})
            }
            Kind::Activate => {
                json!({"pim": {"mode": "Activate", "scope": rg_scope(sl.sub, sl.rg), "roleDefinitionId": role_id(sl.sub, sl.a), "principalId": OPERATOR_OID}})
            }
            Kind::Assign => {
                json!({"pim": {"mode": "Assign", "scope": rg_scope(sl.sub, sl.rg), "roleDefinitionId": role_id(sl.sub, sl.a), "principalId": user_oid(sl.b)}})
            }
        };
        let mut spec =
            json!({"justification": "load benchmark", "duration": format!("PT{duration_secs}S")});
        if let (Some(s), Some(t)) = (spec.as_object_mut(), target.as_object()) {
            s.extend(t.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
            "metadata": {"name": format!("g{i}"), "namespace": namespace(sl.sub)},
            "spec": spec,
        }))
    }
}

fn namespace(s: usize) -> String {
    format!("bench-{s}")
}

// ---------------------------------------------------------------- process and thread stats

#[derive(Clone, Copy, Debug, Default)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_secs: f64,
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// utime + stime (clock ticks) from a /proc/.../stat line; `comm` may contain spaces.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // Fields after comm start at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn proc_stats(pid: u32, tck: f64) -> ProcStats {
    let mut st = ProcStats::default();
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in s.lines() {
            let kib = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                st.rss_kib = kib(line);
            } else if line.starts_with("VmHWM:") {
                st.hwm_kib = kib(line);
            }
        }
    }
    if let Some((_, t)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_ticks(&s))
    {
        st.cpu_secs = t as f64 / tck;
    }
    st
}

/// CPU seconds of this process's threads, by thread name (tokio runtimes name their threads).
fn thread_cpu(tck: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Ok(d) = std::fs::read_dir("/proc/self/task") {
        for e in d.flatten() {
            if let Some((comm, t)) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| stat_ticks(&s))
            {
                let name = match comm.as_str() {
                    c if c.starts_with("kube-sim") => "kube-sim",
                    c if c.starts_with("azure-sim") => "azure-sim",
                    c if c.starts_with("driver") => "bench driver",
                    _ => "other (main, blocking pools)",
                };
                *out.entry(name.to_string()).or_insert(0.0) += t as f64 / tck;
            }
        }
    }
    out
}

fn diff_cpu(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------- azure-sim call log

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
struct Call {
    time: String,
    caller: Option<String>,
    method: String,
    path: String,
    operation: String,
    status: u16,
    #[serde(default)]
    fault: Option<String>,
}

impl Call {
    fn at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
    fn is_arm(&self) -> bool {
        self.operation != "Token"
    }
    fn is_write(&self) -> bool {
        self.method != "GET" && self.method != "DELETE"
    }
}

/// azure-sim keeps the last 100,000 calls (dropping the oldest 10,000 at a time); this keeps
/// every call by reading the log often enough and joining the pages at the last call seen.
struct CallLog {
    http: reqwest::Client,
    url: String,
    all: Vec<Call>,
    /// Index in the sim's list of the last call we hold, and that call.
    last: Option<(usize, Call)>,
    gaps: usize,
}

impl CallLog {
    async fn sync(&mut self) -> Result<(), BoxError> {
        let page: Vec<Call> = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let start = match &self.last {
            None => 0,
            Some((idx, call)) => {
                let mut found = None;
                let mut k = *idx as i64;
                while k >= 0 {
                    if page.get(k as usize) == Some(call) {
                        found = Some(k as usize + 1);
                        break;
                    }
                    k -= 10_000;
                }
                match found {
                    Some(f) => f,
                    None => {
                        self.gaps += 1;
                        0
                    }
                }
            }
        };
        if let Some(tail) = page.get(start..) {
            self.all.extend_from_slice(tail);
        }
        if let Some(c) = page.last() {
            self.last = Some((page.len() - 1, c.clone()));
        }
        Ok(())
    }
}

#[derive(Default, Debug, Clone)]
struct CallCounts {
    reads: usize,
    writes: usize,
    deletes: usize,
    token: usize,
    errors: usize,
    throttled: usize,
    by_op: BTreeMap<String, usize>,
}

fn count_calls<'a>(calls: impl Iterator<Item = &'a Call>) -> CallCounts {
    let mut c = CallCounts::default();
    for call in calls {
        if !call.is_arm() {
            c.token += 1;
            continue;
        }
        match call.method.as_str() {
            "GET" => c.reads += 1,
            "DELETE" => c.deletes += 1,
            _ => c.writes += 1,
        }
        if call.status == 429 {
            c.throttled += 1;
        } else if call.status >= 400 || call.status == 0 {
            c.errors += 1;
        }
        *c.by_op.entry(call.operation.clone()).or_insert(0) += 1;
    }
    c
}

fn in_window(c: &Call, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    c.at().is_some_and(|t| t > from && t <= to)
}

fn print_counts(label: &str, c: &CallCounts, per: usize) {
    let per_f = per.max(1) as f64;
    println!(
        "  {label}: {:.2} reads + {:.2} writes (+{:.2} deletes) per grant over {per} grants  [{} reads, {} writes, {} 429s, {} other errors, {} token requests]",
        c.reads as f64 / per_f,
        c.writes as f64 / per_f,
        c.deletes as f64 / per_f,
        c.reads,
        c.writes,
        c.throttled,
        c.errors,
        c.token
    );
    let ops: Vec<String> = c
        .by_op
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / per_f))
        .collect();
    println!("      by operation, per grant: {}", ops.join(", "));
}

// ---------------------------------------------------------------- what the watch saw

#[derive(Clone, Debug, Default)]
struct Track {
    kind: Option<Kind>,
    sub: usize,
    /// In the revoke sample (long-lived, deleted later).
    delete_planned: bool,
    create_sent: Option<DateTime<Utc>>,
    uid: Option<String>,
    phase: Option<Phase>,
    active_seen: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    expired_seen: Option<DateTime<Utc>>,
    /// The operator's own timestamp of the Expired transition (whole seconds).
    expired_recorded: Option<DateTime<Utc>>,
    failed: Option<String>,
    /// The last status seen: reason, message, retry.
    last_message: Option<String>,
    delete_sent: Option<DateTime<Utc>>,
    gone_seen: Option<DateTime<Utc>>,
}

type Tracks = Arc<Mutex<HashMap<String, Track>>>;

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn lock(t: &Tracks) -> std::sync::MutexGuard<'_, HashMap<String, Track>> {
    match t.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn observe(tracks: &Tracks, g: &AccessGrant, now: DateTime<Utc>) {
    let (Some(ns), Some(name)) = (g.metadata.namespace.as_deref(), g.metadata.name.as_deref())
    else {
        return;
    };
    let mut map = lock(tracks);
    let t = map.entry(key(ns, name)).or_default();
    t.uid = g.metadata.uid.clone();
    let Some(st) = g.status.as_ref() else {
        return;
    };
    t.phase = Some(st.phase);
    t.last_message = Some(format!(
        "{} {} retry={:?} intent={:?}",
        st.reason.clone().unwrap_or_default(),
        st.message.clone().unwrap_or_default(),
        st.retry.as_ref().map(|r| (r.failures, r.not_before)),
        st.intent.as_ref().map(|i| i.operation)
    ));
    if st.end_time.is_some() {
        t.end_time = st.end_time;
    }
    let reached_active = matches!(st.phase, Phase::Active | Phase::Renewing)
        || (st.phase == Phase::Expired && st.start_time.is_some())
        || st.history.iter().any(|h| h.event == "Active");
    if reached_active && t.active_seen.is_none() {
        t.active_seen = Some(now);
    }
    if st.phase == Phase::Expired && t.expired_seen.is_none() {
        t.expired_seen = Some(now);
        t.expired_recorded = st
            .history
            .iter()
            .rev()
            .find(|h| h.event == "Expired")
            .map(|h| h.time);
    }
    if matches!(st.phase, Phase::Failed | Phase::Denied) && t.failed.is_none() {
        t.failed = Some(format!(
            "{:?} {}: {}",
            st.phase,
            st.reason.clone().unwrap_or_default(),
            st.message.clone().unwrap_or_default()
        ));
    }
}

fn spawn_watch(client: kube::Client, tracks: Tracks) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<AccessGrant> = Api::all(client);
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = stream.next().await {
            let now = clock::now();
            match ev {
                Ok(watcher::Event::Apply(g)) | Ok(watcher::Event::InitApply(g)) => {
                    observe(&tracks, &g, now)
                }
                Ok(watcher::Event::Delete(g)) => {
                    if let (Some(ns), Some(name)) =
                        (g.metadata.namespace.as_deref(), g.metadata.name.as_deref())
                    {
                        let mut map = lock(&tracks);
                        let t = map.entry(key(ns, name)).or_default();
                        if t.gone_seen.is_none() {
                            t.gone_seen = Some(now);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("bench watch: {e}"),
            }
        }
    })
}

/// Polls `done` every 200 ms until it holds or `limit` passes; returns whether it held.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> (bool, String)) -> bool {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (ok, progress) = done();
        if ok {
            return true;
        }
        if start.elapsed() > limit {
            println!(
                "  !! gave up waiting for {what} after {:.0}s: {progress}",
                limit.as_secs_f64()
            );
            return false;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  … {what}: {progress} ({:.0}s)",
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn summary(label: &str, mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return format!("{label}: no samples");
    }
    let n = v.len();
    let p50 = percentile(&mut v, 50.0);
    let p99 = percentile(&mut v, 99.0);
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    format!("{label}: p50 {p50:.2}s  p99 {p99:.2}s  min {min:.2}s  max {max:.2}s  (n={n})")
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

// ---------------------------------------------------------------- the environment

struct Bench {
    args: Args,
    layout: Layout,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    _kube: accessgrant_sim::kube::RunningSim,
    azure: accessgrant_sim::azure::RunningSim,
    client: kube::Client,
    http: reqwest::Client,
    operator: Option<Child>,
    admin: std::net::SocketAddr,
    tck: f64,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Never leave the operator running behind a bench that failed or was interrupted.
        if let Some(mut c) = self.operator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Bench {
    fn spawn_operator(&mut self) -> Result<(), BoxError> {
        let ca = self.dir.join("azure-ca.pem");
        std::fs::write(&ca, self.azure.ca_pem())?;
        let out = std::fs::File::create(self.dir.join("operator.out"))?;
        let err = std::fs::File::create(self.dir.join("operator.err"))?;
        let kubeconfig = self.dir.join("kubeconfig");
        let azure_url = self.azure.base_url();
        let mut cmd = accessgrant_sim::harness::operator_command(
            &self.args.operator,
            &accessgrant_sim::harness::OperatorSetup {
                kubeconfig: &kubeconfig,
                azure_url: &azure_url,
                azure_ca: &ca,
                client_secret: OPERATOR_SECRET,
                admin: self.admin,
                // No webhook is registered in the bench; a fixed port could collide with
                // another run on the machine.
                webhook: "127.0.0.1:0",
                // The bench world has no operator namespace: its Secrets go to `default`.
                namespace: "default",
            },
        );
        // azure-sim's floor is PT1S in the bench world; the operator must agree.
        cmd.env("PIM_DEACTIVATION_FLOOR", "PT1S")
            .env_remove("RUST_LOG")
            .stdout(out)
            .stderr(err);
        if let Some(c) = self.args.concurrency {
            cmd.env("CONCURRENCY", c.to_string());
        }
        for (k, v) in &self.args.operator_env {
            cmd.env(k, v);
        }
        self.operator = Some(cmd.spawn()?);
        Ok(())
    }

    fn operator_pid(&self) -> u32 {
        self.operator.as_ref().map_or(0, Child::id)
    }

    async fn wait_ready(&self) -> bool {
        accessgrant_sim::harness::wait_ready(self.admin, Duration::from_secs(120)).await
    }

    async fn metrics(&self) -> String {
        accessgrant_sim::harness::metrics(self.admin).await
    }

    async fn stop_operator(&mut self) {
        if let Some(mut c) = self.operator.take() {
            let pid = c.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let waited = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::task::spawn_blocking(move || c.wait()),
            )
            .await;
            if !matches!(waited, Ok(Ok(Ok(_)))) {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    }

    async fn setup_kube(&self) -> Result<(), BoxError> {
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        let pol_api: Api<AccessPolicy> = Api::all(self.client.clone());
        for s in 0..self.layout.subs {
            let ns: Namespace = serde_json::from_value(
                json!({"metadata": {"name": namespace(s), "labels": {"bench-team": format!("s{s}")}}}),
            )?;
            ns_api.create(&PostParams::default(), &ns).await?;
            pol_api
                .create(&PostParams::default(), &self.layout.policy(s)?)
                .await?;
        }
        Ok(())
    }

    /// Creates grants concurrently; records the send time of each.
    async fn create(
        &self,
        ids: &[usize],
        duration: impl Fn(usize) -> u64,
        long_lived: impl Fn(usize) -> bool + Copy,
        tracks: &Tracks,
    ) -> Result<(), BoxError> {
        let jobs: Vec<(usize, AccessGrant)> = ids
            .iter()
            .map(|&i| Ok((i, self.layout.grant(i, duration(i))?)))
            .collect::<Result<_, serde_json::Error>>()?;
        futures::stream::iter(jobs)
            .map(|(i, g)| {
                let client = self.client.clone();
                let tracks = tracks.clone();
                let slot = self.layout.slot(i);
                async move {
                    let ns = namespace(slot.sub);
                    let api: Api<AccessGrant> = Api::namespaced(client, &ns);
                    {
                        let mut map = lock(&tracks);
                        let t = map.entry(key(&ns, &format!("g{i}"))).or_default();
                        t.kind = Some(slot.kind);
                        t.sub = slot.sub;
                        t.delete_planned = long_lived(i);
                        t.create_sent = Some(clock::now());
                    }
                    api.create(&PostParams::default(), &g).await.map(|_| ())
                }
            })
            .buffer_unordered(self.args.create_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Deletes grants concurrently, or paced at `rate` per second; records the send time of
    /// each (revocation is due then).
    async fn delete(
        &self,
        keys: &[String],
        rate: Option<f64>,
        tracks: &Tracks,
    ) -> Result<(), BoxError> {
        let start = tokio::time::Instant::now();
        futures::stream::iter(keys.iter().cloned().enumerate())
            .map(|(i, k)| {
                let client = self.client.clone();
                let tracks = tracks.clone();
                async move {
                    if let Some(r) = rate.filter(|r| *r > 0.0) {
                        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / r))
                            .await;
                    }
                    let (ns, name) = k.split_once('/').unwrap_or(("", ""));
                    let api: Api<AccessGrant> = Api::namespaced(client, ns);
                    lock(&tracks).entry(k.clone()).or_default().delete_sent = Some(clock::now());
                    api.delete(name, &DeleteParams::default()).await.map(|_| ())
                }
            })
            .buffer_unordered(self.args.create_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn sim_state(&self) -> Result<Value, BoxError> {
        Ok(self
            .http
            .get(format!("{}/_sim/state", self.azure.base_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    fn call_log(&self) -> CallLog {
        CallLog {
            http: self.http.clone(),
            url: format!("{}/_sim/calls", self.azure.base_url()),
            all: Vec::new(),
            last: None,
            gaps: 0,
        }
    }
}

/// When Azure accepted each grant's revocation: the removal request's `createdOn` (PIM) or
/// the closing JIT request's `startTimeUtc`, both stamped by azure-sim, keyed `ns/name`.
fn revocations_accepted(state: &Value) -> HashMap<String, DateTime<Utc>> {
    let mut out: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut put = |k: String, t: DateTime<Utc>| {
        out.entry(k)
            .and_modify(|e| {
                if t < *e {
                    *e = t
                }
            })
            .or_insert(t);
    };
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    // "accessgrant ns/name: ..." -> "ns/name"
    let who = |j: &str| {
        j.strip_prefix("accessgrant ")
            .and_then(|r| r.split_once(':'))
            .map(|(k, _)| k.to_string())
    };
    for r in state["roleAssignmentScheduleRequests"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let p = &r["properties"];
        let t = p["requestType"].as_str().unwrap_or_default();
        if (t == "SelfDeactivate" || t == "AdminRemove")
            && p["status"] == "Revoked"
            && let (Some(k), Some(at)) = (
                p["justification"].as_str().and_then(who),
                parse(&p["createdOn"]),
            )
        {
            put(k, at);
        }
    }
    for pol in state["jitPolicies"].as_array().into_iter().flatten() {
        for r in pol["properties"]["requests"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let j = r["justification"].as_str().unwrap_or_default();
            if j.contains("closing early")
                && let (Some(k), Some(at)) = (who(j), parse(&r["startTimeUtc"]))
            {
                put(k, at);
            }
        }
    }
    out
}

fn print_machine() {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "machine: nproc {}, RAM {}, kernel {}, {}",
        sh("nproc"),
        sh("free -h | awk '/^Mem:/ {print $2}'"),
        sh("uname -r"),
        sh("rustc --version")
    );
}

/// The operator's time spent waiting on its own ARM token buckets (summed over calls).
fn throttle_line(secs: f64) -> String {
    format!("operator's ARM calls waiting on client-side token buckets: {secs:.1}s in total")
}

fn print_cpu(label: &str, d: &BTreeMap<String, f64>, operator_cpu: f64, wall: f64) {
    let mut parts = vec![format!("operator {operator_cpu:.1}s")];
    parts.extend(d.iter().map(|(k, v)| format!("{k} {v:.1}s")));
    println!(
        "  CPU during {label} ({wall:.1}s wall, 2 cores = {:.1} core-s): {}",
        wall * 2.0,
        parts.join(", ")
    );
}

// ---------------------------------------------------------------- main

fn main() {
    let args = <Args as clap::Parser>::parse();
    let build = |name: &str, threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let (kube_rt, azure_rt, driver_rt) = match (
        build("kube-sim", 2),
        build("azure-sim", 2),
        build("driver", 2),
    ) {
        (Ok(k), Ok(a), Ok(d)) => (k, a, d),
        _ => {
            eprintln!("load bench: cannot build tokio runtimes");
            std::process::exit(1);
        }
    };
    let code = match driver_rt.block_on(run(args, &kube_rt, &azure_rt)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("load bench failed: {e}");
            1
        }
    };
    // The simulators' tasks live on their runtimes; dropping those stops them.
    drop(driver_rt);
    kube_rt.shutdown_timeout(Duration::from_secs(2));
    azure_rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(
    args: Args,
    kube_rt: &tokio::runtime::Runtime,
    azure_rt: &tokio::runtime::Runtime,
) -> Result<(), BoxError> {
    accessgrant_sim::azure::install_crypto_provider();
    let n = args.grants;
    let subs = args.subscriptions.unwrap_or(match args.scenario {
        Scenario::Load | Scenario::Restart => n.div_ceil(200),
        Scenario::Burst => 10,
    });
    let layout = Layout::new(n, subs.max(1));
    let (tmp, dir) = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    print_machine();
    println!(
        "scenario {:?}: {n} grants over {} subscriptions ({} resource groups each), {} namespaces",
        args.scenario, layout.subs, layout.rgs, layout.subs
    );
    let world = layout.world(args.scenario == Scenario::Burst)?;
    if args.keep.is_some() {
        std::fs::write(dir.join("world.yaml"), serde_norway::to_string(&world)?)?;
    }
    let history = args.watch_history.unwrap_or((8 * n).max(100_000));
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let sims = accessgrant_sim::harness::Sims::start_on(
        kube_rt.handle(),
        azure_rt.handle(),
        accessgrant_sim::harness::SimsSetup {
            dir: dir.clone(),
            kube: accessgrant_sim::kube::SimConfig {
                crds_dir: Some(crds),
                watch_history: history,
                ..Default::default()
            },
            world,
            // The bench's operator acts as the admin (its world has no operator namespace).
            operator_identity: None,
            manifests: vec![],
        },
    )
    .await
    .map_err(|e| format!("simulators: {e:#}"))?;
    let (kube, azure) = (sims.kube, sims.azure);
    let client = kube
        .client()
        .await
        .map_err(|e| format!("kube client: {e}"))?;
    let http = accessgrant_operator::azure::client::http_client(
        Some(azure.ca_pem().as_bytes()),
        Duration::from_secs(120),
    )?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut b = Bench {
        args: args.clone(),
        layout,
        dir,
        _tmp: tmp,
        _kube: kube,
        azure,
        client,
        http,
        operator: None,
        admin,
        tck: clk_tck(),
    };
    b.setup_kube().await?;
    probe_latency(&b).await?;
    inject_latency(&b).await?;
    let result = match args.scenario {
        Scenario::Load => load(&mut b).await,
        Scenario::Burst => burst(&mut b).await,
        Scenario::Restart => restart(&mut b).await,
    };
    b.stop_operator().await;
    if args.keep.is_some() {
        println!("kept: {}", b.dir.display());
    }
    result
}

/// Makes azure-sim answer every ARM call `--latency-ms` (+ up to `--jitter-ms`) late.
async fn inject_latency(b: &Bench) -> Result<(), BoxError> {
    if b.args.latency_ms == 0 && b.args.jitter_ms == 0 {
        return Ok(());
    }
    b.http
        .post(format!("{}/_sim/faults", b.azure.base_url()))
        .json(&json!({
            "operation": "*",
            "kind": "latency",
            "latencyMs": b.args.latency_ms,
            "jitterMs": b.args.jitter_ms,
        }))
        .send()
        .await?
        .error_for_status()?;
    println!(
        "azure-sim latency: every ARM call {} ms{}",
        b.args.latency_ms,
        if b.args.jitter_ms > 0 {
            format!(" + 0..{} ms jitter", b.args.jitter_ms)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Round trips to both simulators from this process (idle, before the operator starts).
async fn probe_latency(b: &Bench) -> Result<(), BoxError> {
    let ns_api: Api<Namespace> = Api::all(b.client.clone());
    let n = 20;
    let start = Instant::now();
    for _ in 0..n {
        ns_api.get(&namespace(0)).await?;
    }
    let kube_get = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let pol_api: Api<AccessPolicy> = Api::all(b.client.clone());
    let start = Instant::now();
    for _ in 0..n {
        let patch =
            json!({"metadata": {"annotations": {"bench/probe": format!("{:?}", Instant::now())}}});
        pol_api
            .patch(
                "bench-s0",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
    }
    let kube_patch = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let start = Instant::now();
    for _ in 0..n {
        b.http
            .get(format!("{}/_sim/health", b.azure.base_url()))
            .send()
            .await?
            .error_for_status()?;
    }
    let arm = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!(
        "idle round trips from the bench: kube-sim GET {kube_get:.2} ms, merge PATCH {kube_patch:.2} ms; azure-sim GET {arm:.2} ms"
    );
    Ok(())
}

/// The size of one Active grant as the API serves it, with and without managedFields.
async fn object_size(b: &Bench) {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        b.client.clone(),
        &namespace(0),
        &kube::api::ApiResource::erase::<AccessGrant>(&()),
    );
    let Ok(mut g) = api.get("g0").await else {
        return;
    };
    let full = serde_json::to_vec(&g).map_or(0, |v| v.len());
    g.metadata.managed_fields = None;
    let stripped = serde_json::to_vec(&g).map_or(0, |v| v.len());
    println!("  one Active grant as JSON: {full} bytes, {stripped} without managedFields");
}

/// Starts the operator, waits for readiness, returns its idle stats.
async fn start_operator(b: &mut Bench) -> Result<ProcStats, BoxError> {
    b.spawn_operator()?;
    if !b.wait_ready().await {
        return Err("the operator did not become ready within 120s".into());
    }
    // Let start-up allocations settle before taking the zero-grant baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(proc_stats(b.operator_pid(), b.tck))
}

async fn load(b: &mut Bench) -> Result<(), BoxError> {
    let n = b.args.grants;
    let deadline = Duration::from_secs(b.args.timeout);
    let run_start = Instant::now();
    let remaining = |s: &Instant| deadline.saturating_sub(s.elapsed());
    let expire_after = b.args.expire_after.unwrap_or((n as u64 / 50).max(120));
    let spread = b.args.expiry_spread;
    let sample = b
        .args
        .revoke_sample
        .unwrap_or((n / 10).clamp(1, 1000))
        .min(n);
    // Every (n/sample)-th grant lives an hour and is deleted later; the rest expire.
    let stride = (n / sample.max(1)).max(1);
    let revoke_ids: Vec<usize> = (0..n)
        .filter(|i| i.is_multiple_of(stride))
        .take(sample)
        .collect();
    let long_lived = move |i: usize| i.is_multiple_of(stride) && i / stride < sample;
    let duration = |i: usize| {
        if long_lived(i) {
            3600
        } else {
            expire_after + (i as u64 % spread.max(1))
        }
    };
    println!(
        "grants: {} expire after {expire_after}s..{}s, {} (PT1H) are deleted later to measure revoke lag",
        n - revoke_ids.len(),
        expire_after + spread.max(1) - 1,
        revoke_ids.len()
    );
    println!(
        "operator: {} --concurrency {}, azure-sim throttling off",
        b.args.operator.display(),
        b.args
            .concurrency
            .map_or("the operator default".to_string(), |c| c.to_string())
    );

    if !b.args.operator_env.is_empty() {
        println!("operator environment: {:?}", b.args.operator_env);
    }
    let idle = start_operator(b).await?;
    let idle_heap = metric(b, "accessgrant_heap_allocated_bytes").await;
    println!(
        "operator ready with 0 grants: RSS {:.1} MiB, heap {:.1} MiB, CPU {:.2}s",
        mib(idle.rss_kib),
        idle_heap / 1048576.0,
        idle.cpu_secs
    );

    let tracks: Tracks = Arc::new(Mutex::new(HashMap::new()));
    let watch = spawn_watch(b.client.clone(), tracks.clone());
    let mut log = b.call_log();
    log.sync().await?;
    let big_log = n > 12_000;

    // Phase A: create everything, wait until everything was Active.
    let tw0 = metric(b, "accessgrant_arm_throttle_wait_seconds_total").await;
    let cpu0 = thread_cpu(b.tck);
    let op0 = proc_stats(b.operator_pid(), b.tck);
    let t0 = clock::now();
    let wall0 = Instant::now();
    let ids: Vec<usize> = (0..n).collect();
    b.create(&ids, duration, long_lived, &tracks).await?;
    let created_in = wall0.elapsed().as_secs_f64();
    println!(
        "created {n} grants in {created_in:.1}s ({:.0}/s, {} concurrent creates)",
        n as f64 / created_in,
        b.args.create_concurrency
    );
    let mut last_sync = Instant::now();
    let all_active = wait_until(remaining(&run_start), "every grant Active", || {
        let map = lock(&tracks);
        let active = map.values().filter(|t| t.active_seen.is_some()).count();
        let failed = map.values().filter(|t| t.failed.is_some()).count();
        (
            active >= n,
            format!("{active}/{n} reached Active, {failed} failed"),
        )
    })
    .await;
    let t_active = lock(&tracks)
        .values()
        .filter_map(|t| t.active_seen)
        .max()
        .unwrap_or(t0);
    let wall_a = secs(t0, t_active);
    let cpu_a = diff_cpu(&cpu0, &thread_cpu(b.tck));
    let op_a = proc_stats(b.operator_pid(), b.tck);
    log.sync().await?;
    let _ = last_sync;

    {
        let map = lock(&tracks);
        let failed: Vec<&String> = map.values().filter_map(|t| t.failed.as_ref()).collect();
        if !failed.is_empty() {
            println!("  !! {} grants failed, e.g. {}", failed.len(), failed[0]);
        }
        let mut tta: Vec<f64> = Vec::new();
        let mut by_kind: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
        for t in map.values() {
            if let (Some(c), Some(a)) = (t.create_sent, t.active_seen) {
                tta.push(secs(c, a));
                if let Some(k) = t.kind {
                    by_kind.entry(k).or_default().push(secs(c, a));
                }
            }
        }
        println!("\n== time to Active");
        println!(
            "  all {} grants Active {:.1}s after the first create: {:.0} grants/s{}",
            tta.len(),
            wall_a,
            tta.len() as f64 / wall_a.max(0.001),
            if all_active { "" } else { " (INCOMPLETE)" }
        );
        println!("  {}", summary("create -> Active (seen by a watch)", tta));
        for (k, v) in by_kind {
            println!("    {}", summary(k.label(), v));
        }
    }
    print_cpu(
        "creation to all Active",
        &cpu_a,
        op_a.cpu_secs - op0.cpu_secs,
        wall_a,
    );
    let tw_a = metric(b, "accessgrant_arm_throttle_wait_seconds_total").await;
    println!("  {}", throttle_line(tw_a - tw0));
    // RSS with every grant cached (after a moment for in-flight work to finish).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full = proc_stats(b.operator_pid(), b.tck);
    println!(
        "  operator RSS with {n} grants cached: {:.1} MiB (idle 0 grants: {:.1} MiB) => ~{:.0} bytes per grant (estimate: (RSS at N - RSS at 0) / N; RSS includes allocator slack)",
        mib(full.rss_kib),
        mib(idle.rss_kib),
        (full.rss_kib.saturating_sub(idle.rss_kib) * 1024) as f64 / n as f64
    );
    let full_heap = metric(b, "accessgrant_heap_allocated_bytes").await;
    println!(
        "  operator heap with {n} grants cached: {:.1} MiB allocated (jemalloc stats) => {:.0} heap bytes per cached grant",
        full_heap / 1048576.0,
        (full_heap - idle_heap) / n as f64
    );
    object_size(b).await;
    let activation_calls: Vec<Call> = log
        .all
        .iter()
        .filter(|c| c.at().is_some_and(|t| t <= t_active))
        .cloned()
        .collect();

    // Phase E: natural expiry.
    let expiring = n - revoke_ids.len();
    let last_end = lock(&tracks)
        .values()
        .filter(|t| !t.delete_planned)
        .filter_map(|t| t.end_time)
        .max()
        .unwrap_or(t0);
    let cpu_e0 = thread_cpu(b.tck);
    let op_e0 = proc_stats(b.operator_pid(), b.tck);
    let until_last_end = secs(clock::now(), last_end).max(0.0);
    println!(
        "\n== expiry: waiting for {expiring} grants to expire (the last ends in {until_last_end:.0}s)"
    );
    last_sync = Instant::now();
    let expired_ok = {
        let limit = Duration::from_secs_f64(until_last_end + 120.0).min(remaining(&run_start));
        let start = Instant::now();
        let mut last_print = Instant::now();
        let mut ok = false;
        while start.elapsed() < limit {
            let (done, progress) = {
                let map = lock(&tracks);
                let e = map.values().filter(|t| t.expired_seen.is_some()).count();
                (e >= expiring, format!("{e}/{expiring} Expired"))
            };
            if done {
                ok = true;
                break;
            }
            if big_log && last_sync.elapsed() > Duration::from_secs(15) {
                log.sync().await?;
                last_sync = Instant::now();
            }
            if last_print.elapsed() > Duration::from_secs(15) {
                eprintln!("  … {progress}");
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !ok {
            let map = lock(&tracks);
            let stragglers: Vec<(&String, &Track)> = map
                .iter()
                .filter(|(_, t)| !t.delete_planned && t.expired_seen.is_none())
                .collect();
            println!(
                "  !! {} grants not seen Expired within the wait, e.g.:",
                stragglers.len()
            );
            for (k, t) in stragglers.iter().take(5) {
                println!(
                    "     {k}: phase {:?}, end {:?}, {}",
                    t.phase,
                    t.end_time,
                    t.failed.clone().unwrap_or_default()
                );
            }
        }
        ok
    };
    let t_expired = clock::now();
    let wall_e = secs(t_active, t_expired);
    let cpu_e = diff_cpu(&cpu_e0, &thread_cpu(b.tck));
    let op_e = proc_stats(b.operator_pid(), b.tck);
    log.sync().await?;
    {
        let map = lock(&tracks);
        let mut seen = Vec::new();
        let mut recorded = Vec::new();
        let mut by_kind: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
        let mut first_expiry = None::<DateTime<Utc>>;
        for t in map.values() {
            if let (Some(end), Some(s)) = (t.end_time, t.expired_seen) {
                seen.push(secs(end, s));
                if let Some(k) = t.kind {
                    by_kind.entry(k).or_default().push(secs(end, s));
                }
                first_expiry = Some(first_expiry.map_or(end, |f: DateTime<Utc>| f.min(end)));
            }
            if let (Some(end), Some(r)) = (t.end_time, t.expired_recorded) {
                recorded.push(secs(end, r));
            }
        }
        if first_expiry.is_some_and(|f| f < t_active) {
            println!(
                "  note: some grants ended before every grant was Active (windows overlap); raise --expire-after"
            );
        }
        println!(
            "  {}",
            summary(
                "end time -> status Expired seen by a watch (upper bound: includes watch delivery)",
                seen
            )
        );
        for (k, v) in by_kind {
            println!("    {}", summary(k.label(), v));
        }
        println!(
            "  {}",
            summary(
                "end time -> the operator's own Expired timestamp in status.history (whole seconds, truncated)",
                recorded
            )
        );
    }
    print_cpu(
        "the expiry phase",
        &cpu_e,
        op_e.cpu_secs - op_e0.cpu_secs,
        wall_e,
    );
    let tw_e = metric(b, "accessgrant_arm_throttle_wait_seconds_total").await;
    println!("  {}", throttle_line(tw_e - tw_a));
    let _ = expired_ok;

    // Phase R: delete the sample, measure delete -> Azure accepted the removal.
    let revoke_keys: Vec<String> = revoke_ids
        .iter()
        .map(|&i| key(&namespace(b.layout.slot(i).sub), &format!("g{i}")))
        .collect();
    println!(
        "\n== revoke: deleting {} Active grants, {} (PIM floor PT1S in azure-sim and the operator; JIT early close PT1M)",
        revoke_keys.len(),
        b.args
            .revoke_rate
            .map_or("all at once".to_string(), |r| format!("{r}/s"))
    );
    let cpu_r0 = thread_cpu(b.tck);
    let op_r0 = proc_stats(b.operator_pid(), b.tck);
    let t_r0 = clock::now();
    let w = Instant::now();
    b.delete(&revoke_keys, b.args.revoke_rate, &tracks).await?;
    println!(
        "  deletes sent in {:.1}s ({:.0}/s)",
        w.elapsed().as_secs_f64(),
        revoke_keys.len() as f64 / w.elapsed().as_secs_f64().max(0.001)
    );
    let gone_ok = wait_until(
        Duration::from_secs(300).min(remaining(&run_start)),
        "every deleted grant gone",
        || {
            let map = lock(&tracks);
            let g = revoke_keys
                .iter()
                .filter(|k| map.get(*k).is_some_and(|t| t.gone_seen.is_some()))
                .count();
            (
                g >= revoke_keys.len(),
                format!("{g}/{} gone", revoke_keys.len()),
            )
        },
    )
    .await;
    let t_gone = clock::now();
    let cpu_r = diff_cpu(&cpu_r0, &thread_cpu(b.tck));
    let op_r = proc_stats(b.operator_pid(), b.tck);
    log.sync().await?;
    let state = b.sim_state().await?;
    let accepted = revocations_accepted(&state);
    {
        let map = lock(&tracks);
        let mut lag = Vec::new();
        let mut by_kind: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
        let mut gone = Vec::new();
        let mut slowest: Vec<(f64, &String)> = Vec::new();
        for k in &revoke_keys {
            let Some(t) = map.get(k) else { continue };
            if let (Some(d), Some(a)) = (t.delete_sent, accepted.get(k)) {
                lag.push(secs(d, *a));
                slowest.push((secs(d, *a), k));
                if let Some(kind) = t.kind {
                    by_kind.entry(kind).or_default().push(secs(d, *a));
                }
            }
            if let (Some(d), Some(g)) = (t.delete_sent, t.gone_seen) {
                gone.push(secs(d, g));
            }
        }
        println!(
            "  {}",
            summary(
                "delete -> Azure accepted the removal (PIM request createdOn / JIT closing request startTimeUtc)",
                lag
            )
        );
        for (k, v) in by_kind {
            println!("    {}", summary(k.label(), v));
        }
        println!(
            "  {}",
            summary(
                "delete -> object gone (finalizer removed after Azure confirmed)",
                gone
            )
        );
        println!(
            "    accepted within 5 s: {}/{}",
            slowest.iter().filter(|(l, _)| *l <= 5.0).count(),
            revoke_keys.len()
        );
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        let names: Vec<String> = slowest
            .iter()
            .take(3)
            .map(|(l, k)| format!("{k} {l:.1}s"))
            .collect();
        println!("    slowest: {}", names.join(", "));
        let missing = revoke_keys
            .iter()
            .filter(|k| !accepted.contains_key(*k))
            .count();
        if missing > 0 {
            println!("  !! {missing} deletions have no accepted removal in azure-sim's state");
        }
        if !gone_ok {
            println!("  !! not every deleted grant was gone in time");
        }
    }
    print_cpu(
        "the revoke phase",
        &cpu_r,
        op_r.cpu_secs - op_r0.cpu_secs,
        secs(t_r0, t_gone),
    );
    println!(
        "  {}",
        throttle_line(metric(b, "accessgrant_arm_throttle_wait_seconds_total").await - tw_e)
    );

    // ARM calls per lifecycle, per phase window.
    println!("\n== ARM calls (azure-sim call log, Token requests counted apart)");
    if log.gaps > 0 {
        println!(
            "  !! the call log wrapped {} time(s) between reads: counts are lower bounds",
            log.gaps
        );
    }
    print_counts(
        "request -> Active, all grants",
        &count_calls(activation_calls.iter()),
        n,
    );
    print_counts(
        "Active -> Expired (natural expiry), expiring grants",
        &count_calls(log.all.iter().filter(|c| in_window(c, t_active, t_expired))),
        expiring,
    );
    print_counts(
        "delete -> gone, deleted grants",
        &count_calls(log.all.iter().filter(|c| in_window(c, t_r0, t_gone))),
        revoke_keys.len(),
    );
    let total = count_calls(log.all.iter());
    print_counts("whole run, all grants", &total, n);

    let end = proc_stats(b.operator_pid(), b.tck);
    println!("\n== operator process");
    println!(
        "  peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB, CPU {:.1}s user+system over {:.0}s",
        mib(end.hwm_kib),
        mib(end.rss_kib),
        end.cpu_secs,
        run_start.elapsed().as_secs_f64()
    );
    let metrics = b.metrics().await;
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("accessgrant_reconciles_total")
                || l.starts_with("accessgrant_reconcile_failures_total")
                || l.starts_with("accessgrant_reconcile_duration_seconds_sum")
                || l.starts_with("accessgrant_reconcile_duration_seconds_count")
                || l.starts_with("accessgrant_arm_throttle_wait"))
    }) {
        println!("  metric {line}");
    }
    let me = proc_stats(std::process::id(), b.tck);
    println!(
        "bench process (both simulators + driver): peak RSS {:.0} MiB, CPU {:.1}s",
        mib(me.hwm_kib),
        me.cpu_secs
    );
    watch.abort();
    Ok(())
}

async fn burst(b: &mut Bench) -> Result<(), BoxError> {
    let n = b.args.grants;
    let deadline = Duration::from_secs(b.args.timeout);
    let run_start = Instant::now();
    let sample = b.args.revoke_sample.unwrap_or(100).min(n);
    let throttle: Value = b
        .http
        .get(format!("{}/_sim/throttle", b.azure.base_url()))
        .send()
        .await?
        .json()
        .await?;
    let w_burst = throttle["writes"]["burst"].as_f64().unwrap_or(200.0);
    let w_rate = throttle["writes"]["perSecond"].as_f64().unwrap_or(10.0);
    println!("azure-sim throttling (per subscription and caller): {throttle}");
    println!(
        "operator: {} --concurrency {}",
        b.args.operator.display(),
        b.args
            .concurrency
            .map_or("the operator default".to_string(), |c| c.to_string())
    );
    let idle = start_operator(b).await?;
    println!("operator ready: RSS {:.1} MiB", mib(idle.rss_kib));
    let tracks: Tracks = Arc::new(Mutex::new(HashMap::new()));
    let watch = spawn_watch(b.client.clone(), tracks.clone());
    let mut log = b.call_log();
    log.sync().await?;
    let t0 = clock::now();
    let w0 = Instant::now();
    let ids: Vec<usize> = (0..n).collect();
    b.create(&ids, |_| 3600, |_| false, &tracks).await?;
    println!("created {n} grants in {:.1}s", w0.elapsed().as_secs_f64());
    // Mid-burst: delete a sample of grants that are already Active while others still wait.
    let until_revoke = Duration::from_secs(b.args.revoke_at).saturating_sub(w0.elapsed());
    tokio::time::sleep(until_revoke).await;
    let (revoke_keys, pending_at_delete): (Vec<String>, Vec<String>) = {
        let map = lock(&tracks);
        let mut active: Vec<(&String, &Track)> = map
            .iter()
            .filter(|(_, t)| t.active_seen.is_some())
            .collect();
        active.sort_by_key(|(k, _)| (*k).clone());
        let step = (active.len() / sample.max(1)).max(1);
        let keys = active
            .iter()
            .step_by(step)
            .take(sample)
            .map(|(k, _)| (*k).clone())
            .collect();
        let pending = map
            .iter()
            .filter(|(_, t)| t.active_seen.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        (keys, pending)
    };
    println!(
        "at {:.0}s: {} grants Active, {} still waiting; deleting {} Active grants",
        w0.elapsed().as_secs_f64(),
        n - pending_at_delete.len(),
        pending_at_delete.len(),
        revoke_keys.len()
    );
    let t_del = clock::now();
    b.delete(&revoke_keys, None, &tracks).await?;
    let mut last_sync = Instant::now();
    let mut done = false;
    let mut last_print = Instant::now();
    while run_start.elapsed() < deadline {
        let (ok, progress) = {
            let map = lock(&tracks);
            let active = map.values().filter(|t| t.active_seen.is_some()).count();
            let gone = revoke_keys
                .iter()
                .filter(|k| map.get(*k).is_some_and(|t| t.gone_seen.is_some()))
                .count();
            (
                active >= n && gone >= revoke_keys.len(),
                format!(
                    "{active}/{n} Active, {gone}/{} deleted gone",
                    revoke_keys.len()
                ),
            )
        };
        if ok {
            done = true;
            break;
        }
        if last_sync.elapsed() > Duration::from_secs(10) {
            log.sync().await?;
            last_sync = Instant::now();
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            eprintln!("  … {progress} ({:.0}s)", w0.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !done {
        println!("  !! gave up after {}s", b.args.timeout);
        let map = lock(&tracks);
        let stuck: Vec<(&String, &Track)> = map
            .iter()
            .filter(|(_, t)| t.active_seen.is_none())
            .collect();
        let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
        for (_, t) in &stuck {
            *by_phase.entry(format!("{:?}", t.phase)).or_default() += 1;
        }
        println!(
            "  !! {} grants never Active, by phase: {by_phase:?}",
            stuck.len()
        );
        for (k, t) in stuck.iter().take(5) {
            println!(
                "     {k}: {:?} {}",
                t.phase,
                t.last_message.clone().unwrap_or_default()
            );
        }
    }
    let t_end = clock::now();
    log.sync().await?;
    let state = b.sim_state().await?;
    let accepted = revocations_accepted(&state);
    let arm: Vec<&Call> = log.all.iter().filter(|c| c.is_arm()).collect();
    let first = arm.iter().filter_map(|c| c.at()).min().unwrap_or(t0);
    let ok_writes: Vec<DateTime<Utc>> = arm
        .iter()
        .filter(|c| c.is_write() && c.status < 300 && c.status > 0)
        .filter_map(|c| c.at())
        .collect();
    let last_write = ok_writes.iter().copied().max().unwrap_or(first);
    let span = secs(first, last_write).max(0.001);
    let subs = b.layout.subs as f64;
    let w = ok_writes.len() as f64;
    let after_first_second: Vec<&&Call> = arm
        .iter()
        .filter(|c| c.status == 429 && c.at().is_some_and(|t| secs(first, t) > 1.0))
        .collect();
    let all_429 = arm.iter().filter(|c| c.status == 429).count();
    let t_all_active = lock(&tracks)
        .values()
        .filter_map(|t| t.active_seen)
        .max()
        .unwrap_or(t_end);
    println!("\n== ARM write budget");
    println!(
        "  {} accepted writes in {span:.1}s (first ARM call -> last accepted write) over {} subscriptions",
        ok_writes.len(),
        b.layout.subs
    );
    println!(
        "  budget in that window: {subs} x ({w_burst} burst + {w_rate}/s x {span:.1}s) = {:.0} writes; used {:.1}%",
        subs * (w_burst + w_rate * span),
        100.0 * w / (subs * (w_burst + w_rate * span))
    );
    println!(
        "  refill rate used after the burst: (writes - burst) / (refill x time) = {:.1}%",
        100.0 * (w - subs * w_burst).max(0.0) / (subs * w_rate * span)
    );
    // Steady-state: accepted writes per second, from 30 s after the first call to the last.
    let steady_from = first + chrono::Duration::seconds((w_burst / w_rate) as i64);
    let steady: Vec<&DateTime<Utc>> = ok_writes.iter().filter(|t| **t > steady_from).collect();
    if secs(steady_from, last_write) > 5.0 {
        let s = secs(steady_from, last_write);
        println!(
            "  steady state (from {:.0}s after the first call, when the burst allowance would be spent): {:.1} writes/s = {:.1}% of {subs} x {w_rate}/s",
            w_burst / w_rate,
            steady.len() as f64 / s,
            100.0 * steady.len() as f64 / s / (subs * w_rate)
        );
    }
    println!(
        "  429 answers: {all_429} in total, {} after the first second",
        after_first_second.len()
    );
    let by_op = count_calls(arm.iter().copied());
    print_counts("whole burst, all grants", &by_op, n);
    println!(
        "  every grant Active {:.1}s after the first create ({:.0} grants/s)",
        secs(t0, t_all_active),
        n as f64 / secs(t0, t_all_active).max(0.001)
    );
    {
        let mut tta: Vec<f64> = lock(&tracks)
            .values()
            .filter_map(|t| Some(secs(t.create_sent?, t.active_seen?) * 1000.0))
            .collect();
        if !tta.is_empty() {
            let p50 = percentile(&mut tta, 50.0);
            let p99 = percentile(&mut tta, 99.0);
            println!(
                "  create sent -> Active seen by the bench's watch: min {:.0} ms  p50 {p50:.0} ms  p99 {p99:.0} ms  max {:.0} ms (azure-sim latency {} ms per ARM call)",
                tta.first().copied().unwrap_or(0.0),
                tta.last().copied().unwrap_or(0.0),
                b.args.latency_ms
            );
        }
    }
    println!("\n== revocations vs. waiting grants");
    {
        let map = lock(&tracks);
        let mut revoke_lag = Vec::new();
        let mut slow = Vec::new();
        for k in &revoke_keys {
            if let (Some(t), Some(a)) = (map.get(k), accepted.get(k))
                && let Some(d) = t.delete_sent
            {
                let lag = secs(d, *a);
                revoke_lag.push(lag);
                if lag > 5.0 {
                    slow.push((lag, k.clone(), d, *a));
                }
            } else {
                slow.push((f64::INFINITY, k.clone(), t_del, t_end));
            }
        }
        slow.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (lag, k, d, a) in &slow {
            println!(
                "  slow revocation: {k} deleted {} accepted {} ({lag:.1}s)",
                d.format("%H:%M:%S%.3f"),
                a.format("%H:%M:%S%.3f")
            );
        }
        let missing = revoke_keys.len() - revoke_lag.len();
        let waits: Vec<f64> = pending_at_delete
            .iter()
            .filter_map(|k| map.get(k).and_then(|t| t.active_seen))
            .map(|a| secs(t_del, a))
            .collect();
        let within = |v: &[f64], s: f64| v.iter().filter(|x| **x <= s).count();
        println!(
            "  within 5 s of the deletes: {}/{} revocations accepted, {}/{} waiting grants Active; within 30 s: {}/{} and {}/{}",
            within(&revoke_lag, 5.0),
            revoke_keys.len(),
            within(&waits, 5.0),
            pending_at_delete.len(),
            within(&revoke_lag, 30.0),
            revoke_keys.len(),
            within(&waits, 30.0),
            pending_at_delete.len()
        );
        println!(
            "  {}",
            summary(
                "deleted mid-burst: delete -> Azure accepted the removal",
                revoke_lag
            )
        );
        if missing > 0 {
            println!("  ({missing} revocations not accepted by the end)");
        }
        println!(
            "  {}",
            summary(
                "grants still waiting at that moment: delete instant -> their Active",
                waits
            )
        );
    }
    let end = proc_stats(b.operator_pid(), b.tck);
    println!(
        "\noperator: peak RSS {:.1} MiB, CPU {:.1}s",
        mib(end.hwm_kib),
        end.cpu_secs
    );
    watch.abort();
    Ok(())
}

/// One sample of the running operator's metrics (0 when absent).
async fn metric(b: &Bench, series: &str) -> f64 {
    b.metrics()
        .await
        .lines()
        .find(|l| l.split(' ').next() == Some(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The `reconciles_total{outcome="ok"}` counter of the running operator.
async fn reconciles_ok(b: &Bench) -> f64 {
    metric(b, "accessgrant_reconciles_total{outcome=\"ok\"}").await
}

/// Restart with N Active grants and no intents in flight.
async fn restart(b: &mut Bench) -> Result<(), BoxError> {
    let n = b.args.grants;
    let deadline = Duration::from_secs(b.args.timeout);
    let run_start = Instant::now();
    let remaining = |s: &Instant| deadline.saturating_sub(s.elapsed());
    // A sample expires after the restart: that it does, on time, shows its timer was re-armed
    // by the new process (nothing else wakes an Active grant before its drift check).
    let sample = b
        .args
        .revoke_sample
        .unwrap_or((n / 10).clamp(1, 1000))
        .min(n);
    let stride = (n / sample.max(1)).max(1);
    let expire_after = b.args.expire_after.unwrap_or((n as u64 / 20).max(180));
    let expiring = move |i: usize| i.is_multiple_of(stride) && i / stride < sample;
    let duration = move |i: usize| if expiring(i) { expire_after } else { 3600 };
    println!(
        "grants: {} for PT1H, {sample} expire after {expire_after}s (after the restart)",
        n - sample
    );
    start_operator(b).await?;
    let tracks: Tracks = Arc::new(Mutex::new(HashMap::new()));
    let watch = spawn_watch(b.client.clone(), tracks.clone());
    let mut log = b.call_log();
    log.sync().await?;
    let ids: Vec<usize> = (0..n).collect();
    let t0 = clock::now();
    b.create(&ids, duration, |_| false, &tracks).await?;
    let all_active = wait_until(remaining(&run_start), "every grant Active", || {
        let map = lock(&tracks);
        let active = map.values().filter(|t| t.active_seen.is_some()).count();
        (active >= n, format!("{active}/{n} reached Active"))
    })
    .await;
    println!(
        "all {n} grants Active {:.1}s after the first create{}",
        secs(t0, clock::now()),
        if all_active { "" } else { " (INCOMPLETE)" }
    );
    // Let the last status writes land: no intent may be in flight at the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = proc_stats(b.operator_pid(), b.tck);
    println!(
        "operator before the restart: RSS {:.1} MiB, {} reconciles",
        mib(before.rss_kib),
        reconciles_ok(b).await
    );

    let t_stop = Instant::now();
    b.stop_operator().await;
    let stopped_in = t_stop.elapsed().as_secs_f64();
    log.sync().await?;
    let t_start = clock::now();
    let wall_start = Instant::now();
    b.spawn_operator()?;
    if !b.wait_ready().await {
        return Err("the restarted operator did not become ready within 120s".into());
    }
    let ready_in = wall_start.elapsed().as_secs_f64();
    let cpu0 = thread_cpu(b.tck);
    let all_reconciled = {
        let limit = remaining(&run_start);
        let start = Instant::now();
        let mut ok = false;
        let mut last_print = Instant::now();
        while start.elapsed() < limit {
            let done = reconciles_ok(b).await;
            if done >= n as f64 {
                ok = true;
                break;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!("  … {done}/{n} reconciled after the restart");
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    let reconciled_in = wall_start.elapsed().as_secs_f64();
    let t_reconciled = clock::now();
    let cpu = diff_cpu(&cpu0, &thread_cpu(b.tck));
    let after = proc_stats(b.operator_pid(), b.tck);
    log.sync().await?;
    let calls = count_calls(
        log.all
            .iter()
            .filter(|c| c.at().is_some_and(|t| t >= t_start && t <= t_reconciled)),
    );
    println!("\n== restart with {n} Active grants, no intent in flight");
    println!("  SIGTERM -> exited: {stopped_in:.1}s");
    println!("  start -> ready (caches synced): {ready_in:.1}s");
    println!(
        "  start -> every grant reconciled once: {reconciled_in:.1}s ({:.0} grants/s){}",
        n as f64 / reconciled_in.max(0.001),
        if all_reconciled { "" } else { " (INCOMPLETE)" }
    );
    print_counts("ARM calls from start to every grant reconciled", &calls, n);
    print_cpu("the restart", &cpu, after.cpu_secs, reconciled_in);
    println!(
        "  operator after the restart: RSS {:.1} MiB (peak {:.1} MiB), heap {:.1} MiB allocated",
        mib(after.rss_kib),
        mib(after.hwm_kib),
        metric(b, "accessgrant_heap_allocated_bytes").await / 1048576.0
    );

    // The expiring sample: its timers were armed by the new process only.
    let limit = Duration::from_secs(expire_after + 180).min(remaining(&run_start));
    let expired = wait_until(limit, "the sample Expired", || {
        let map = lock(&tracks);
        let e = map.values().filter(|t| t.expired_seen.is_some()).count();
        (e >= sample, format!("{e}/{sample} Expired"))
    })
    .await;
    log.sync().await?;
    let lags: Vec<f64> = lock(&tracks)
        .values()
        .filter_map(|t| Some(secs(t.end_time?, t.expired_seen?)))
        .collect();
    println!(
        "  {}{}",
        summary(
            "sample: end time -> Expired seen, timers armed after the restart",
            lags
        ),
        if expired { "" } else { " (INCOMPLETE)" }
    );
    let later = count_calls(
        log.all
            .iter()
            .filter(|c| c.at().is_some_and(|t| t > t_reconciled)),
    );
    print_counts(
        "ARM calls after that, to the sample's expiry",
        &later,
        sample,
    );
    watch.abort();
    if calls.writes > 0 {
        return Err(format!("{} ARM writes after the restart (expected 0)", calls.writes).into());
    }
    Ok(())
}
