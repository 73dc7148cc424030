//! The sandbox: kube-sim + azure-sim (sandbox world) + the operator, with `examples/` applied,
//! printing every grant as it moves through its phases. Run from the repository root:
//!
//!     cargo run -p accessgrant-sim --bin sandbox [-- --exit-after 60s] [-- --dir .sandbox-2]
//!
//! Everything listens on free loopback ports, so a second sandbox beside the first needs only
//! its own `--dir`. See [`accessgrant_sim::sandbox`].

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sandbox",
    about = "kube-sim + azure-sim + accessgrant-operator, with examples/ applied"
)]
struct Args {
    /// Stop cleanly after this long (e.g. `60s`, `5m`, `PT2M`); default: run until Ctrl-C.
    #[arg(long, env = "SANDBOX_EXIT_AFTER")]
    exit_after: Option<String>,
    /// Folder of example manifests to apply.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// Where the kubeconfig and logs go; give a second sandbox its own.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// World for azure-sim.
    #[arg(long, default_value = "sim/worlds/sandbox.yaml")]
    world: PathBuf,
    /// PIM deactivation floor the sandbox uses (Azure: PT5M), so deletes finish quickly.
    #[arg(long, default_value = "PT10S")]
    deactivation_floor: String,
    /// Run this operator binary instead of building one with cargo.
    #[arg(long, env = "SANDBOX_OPERATOR")]
    operator: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exit_after = args
        .exit_after
        .as_deref()
        .map(accessgrant_sim::sandbox::parse_wait)
        .transpose()?;
    accessgrant_sim::sandbox::run(accessgrant_sim::sandbox::Config {
        exit_after,
        examples: args.examples,
        dir: args.dir,
        world: args.world,
        crds: PathBuf::from("crds"),
        user_roles: PathBuf::from("deploy/rbac-users.yaml"),
        operator_rbac: PathBuf::from("deploy/rbac.yaml"),
        deactivation_floor: args.deactivation_floor,
        operator: args.operator,
    })
    .await
}
