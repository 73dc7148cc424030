//! `accessgrant-operator`: `run` (controller) and `crd` (print CRDs). Thin: parses flags, builds
//! clients, hands over to the library.
use accessgrant_operator::api::IsoDuration;

/// jemalloc instead of the system allocator: at 10k cached grants glibc's malloc kept ~2x the
/// live heap resident (BENCHMARKS.md), and jemalloc's statistics give the
/// `accessgrant_heap_*` metrics.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use accessgrant_operator::azure::client::{ArmClient, ArmConfig, AuthConfig};
use accessgrant_operator::controller::{self, ControllerConfig, identity::ServiceAccountTokens};
use accessgrant_operator::lifecycle::PlannerConfig;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::sync::Arc;

/// Kubernetes API requests in flight at once (see `run`).
const KUBE_MAX_IN_FLIGHT: usize = 32;

/// Temporary Azure access (Defender JIT, PIM) declared as Kubernetes objects.
#[derive(Parser, Debug)]
#[command(name = "accessgrant-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML.
    Crd,
    /// Run the controller. Kubernetes access follows the usual kubeconfig rules (KUBECONFIG,
    /// in-cluster).
    Run(Box<RunArgs>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Azure Resource Manager endpoint.
    #[arg(
        long,
        env = "ARM_ENDPOINT",
        default_value = "https://management.azure.com"
    )]
    arm_endpoint: url::Url,
    /// Microsoft Entra authority host (must be https).
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com"
    )]
    authority_host: url::Url,
    /// Extra trusted root CAs (PEM) for Azure endpoints; the platform roots are always trusted.
    #[arg(long, env = "AZURE_CA_FILE")]
    azure_ca_file: Option<std::path::PathBuf>,
    /// Entra tenant id of the operator's identity.
    #[arg(long, env = "AZURE_TENANT_ID")]
    azure_tenant_id: Option<String>,
    /// Client (application) id of the operator's identity.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    azure_client_id: Option<String>,
    /// Client secret (prefer workload identity in clusters).
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true)]
    azure_client_secret: Option<String>,
    /// Federated token file for workload identity (set by the AKS webhook).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    azure_federated_token_file: Option<std::path::PathBuf>,
    /// Use managed identity (IMDS) when no secret or federated token file is given.
    #[arg(long, env = "AZURE_USE_MANAGED_IDENTITY", default_value_t = false)]
    managed_identity: bool,
    /// JIT has no revoke API: on delete/suspend supersede our request with a window this long
    /// (ISO 8601), or `none` to let the ports close at their end time.
    #[arg(long, env = "JIT_EARLY_CLOSE", default_value = "PT1M", value_parser = duration_or_none)]
    jit_early_close: Switch<chrono::Duration>,
    /// PIM's minimum active time before deactivation (Azure: 5 minutes).
    #[arg(long, env = "PIM_DEACTIVATION_FLOOR", default_value = "PT5M", value_parser = duration)]
    deactivation_floor: chrono::Duration,
    /// How often active grants are checked for out-of-band changes.
    #[arg(long, env = "DRIFT_CHECK_INTERVAL", default_value = "PT5M", value_parser = positive_duration)]
    drift_check: chrono::Duration,
    /// How long one ARM call may take. The write deadline (after which the operator stops
    /// waiting for a write it recorded) is the same value, and the shutdown grace is a little
    /// longer, so that a write in flight at shutdown is answered or abandoned, never cut off.
    #[arg(long, env = "ARM_REQUEST_TIMEOUT", default_value = "PT30S", value_parser = positive_duration)]
    arm_request_timeout: chrono::Duration,
    /// Concurrent reconciles. A reconcile keeps its slot while its ARM calls are answered
    /// (100 ms to seconds each), so the slots must cover ARM's budget at that latency: what
    /// paces calls is each subscription's token buckets, not this number.
    #[arg(long, env = "CONCURRENCY", default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// ARM calls in flight at once across all subscriptions (a memory bound; each
    /// subscription's calls are paced by its ARM token buckets).
    #[arg(long, env = "ARM_MAX_IN_FLIGHT", default_value_t = accessgrant_operator::azure::client::DEFAULT_MAX_IN_FLIGHT, value_parser = clap::value_parser!(u16).range(1..))]
    arm_max_in_flight: u16,
    /// Elect a leader among replicas through a coordination.k8s.io Lease; only the leader
    /// reconciles, and it stops writing to Azure as soon as it cannot prove it still leads.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// This replica's identity in the election (the pod name).
    #[arg(long, env = "POD_NAME")]
    leader_election_id: Option<String>,
    /// Lease duration, renew deadline (shorter) and retry period (ISO 8601).
    #[arg(long, env = "LEADER_LEASE_DURATION", default_value = "PT15S", value_parser = std_duration)]
    leader_lease_duration: std::time::Duration,
    /// How long the leader keeps writing without a successful renew (< lease duration).
    #[arg(long, env = "LEADER_RENEW_DEADLINE", default_value = "PT10S", value_parser = std_duration)]
    leader_renew_deadline: std::time::Duration,
    /// How often the Lease is renewed or retried.
    #[arg(long, env = "LEADER_RETRY_PERIOD", default_value = "PT2S", value_parser = std_duration)]
    leader_retry_period: std::time::Duration,
    /// Admin server (`/metrics`, `/livez`, `/readyz`, `/readyz/admission`) listen address.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: std::net::SocketAddr,
    /// `GET`/`PUT /loglevel` listen address, or `none`. Localhost by default: reached with
    /// `kubectl port-forward` or from inside the pod, never through the metrics Service.
    #[arg(long, env = "LOGLEVEL_ADDR", default_value = "127.0.0.1:8082", value_parser = addr_or_none)]
    loglevel_addr: Switch<std::net::SocketAddr>,
    /// Require `Authorization: Bearer <token>` on `/metrics`, the token being this file's
    /// content (a Secret mounted as a file; re-read at each scrape). Probes stay open.
    #[arg(long, env = "METRICS_BEARER_TOKEN_FILE")]
    metrics_bearer_token_file: Option<std::path::PathBuf>,
    /// Log format: `text` or `json` (logs go to stderr; audit lines to stdout).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Hold an AccessPolicy's deletion (a finalizer) while live grants rely on it, so that
    /// deleting or pruning a policy does not silently withdraw them; per policy, the annotation
    /// `accessgrant.io/on-delete: revoke-grants` opts out.
    #[arg(long, env = "POLICY_DELETION_GUARD", default_value_t = true, action = clap::ArgAction::Set)]
    policy_deletion_guard: bool,
    /// How often the orphan sweep looks for access this operator made in Azure whose grant is
    /// gone (deleted with its finalizer removed, or with the webhook bypassed), and removes
    /// it; `none` turns it off. Three paged lists per subscription each time.
    #[arg(long, env = "ORPHAN_SWEEP_INTERVAL", default_value = "PT1M", value_parser = positive_duration_or_none)]
    orphan_sweep_interval: Switch<chrono::Duration>,
    /// Admission webhook listen address (HTTPS), or `none` to run without the webhook (grants
    /// then carry no verified requester).
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "0.0.0.0:9443", value_parser = addr_or_none)]
    webhook_addr: Switch<std::net::SocketAddr>,
    /// Directory with `tls.crt` and `tls.key` for the webhook (a mounted Secret, e.g. from
    /// cert-manager). Without it the operator generates a CA and certificate once, keeps them
    /// in `--webhook-secret` and patches the CA into the webhook configurations.
    #[arg(long, env = "WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<std::path::PathBuf>,
    /// Service name the webhook is reached through (certificate names
    /// `<service>.<namespace>.svc[.cluster.local]`).
    #[arg(
        long,
        env = "WEBHOOK_SERVICE",
        default_value = "accessgrant-operator-webhook"
    )]
    webhook_service: String,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose `caBundle` is patched
    /// with a self-generated CA.
    #[arg(
        long,
        env = "WEBHOOK_CONFIGURATION",
        default_value = "accessgrant-operator"
    )]
    webhook_configuration: String,
    /// Secret (in the operator's namespace) holding the self-generated webhook certificate.
    #[arg(
        long,
        env = "WEBHOOK_SECRET",
        default_value = "accessgrant-operator-webhook-tls"
    )]
    webhook_secret: String,
    /// File with the key (32+ bytes) that signs requester stamps. Without it the key is kept
    /// in `--stamp-key-secret` (created with random bytes when absent).
    #[arg(long, env = "STAMP_KEY_FILE")]
    stamp_key_file: Option<std::path::PathBuf>,
    /// Secret (in the operator's namespace) holding the stamp key.
    #[arg(
        long,
        env = "STAMP_KEY_SECRET",
        default_value = "accessgrant-operator-stamp-key"
    )]
    stamp_key_secret: String,
    /// The operator's own Kubernetes user name, the only one the webhook lets write grant
    /// status or remove the finalizer of a grant that may hold access. Default: asked from the
    /// API server (SelfSubjectReview, Kubernetes 1.28+).
    #[arg(long, env = "OPERATOR_USER")]
    operator_user: Option<String>,
    /// YAML file of notification sinks (webhooks signed with HMAC-SHA256; see
    /// docs/notifications.md), read with every sink's key file once at start: a bad file stops
    /// the operator. Default: no notifications.
    #[arg(long, env = "NOTIFICATIONS", value_parser = notifications_file)]
    notifications: Option<Arc<accessgrant_operator::notify::Config>>,
    /// How far back a grant's history is notified again when the leader starts (what a restart
    /// cut off is sent again; receivers deduplicate by X-AccessGrant-Event-Id); `none`: never.
    #[arg(long, env = "NOTIFICATIONS_REPLAY", default_value = "PT1H", value_parser = positive_duration_or_none)]
    notifications_replay: Switch<chrono::Duration>,
}

/// The `--notifications` file, parsed and its keys read (clap value parser: before anything
/// binds a port).
fn notifications_file(v: &str) -> Result<Arc<accessgrant_operator::notify::Config>, String> {
    accessgrant_operator::notify::Config::from_file(std::path::Path::new(v)).map(Arc::new)
}

/// Starts the admission webhook (TLS) and returns the stamp key it signs with.
async fn start_webhook(
    args: &RunArgs,
    client: &kube::Client,
    metrics: &accessgrant_operator::telemetry::Metrics,
    readiness: &accessgrant_operator::telemetry::Readiness,
) -> anyhow::Result<Option<accessgrant_operator::stamp::StampKey>> {
    use accessgrant_operator::webhook::{self, certs};
    let ns = args.leader_election_namespace.as_str();
    let Switch::On(addr) = args.webhook_addr.clone() else {
        tracing::warn!("admission webhook disabled: grants will carry no verified requester");
        return match &args.stamp_key_file {
            Some(f) => Ok(Some(
                certs::stamp_key(client, Some(f), ns, &args.stamp_key_secret).await?,
            )),
            None => Ok(None),
        };
    };
    let key = certs::stamp_key(
        client,
        args.stamp_key_file.as_deref(),
        ns,
        &args.stamp_key_secret,
    )
    .await
    .context("loading the stamp key")?;
    let cert = match &args.webhook_cert_dir {
        Some(dir) => certs::from_dir(dir)?,
        None => {
            let svc = &args.webhook_service;
            let names = vec![
                svc.clone(),
                format!("{svc}.{ns}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
            ];
            certs::shared_generated(client, ns, &args.webhook_secret, &names)
                .await
                .context("preparing the webhook certificate")?
        }
    };
    if let Some(ca) = &cert.ca_pem {
        match certs::patch_ca_bundle(client, &args.webhook_configuration, ca).await {
            Ok(0) => tracing::info!(
                name = %args.webhook_configuration,
                "no webhook configurations to patch with the CA yet"
            ),
            Ok(n) => tracing::info!(configurations = n, "webhook CA bundle patched"),
            Err(e) => tracing::warn!(error = %e, "patching the webhook CA bundle failed"),
        }
    }
    let tls = certs::server_config(&cert)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --webhook-addr {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "admission webhook listening (TLS)");
    let (policies, writer) = kube::runtime::reflector::store();
    {
        use futures::StreamExt as _;
        use kube::runtime::WatchStreamExt as _;
        let stream = kube::runtime::watcher(
            kube::Api::<accessgrant_operator::api::AccessPolicy>::all(client.clone()),
            kube::runtime::watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .touched_objects();
        tokio::spawn(async move {
            stream.for_each(|_| async {}).await;
        });
    }
    let operator = match &args.operator_user {
        Some(u) => u.clone(),
        None => webhook::whoami(client)
            .await
            .ok()
            .filter(|u| !u.is_empty())
            .context(
                "asking the API server who the operator is (SelfSubjectReview) failed; set --operator-user to name it",
            )?,
    };
    tracing::info!(user = %operator, "only this identity may write grant status or release grant finalizers");
    let state = webhook::WebhookState {
        key: key.clone(),
        client: client.clone(),
        policies: policies.clone(),
        metrics: metrics.clone(),
        operator,
    };
    let readiness = readiness.clone();
    tokio::spawn(async move {
        // Judge nothing before the policies are known (default deny would refuse everything).
        if policies.wait_until_ready().await.is_err() {
            tracing::error!("AccessPolicy cache never synced; webhook not serving");
            return;
        }
        readiness.set_admission_serving(true);
        tracing::info!("admission webhook serving");
        certs::serve_tls(listener, tls, webhook::router(state)).await;
        readiness.set_admission_serving(false);
    });
    Ok(Some(key))
}

/// A setting that can be turned off with `none`.
#[derive(Clone, Debug, PartialEq)]
enum Switch<T> {
    /// `none`.
    Off,
    /// A value.
    On(T),
}

/// An ISO 8601 duration (clap value parser: bad values stop the process before anything binds
/// a port).
fn duration(v: &str) -> Result<chrono::Duration, String> {
    IsoDuration::new(v).parse().map_err(|e| e.to_string())
}

/// A duration longer than zero (a zero timeout or interval would fail or spin).
fn positive_duration(v: &str) -> Result<chrono::Duration, String> {
    let d = duration(v)?;
    if d <= chrono::Duration::zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn std_duration(v: &str) -> Result<std::time::Duration, String> {
    positive_duration(v)?.to_std().map_err(|e| e.to_string())
}

fn duration_or_none(v: &str) -> Result<Switch<chrono::Duration>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(Switch::Off);
    }
    duration(v).map(Switch::On)
}

fn positive_duration_or_none(v: &str) -> Result<Switch<chrono::Duration>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(Switch::Off);
    }
    positive_duration(v).map(Switch::On)
}

fn addr_or_none(v: &str) -> Result<Switch<std::net::SocketAddr>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(Switch::Off);
    }
    v.parse()
        .map(Switch::On)
        .map_err(|e| format!("{e}: expected host:port, or none"))
}

/// Resolves on SIGTERM or SIGINT. If the handlers cannot be installed it never resolves (the
/// default signal action then stops the process).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutdown requested; finishing in-flight reconciles");
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_reload = accessgrant_operator::telemetry::init_logging(
        &args.log_format,
        "info,kube=warn,azure_core=warn,azure_identity=warn",
    )
    .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    let metrics = accessgrant_operator::telemetry::Metrics::new();
    let readiness = accessgrant_operator::telemetry::Readiness::new();
    let admin = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding --admin-addr {}", args.admin_addr))?;
    tracing::info!(addr = %admin.local_addr()?, "admin server listening");
    tokio::spawn(accessgrant_operator::telemetry::serve_admin(
        admin,
        metrics.clone(),
        readiness.clone(),
        accessgrant_operator::telemetry::AdminConfig {
            log: None,
            metrics_token_file: args.metrics_bearer_token_file.clone(),
        },
        std::future::pending::<()>(),
    ));
    if let Switch::On(addr) = args.loglevel_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --loglevel-addr {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "log level endpoint listening");
        // The same routes plus /loglevel, on a listener nobody outside the pod reaches.
        tokio::spawn(accessgrant_operator::telemetry::serve_admin(
            listener,
            metrics.clone(),
            readiness.clone(),
            accessgrant_operator::telemetry::AdminConfig {
                log: Some(log_reload),
                metrics_token_file: args.metrics_bearer_token_file.clone(),
            },
            std::future::pending::<()>(),
        ));
    }
    let auth = match (&args.azure_client_secret, &args.azure_federated_token_file) {
        (Some(secret), _) => AuthConfig::ClientSecret {
            tenant_id: args
                .azure_tenant_id
                .clone()
                .context("--azure-tenant-id is required with a client secret")?,
            client_id: args
                .azure_client_id
                .clone()
                .context("--azure-client-id is required with a client secret")?,
            secret: secret.clone(),
        },
        (None, Some(file)) => AuthConfig::WorkloadIdentity {
            tenant_id: args
                .azure_tenant_id
                .clone()
                .context("--azure-tenant-id is required for workload identity")?,
            client_id: args
                .azure_client_id
                .clone()
                .context("--azure-client-id is required for workload identity")?,
            token_file: file.clone(),
        },
        (None, None) if args.managed_identity => AuthConfig::ManagedIdentity {
            client_id: args.azure_client_id.clone(),
        },
        (None, None) => anyhow::bail!(
            "no Azure identity: set AZURE_CLIENT_SECRET, AZURE_FEDERATED_TOKEN_FILE or --managed-identity"
        ),
    };
    let timeouts = controller::Timeouts::from_arm_request_timeout(args.arm_request_timeout);
    let mut cfg = ArmConfig::new(args.arm_endpoint.clone(), args.authority_host.clone(), auth);
    cfg.max_in_flight = usize::from(args.arm_max_in_flight);
    cfg.request_timeout = timeouts.arm_request;
    if let Some(f) = &args.azure_ca_file {
        cfg.extra_ca_pem = Some(
            std::fs::read(f).with_context(|| format!("reading --azure-ca-file {}", f.display()))?,
        );
    }
    // Requests in flight to the API server are bounded apart from the reconcile slots: slots
    // are sized for Azure's latency, and each Kubernetes request in flight holds a connection
    // of its own (HTTP/1.1), which the pool then keeps. A watch holds its permit only until the
    // API server's headers arrive. The leader election has a client of its own, so that a
    // Lease renewal never queues behind reconcile traffic.
    let kube_config = kube::Config::infer()
        .await
        .context("reading the Kubernetes client configuration")?;
    let election_client =
        kube::Client::try_from(kube_config.clone()).context("connecting to Kubernetes")?;
    let client = kube::client::ClientBuilder::try_from(kube_config)
        .context("connecting to Kubernetes")?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(
            KUBE_MAX_IN_FLIGHT,
        ))
        .build();
    let stamp_key = start_webhook(&args, &client, &metrics, &readiness).await?;
    let arm = Arc::new(
        ArmClient::new(
            cfg,
            Some(Arc::new(ServiceAccountTokens::new(client.clone()))),
        )?
        .with_telemetry(metrics.clone(), readiness.clone()),
    );
    {
        // Readiness needs one Azure token; keep trying (with backoff) until it works.
        let arm = arm.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_secs(1);
            while let Err(e) = arm.obtain_token().await {
                tracing::warn!(category = e.category(), error = %e, "no Azure token yet; retrying in {}s", wait.as_secs());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
        });
    }
    let planner = PlannerConfig {
        jit_early_close: match args.jit_early_close {
            Switch::Off => None,
            Switch::On(d) => Some(d),
        },
        deactivation_floor: args.deactivation_floor,
        drift_check: args.drift_check,
        write_deadline: timeouts.write_deadline,
        ..PlannerConfig::default()
    };
    tracing::info!(arm = %args.arm_endpoint, authority = %args.authority_host, "accessgrant-operator starting");
    let fence = if args.leader_elect {
        let identity = args
            .leader_election_id
            .clone()
            .unwrap_or_else(|| format!("accessgrant-operator-{}", uuid::Uuid::new_v4().simple()));
        let mut lc = accessgrant_operator::leader::LeaderConfig::new(
            args.leader_election_namespace.clone(),
            "accessgrant-operator",
            identity.clone(),
        );
        lc.lease_duration = args.leader_lease_duration;
        lc.renew_deadline = args.leader_renew_deadline;
        lc.retry_period = args.leader_retry_period;
        let leadership = accessgrant_operator::leader::run_election(
            election_client,
            lc,
            std::future::pending::<()>(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("leader election: {e}"))?;
        tracing::info!(identity = %identity, "waiting to become the leader");
        leadership.wait_until_leader().await;
        tracing::info!(identity = %identity, "became the leader");
        Some(leadership)
    } else {
        None
    };
    // Losing the lease ends this process (the pod restarts and campaigns again), as client-go's
    // OnStoppedLeading does; the fence has already stopped Azure writes by then.
    let lost = {
        let fence = fence.clone();
        async move {
            match fence {
                Some(f) => {
                    let mut rx = f.subscribe();
                    while *rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                    tracing::warn!("lost leadership; stopping");
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    // Started only now that this replica leads: only the leader notifies.
    let notifier = match &args.notifications {
        Some(cfg) => accessgrant_operator::notify::Notifier::start(
            cfg,
            metrics.clone(),
            match args.notifications_replay {
                Switch::On(d) => d,
                Switch::Off => chrono::Duration::zero(),
            },
        )
        .map_err(|e| anyhow::anyhow!(e))?,
        None => accessgrant_operator::notify::Notifier::off(),
    };
    controller::run(
        client,
        arm,
        ControllerConfig {
            planner,
            concurrency: args.concurrency,
            metrics,
            readiness,
            fence,
            stamp_key,
            policy_deletion_guard: args.policy_deletion_guard,
            orphan_sweep: match args.orphan_sweep_interval {
                Switch::On(d) => d.to_std().ok(),
                Switch::Off => None,
            },
            shutdown_grace: timeouts.shutdown_grace,
            notifier: notifier.clone(),
        },
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = lost => {}
            }
        },
    )
    .await?;
    // A short grace for notifications in flight (a dead sink must not hold the shutdown up).
    notifier.shutdown(std::time::Duration::from_secs(2)).await;
    tracing::info!("controller stopped");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", accessgrant_operator::api::crds_yaml()?);
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(*args)),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }

    fn run_args(extra: &[&str]) -> Result<super::RunArgs, clap::Error> {
        use clap::Parser;
        let mut argv = vec!["accessgrant-operator", "run"];
        argv.extend_from_slice(extra);
        super::Cli::try_parse_from(argv).map(|c| match c.command {
            super::Command::Run(a) => *a,
            super::Command::Crd => unreachable!("parsed run"),
        })
    }

    #[test]
    fn durations_and_addresses_are_parsed_by_clap_before_anything_starts() {
        for bad in [
            &["--drift-check", "P1X"][..],
            &["--jit-early-close", "soon"],
            &["--leader-lease-duration", "15s"],
            &["--webhook-addr", "localhost"],
            &["--arm-request-timeout", "PT0S"],
            &["--drift-check", "PT0S"],
            &["--log-format", "yaml"],
        ] {
            let e = run_args(bad).expect_err(&format!("{bad:?} must be refused"));
            assert!(
                matches!(
                    e.kind(),
                    clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
                ),
                "{bad:?}: {e}"
            );
        }
        let a = run_args(&["--jit-early-close", "none", "--webhook-addr", "NONE"]).expect("parses");
        assert_eq!(a.jit_early_close, super::Switch::Off);
        assert_eq!(a.webhook_addr, super::Switch::Off);
        // The log level endpoint is on localhost unless told otherwise, never on the admin port.
        let a = run_args(&[]).expect("parses");
        assert_eq!(
            a.loglevel_addr,
            super::Switch::On("127.0.0.1:8082".parse().expect("addr"))
        );
        assert_ne!(super::Switch::On(a.admin_addr), a.loglevel_addr);
        let a = run_args(&["--loglevel-addr", "none"]).expect("parses");
        assert_eq!(a.loglevel_addr, super::Switch::Off);
        assert!(run_args(&["--loglevel-addr", "8082"]).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("notifications.yaml");
        std::fs::write(&file, "sinks:\n- name: ops\n  url: http://127.0.0.1:1/\n  format: json\n  events: [Approved]\n  secretFile: /nonexistent\n").expect("write");
        let path = file.to_string_lossy().to_string();
        let e = run_args(&["--notifications", &path]).expect_err("unknown event");
        assert!(e.to_string().contains("Approved"), "{e}");
        let e = run_args(&["--notifications", "/nonexistent.yaml"]).expect_err("no file");
        assert!(e.to_string().contains("/nonexistent.yaml"), "{e}");
        let a = run_args(&["--drift-check", "PT90S"]).expect("parses");
        assert_eq!(a.drift_check, chrono::Duration::seconds(90));
        assert_eq!(
            a.jit_early_close,
            super::Switch::On(chrono::Duration::minutes(1))
        );
    }
}
