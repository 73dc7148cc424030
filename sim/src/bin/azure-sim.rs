//! azure-sim: HTTPS stand-in for Entra ID and ARM (Defender JIT, PIM). See sim/README.md.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use accessgrant_sim::azure::{SimConfig, World, serve};
use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "azure-sim",
    about = "HTTPS simulator of Entra ID and ARM (Defender JIT, PIM)"
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "AZURE_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// World file (YAML): tenants, principals, subscriptions, VMs, JIT policies, PIM data.
    #[arg(long, env = "AZURE_SIM_WORLD")]
    world: PathBuf,
    /// Where to write the generated CA certificate (PEM) that signs the server certificate.
    #[arg(long, env = "AZURE_SIM_CA_OUT")]
    ca_out: PathBuf,
    /// ISSUER=BASE_URL: verify client assertions from ISSUER with the OIDC discovery document
    /// and JWKS served under BASE_URL. Repeatable (comma-separated in the env var).
    #[arg(long, env = "AZURE_SIM_OIDC_DISCOVERY", value_delimiter = ',')]
    oidc_discovery: Vec<String>,
    /// Extra DNS names for the server certificate (127.0.0.1, ::1, localhost always included).
    #[arg(long, env = "AZURE_SIM_TLS_NAMES", value_delimiter = ',')]
    tls_name: Vec<String>,
}

fn parse_discovery(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            // The issuer may itself contain '=' only in odd cases; split at the last "=http".
            let idx = s
                .rfind("=http")
                .with_context(|| format!("--oidc-discovery '{s}': expected ISSUER=BASE_URL"))?;
            Ok((s[..idx].to_string(), s[idx + 1..].to_string()))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let world =
        World::from_file(&cli.world).with_context(|| format!("loading {}", cli.world.display()))?;
    let mut config = SimConfig::new(world);
    config.listen = cli.listen;
    config.oidc_discovery = parse_discovery(&cli.oidc_discovery)?;
    config.tls_names = cli.tls_name.clone();
    let sim = serve(config).await?;
    std::fs::write(&cli.ca_out, sim.ca_pem())
        .with_context(|| format!("writing {}", cli.ca_out.display()))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "azure-sim listening on https://{}", sim.addr())?;
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

    #[test]
    fn discovery_pairs_parse() {
        let v = parse_discovery(&[
            "https://kubernetes.default.svc.cluster.local=http://127.0.0.1:8080".into(),
        ])
        .unwrap_or_default();
        assert_eq!(
            v,
            vec![(
                "https://kubernetes.default.svc.cluster.local".to_string(),
                "http://127.0.0.1:8080".to_string()
            )]
        );
        assert!(parse_discovery(&["nonsense".into()]).is_err());
    }
}
