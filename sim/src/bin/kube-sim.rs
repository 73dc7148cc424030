//! kube-sim: a Kubernetes API simulator for accessgrant-operator's tests and sandbox.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use accessgrant_sim::kube::{SimConfig, parse_token_spec, serve};
use clap::Parser;

/// A Kubernetes API server simulator (HTTP on loopback).
#[derive(Debug, Parser)]
#[command(name = "kube-sim", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "KUBE_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Folder of CustomResourceDefinition YAML files to serve from the start.
    #[arg(long, env = "KUBE_SIM_CRDS")]
    crds: Option<PathBuf>,
    /// Where to write a kubeconfig (admin user with a bearer token).
    #[arg(long, env = "KUBE_SIM_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Extra bearer token: TOKEN=USER[:GROUP1,GROUP2] (repeatable).
    #[arg(long = "token", env = "KUBE_SIM_TOKENS", value_delimiter = ';')]
    tokens: Vec<String>,
    /// Bearer token of the admin user written to the kubeconfig (random if unset).
    #[arg(long, env = "KUBE_SIM_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Refuse requests without credentials (401) instead of serving them as system:anonymous.
    #[arg(long, env = "KUBE_SIM_NO_ANONYMOUS")]
    no_anonymous: bool,
    /// Issuer of ServiceAccount tokens.
    #[arg(
        long,
        env = "KUBE_SIM_ISSUER",
        default_value = "https://kubernetes.default.svc.cluster.local"
    )]
    issuer: String,
    /// PKCS#8 PEM RSA key signing ServiceAccount tokens (a built-in test key if unset).
    #[arg(long, env = "KUBE_SIM_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// Watch events kept for resuming watches; older resourceVersions get 410 Gone.
    #[arg(long, env = "KUBE_SIM_WATCH_HISTORY", default_value_t = 10_000)]
    watch_history: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, env = "KUBE_SIM_BOOKMARK_SECONDS", default_value_t = 10.0)]
    bookmark_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBE_SIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = SimConfig {
        listen: cli.listen,
        crds_dir: cli.crds,
        kubeconfig: cli.kubeconfig,
        allow_anonymous: !cli.no_anonymous,
        issuer: cli.issuer,
        watch_history: cli.watch_history,
        bookmark_interval: Duration::from_secs_f64(cli.bookmark_seconds.max(0.05)),
        ..SimConfig::default()
    };
    if let Some(t) = cli.admin_token {
        config.admin_token = t;
    }
    for spec in &cli.tokens {
        config.tokens.push(parse_token_spec(spec)?);
    }
    if let Some(p) = cli.signing_key {
        config.signing_key_pem = Some(std::fs::read_to_string(p)?);
    }
    let sim = serve(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "kube-sim listening on {}", sim.base_url())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
