//! `accessgrant-operator`: `run` (controller + webhook + admin server) and `crd`.
use clap::{Parser, Subcommand};

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
    /// Run the controller, admission webhook and admin server.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Azure Resource Manager endpoint.
    #[arg(
        long,
        env = "ARM_ENDPOINT",
        default_value = "https://management.azure.com"
    )]
    arm_endpoint: String,
    /// Microsoft Entra authority host (must be https).
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com"
    )]
    authority_host: String,
    /// Extra trusted root CAs (PEM) for Azure endpoints.
    #[arg(long, env = "AZURE_CA_FILE")]
    azure_ca_file: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", accessgrant_operator::api::crds_yaml()?);
            Ok(())
        }
        Command::Run(args) => {
            anyhow::bail!(
                "the controller is not built yet (arm endpoint {}, authority {}, ca file {:?})",
                args.arm_endpoint,
                args.authority_host,
                args.azure_ca_file
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
