//! Leader election against kube-sim: one leader at a time, hand-over on crash and on graceful
//! stop, and the fence (`may_write`) closing before anyone else can acquire the Lease.
//!
//! Timings are short (lease 3 s, renew deadline 2 s, retry 300 ms). Every wait is a poll on a
//! condition with a deadline; measured times are printed (`--nocapture`) and asserted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accessgrant_operator::clock;
use accessgrant_operator::leader::{LeaderConfig, LeaderError, Leadership, run_election};
use accessgrant_sim::kube::{RunningSim, SimConfig, serve};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

const NS: &str = "default";
const LEASE: &str = "accessgrant-operator-leader";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(300);
/// Poll interval of the test's condition waits.
const POLL: Duration = Duration::from_millis(2);
/// Scheduling slack for upper bounds measured by polling (2 cores shared with other builds).
const SLACK: Duration = Duration::from_millis(100);
/// Lower bounds come from wall-clock Lease timestamps (microseconds): allow rounding only.
const ROUNDING: Duration = Duration::from_millis(5);

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY,
        ..LeaderConfig::new(NS, LEASE, identity)
    }
}

struct Replica {
    leadership: Leadership,
    stop: Option<oneshot::Sender<()>>,
}

impl Replica {
    async fn start(client: kube::Client, identity: &str) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let leadership = run_election(client, config(identity), shutdown)
            .await
            .expect("valid config");
        Self {
            leadership,
            stop: Some(stop),
        }
    }

    /// Graceful stop: release the Lease, wait for the task to end.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(RENEW_DEADLINE + SLACK, self.leadership.stopped())
            .await
            .expect("election task ends after shutdown");
    }
}

async fn sim() -> (RunningSim, kube::Client) {
    let sim = serve(SimConfig::default()).await.expect("kube-sim starts");
    let client = sim.client().await.expect("admin client");
    (sim, client)
}

/// Polls `cond` until it holds; returns when it was first seen true, None on timeout.
async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn lease(client: &kube::Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEASE)
        .await
        .expect("lease exists")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// Stands in for the controller's Azure writes: every few ms, if `may_write()` says so, record
/// a write by this identity. The log is in time order (one mutex).
type WriteLog = Arc<Mutex<Vec<(String, Instant)>>>;

fn writer(leadership: Leadership, log: WriteLog) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            if leadership.may_write() {
                let mut log = log.lock().expect("log lock");
                log.push((leadership.identity().to_string(), Instant::now()));
            }
        }
    })
}

fn wrote(log: &WriteLog, who: &str) -> bool {
    log.lock().expect("log lock").iter().any(|(w, _)| w == who)
}

/// The writes form `first* second*`: never interleaved, so no double write at the hand-over.
/// Returns (last write of `first`, first write of `second`).
fn assert_single_writer(log: &WriteLog, first: &str, second: &str) -> (Instant, Instant) {
    let log = log.lock().expect("log lock");
    let switch = log
        .iter()
        .position(|(who, _)| who == second)
        .expect("the new leader wrote");
    assert!(switch > 0, "the old leader wrote before the hand-over");
    assert!(
        log[..switch].iter().all(|(who, _)| who == first),
        "only {first} wrote before the hand-over"
    );
    assert!(
        log[switch..].iter().all(|(who, _)| who == second),
        "{first} wrote after {second} started writing: double write"
    );
    (log[switch - 1].1, log[switch].1)
}

/// A TCP forwarder between one replica and kube-sim that can be cut (a network partition).
struct Partition {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Partition {
    async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().expect("forwarder address");
        let (cut, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *rx.borrow() {
                    continue; // dropped at once: connection closed
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    async fn client(&self, sim: &RunningSim) -> kube::Client {
        let mut cfg = sim.kube_config().await.expect("kube config");
        cfg.cluster_url = format!("http://{}", self.addr)
            .parse()
            .expect("forwarder url");
        kube::Client::try_from(cfg).expect("client through forwarder")
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

#[test]
fn config_defaults_and_validation() {
    let cfg = LeaderConfig::new("ns", "lease", "pod-0");
    assert_eq!(cfg.lease_duration, Duration::from_secs(15));
    assert_eq!(cfg.renew_deadline, Duration::from_secs(10));
    assert_eq!(cfg.retry_period, Duration::from_secs(2));
    cfg.validate().expect("client-go defaults are valid");
    config("pod-0").validate().expect("test timings are valid");

    let bad = [
        LeaderConfig {
            renew_deadline: Duration::from_secs(15),
            ..cfg.clone()
        },
        LeaderConfig {
            retry_period: Duration::from_secs(10),
            ..cfg.clone()
        },
        LeaderConfig {
            retry_period: Duration::ZERO,
            ..cfg.clone()
        },
        LeaderConfig {
            lease_duration: Duration::from_millis(900),
            renew_deadline: Duration::from_millis(500),
            retry_period: Duration::from_millis(100),
            ..cfg.clone()
        },
        LeaderConfig::new("ns", "lease", ""),
        LeaderConfig::new("ns", "", "pod-0"),
    ];
    for c in bad {
        let err = c.validate().expect_err("invalid config is refused");
        assert!(matches!(err, LeaderError::InvalidConfig { .. }), "{err}");
        assert_eq!(err.category(), "invalid_config");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_election_refuses_an_unsafe_config() {
    let (_sim, client) = sim().await;
    let cfg = LeaderConfig {
        renew_deadline: LEASE_DURATION,
        ..config("a")
    };
    let err = run_election(client, cfg, std::future::pending())
        .await
        .expect_err("renew_deadline >= lease_duration is refused");
    assert_eq!(err.category(), "invalid_config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_replicas_leads() {
    let (_sim, client) = sim().await;
    let a = Replica::start(client.clone(), "replica-a").await;
    let b = Replica::start(client.clone(), "replica-b").await;

    let (la, lb) = (a.leadership.clone(), b.leadership.clone());
    let first = tokio::time::timeout(LEASE_DURATION, async {
        tokio::select! {
            () = la.wait_until_leader() => la.clone(),
            () = lb.wait_until_leader() => lb.clone(),
        }
    })
    .await
    .expect("one replica leads within the lease duration");
    let (leader, follower) = if first.identity() == "replica-a" {
        (la, lb)
    } else {
        (lb, la)
    };
    let log: WriteLog = Arc::default();
    let writers = [
        writer(leader.clone(), log.clone()),
        writer(follower.clone(), log.clone()),
    ];

    // For several retry periods: the Lease names the leader, only it leads and writes.
    let until = Instant::now() + RETRY * 6;
    let mut checks = 0;
    while Instant::now() < until {
        let lease = lease(&client).await;
        assert_eq!(holder(&lease).as_deref(), Some(leader.identity()));
        assert_eq!(transitions(&lease), 0, "no hand-over happened");
        assert!(leader.is_leader() && leader.may_write());
        assert!(!follower.is_leader() && !follower.may_write());
        checks += 1;
        tokio::time::sleep(RETRY / 3).await;
    }
    assert!(checks >= 6, "checked the invariant {checks} times");
    for w in writers {
        w.abort();
    }
    {
        let log = log.lock().expect("log lock");
        assert!(!log.is_empty(), "the leader wrote");
        assert!(
            log.iter().all(|(who, _)| who == leader.identity()),
            "only the leader wrote"
        );
    }
    let spec = lease(&client).await.spec.expect("lease spec");
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_is_replaced_within_the_lease_duration() {
    let (_sim, client) = sim().await;
    let a = Replica::start(client.clone(), "replica-a").await;
    tokio::time::timeout(LEASE_DURATION, a.leadership.wait_until_leader())
        .await
        .expect("a leads");
    let b = Replica::start(client.clone(), "replica-b").await;
    let log: WriteLog = Arc::default();
    let writers = [
        writer(a.leadership.clone(), log.clone()),
        writer(b.leadership.clone(), log.clone()),
    ];
    wait_for(RETRY, || wrote(&log, "replica-a"))
        .await
        .expect("a writes");
    assert!(!b.leadership.is_leader());

    let crashed = Instant::now();
    a.leadership.abort_without_release().await;
    let last_renew = a.leadership.last_renewal().expect("a renewed");
    assert!(!a.leadership.is_leader() && !a.leadership.may_write());
    assert_eq!(
        holder(&lease(&client).await).as_deref(),
        Some("replica-a"),
        "a crash does not release the Lease"
    );

    let taken = wait_for(LEASE_DURATION + RETRY + SLACK, || b.leadership.is_leader())
        .await
        .expect("b takes over");
    let handover = taken - crashed;
    println!(
        "crash hand-over: {handover:?} after the crash, {:?} after a's last renew",
        taken - last_renew
    );
    assert!(
        handover <= LEASE_DURATION + RETRY,
        "hand-over {handover:?} within lease_duration + retry_period"
    );
    assert!(
        taken + ROUNDING >= last_renew + LEASE_DURATION,
        "b waited for a's lease to expire"
    );
    let lease = lease(&client).await;
    assert_eq!(holder(&lease).as_deref(), Some("replica-b"));
    assert_eq!(transitions(&lease), 1);

    wait_for(RETRY, || wrote(&log, "replica-b"))
        .await
        .expect("b writes");
    for w in writers {
        w.abort();
    }
    let (last_a, first_b) = assert_single_writer(&log, "replica-a", "replica-b");
    println!("crash: writes paused for {:?}", first_b - last_a);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_the_lease() {
    let (_sim, client) = sim().await;
    let a = Replica::start(client.clone(), "replica-a").await;
    tokio::time::timeout(LEASE_DURATION, a.leadership.wait_until_leader())
        .await
        .expect("a leads");
    let b = Replica::start(client.clone(), "replica-b").await;
    let log: WriteLog = Arc::default();
    let writers = [
        writer(a.leadership.clone(), log.clone()),
        writer(b.leadership.clone(), log.clone()),
    ];
    wait_for(RETRY, || wrote(&log, "replica-a"))
        .await
        .expect("a writes");
    assert!(!b.leadership.is_leader());

    let a_handle = a.leadership.clone();
    let stopping = Instant::now();
    a.stop().await;
    let released = Instant::now();
    assert!(!a_handle.is_leader() && !a_handle.may_write());
    let taken = wait_for(RETRY * 2, || b.leadership.is_leader())
        .await
        .expect("b takes over within two retry periods");
    println!(
        "graceful hand-over: {:?} after shutdown ({:?} to release)",
        taken - stopping,
        released - stopping
    );
    assert!(taken - stopping <= RETRY * 2);
    let lease = lease(&client).await;
    assert_eq!(holder(&lease).as_deref(), Some("replica-b"));
    assert_eq!(transitions(&lease), 1);

    wait_for(RETRY, || wrote(&log, "replica-b"))
        .await
        .expect("b writes");
    for w in writers {
        w.abort();
    }
    let (last_a, first_b) = assert_single_writer(&log, "replica-a", "replica-b");
    assert!(last_a < released, "a stopped writing before releasing");
    println!("graceful: writes paused for {:?}", first_b - last_a);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_fences_itself_before_the_lease_expires() {
    let (sim, client) = sim().await;
    let partition = Partition::to(sim.addr()).await;
    let a = Replica::start(partition.client(&sim).await, "replica-a").await;
    tokio::time::timeout(LEASE_DURATION, a.leadership.wait_until_leader())
        .await
        .expect("a leads");
    let b = Replica::start(client.clone(), "replica-b").await;
    let log: WriteLog = Arc::default();
    let writers = [
        writer(a.leadership.clone(), log.clone()),
        writer(b.leadership.clone(), log.clone()),
    ];
    wait_for(RETRY, || wrote(&log, "replica-a"))
        .await
        .expect("a writes");
    assert!(a.leadership.may_write() && !b.leadership.is_leader());

    let cut = Instant::now();
    partition.cut();
    let fenced = wait_for(RENEW_DEADLINE + SLACK, || !a.leadership.may_write())
        .await
        .expect("a closes its fence");
    let last_renew = a.leadership.last_renewal().expect("a renewed");
    let stepped_down = wait_for(SLACK, || !a.leadership.is_leader())
        .await
        .expect("a steps down at the renew deadline");
    let taken = wait_for(LEASE_DURATION + SLACK, || b.leadership.is_leader())
        .await
        .expect("b takes over once a's lease expired");
    println!(
        "partition: last renew {:?} before the cut; fence closed {:?} after it (deadline {:?}); \
         a stepped down {:?} after it; b leads {:?} after it (lease {:?})",
        cut - last_renew,
        fenced - last_renew,
        RENEW_DEADLINE,
        stepped_down - last_renew,
        taken - last_renew,
        LEASE_DURATION,
    );
    assert!(last_renew <= cut);
    assert!(
        fenced <= last_renew + RENEW_DEADLINE + SLACK,
        "fence closed within renew_deadline of the last renew"
    );
    assert!(fenced >= last_renew + RENEW_DEADLINE - ROUNDING);
    assert!(
        fenced < last_renew + LEASE_DURATION,
        "fence closed strictly before the lease could expire"
    );
    assert!(fenced < taken, "a stopped writing before b could start");
    assert!(
        taken + ROUNDING >= last_renew + LEASE_DURATION,
        "b waited for the lease to expire"
    );

    wait_for(RETRY, || wrote(&log, "replica-b"))
        .await
        .expect("b writes");
    for w in writers {
        w.abort();
    }
    let (last_a, first_b) = assert_single_writer(&log, "replica-a", "replica-b");
    println!("partition: writes paused for {:?}", first_b - last_a);
    assert!(last_a < last_renew + RENEW_DEADLINE);
    assert!(
        first_b - last_a + ROUNDING >= LEASE_DURATION - RENEW_DEADLINE,
        "the safety margin separates the two writers"
    );
    b.stop().await;
    a.leadership.abort_without_release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_lease_fences_the_leader_at_its_next_renew() {
    let (_sim, client) = sim().await;
    let a = Replica::start(client.clone(), "replica-a").await;
    tokio::time::timeout(LEASE_DURATION, a.leadership.wait_until_leader())
        .await
        .expect("a leads");

    // Someone else forcibly takes the Lease (optimistic update, retried on 409).
    let api = Api::<Lease>::namespaced(client.clone(), NS);
    let overwritten = loop {
        let mut current = api.get(LEASE).await.expect("lease exists");
        let now = k8s_openapi::jiff::Timestamp::from_microsecond(clock::now().timestamp_micros())
            .expect("timestamp in range");
        let spec = current.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(MicroTime(now));
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(3);
        let at = Instant::now();
        match api.replace(LEASE, &PostParams::default(), &current).await {
            Ok(_) => break at,
            Err(kube::Error::Api(s)) if s.is_conflict() => continue,
            Err(e) => panic!("overwrite failed: {e}"),
        }
    };
    let fenced = wait_for(RETRY + SLACK, || !a.leadership.may_write())
        .await
        .expect("a notices at its next renew");
    let last_renew = a.leadership.last_renewal().expect("a renewed");
    println!(
        "overwrite: fence closed {:?} after the overwrite, {:?} after a's last renew",
        fenced - overwritten,
        fenced - last_renew
    );
    assert!(!a.leadership.is_leader());
    assert!(fenced - last_renew <= RENEW_DEADLINE);
    assert_eq!(holder(&lease(&client).await).as_deref(), Some("intruder"));

    // a leads again only after the intruder's lease expired.
    let back = wait_for(LEASE_DURATION + RETRY + SLACK, || a.leadership.is_leader())
        .await
        .expect("a re-acquires the expired lease");
    println!("overwrite: a leads again {:?} after it", back - overwritten);
    assert!(back + ROUNDING >= overwritten + LEASE_DURATION);
    let lease = lease(&client).await;
    assert_eq!(holder(&lease).as_deref(), Some("replica-a"));
    assert_eq!(transitions(&lease), 1);
    a.stop().await;
}
