//! The 1,000-kill crash soak: the real operator binary, kube-sim and azure-sim, a mixed workload
//! (JIT and PIM grants that expire, renew, are deleted or suspended) and the operator SIGKILLed
//! (Child::kill) at random moments and restarted, `--kills` times (default 1000). Then every
//! grant must finish its life and azure-sim must show no double grant and no orphan
//! (tests/e2e_support/soak.rs). Prints figures; exits non-zero on a finding.
//!
//! `cargo bench --bench crash_soak [-- --kills N --seed S --gap-ms MIN-MAX --jit-slots N
//! --pim-rgs N --operator-log LEVEL --only expire|renew|delete|delete-early|suspend]`.
//!
//! `--extra-operators 1 --window-secs 30 --kills 0`: two operators at once with leader election
//! off (a split brain), new lives starting for 30 s; the same audit must hold (0 double grants:
//! one JIT initiation per marker, one PIM grant request per attempt, no more grant requests than
//! renewals counted). Every Azure write follows an intent write guarded by the resourceVersion
//! the plan was made from (finalizer and status writes are guarded too), and an intent whose
//! write may still be in flight at the other replica is adopted once Azure shows it, sent again
//! only where Azure dedups it (PIM request names), and otherwise waited out (see
//! `lifecycle::PlannerConfig::write_deadline`). tests/crash.rs runs a 20 s version
//! (`two_operators_without_leader_election`); figures in BENCHMARKS.md. Leader election, on by
//! default in the chart and kustomize base, keeps it to one writer anyway.
//!
//! `ACCESSGRANT_OPERATOR_BIN` pins the operator binary (a shared target directory may hold
//! another worktree's build at the default path). The seed is printed; the same seed replays
//! the same workload choices and kill
//! gaps (the moments they land on depend on timing). tests/crash.rs runs a 60-kill version.

#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;
#[path = "../tests/wait/mod.rs"]
mod wait;

use e2e_support::soak;

/// The 1,000-kill crash soak (flags are checked: a bad value is an error, not the default).
#[derive(clap::Parser, Debug)]
#[command(name = "crash_soak")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// SIGKILLs to perform.
    #[arg(long, default_value_t = 1000)]
    kills: usize,
    /// RNG seed (printed; the same seed replays the workload choices and kill gaps).
    #[arg(long)]
    seed: Option<u64>,
    /// Milliseconds between a restart and the next kill: uniform in MIN-MAX.
    #[arg(long, value_name = "MIN-MAX", default_value = "100-1200", value_parser = gap)]
    gap_ms: (u64, u64),
    /// JIT slots (one VM port each).
    #[arg(long, default_value_t = 8)]
    jit_slots: usize,
    /// Resource groups; each gives an Activate and an Assign slot.
    #[arg(long, default_value_t = 4)]
    pim_rgs: usize,
    /// The operator's RUST_LOG.
    #[arg(long, default_value = "warn")]
    operator_log: String,
    /// More operators alongside, all without leader election (never killed).
    #[arg(long, default_value_t = 0)]
    extra_operators: usize,
    /// With no kills: how long new lives keep starting (seconds).
    #[arg(long, default_value_t = 0)]
    window_secs: u64,
    /// Only this life (to chase one flow).
    #[arg(long, value_enum)]
    only: Option<Only>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Only {
    Expire,
    Renew,
    Delete,
    DeleteEarly,
    Suspend,
}

fn gap(v: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{v:?} is not MIN-MAX milliseconds (e.g. 100-1200)");
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b {
        return Err(format!("{v:?}: MIN is more than MAX"));
    }
    Ok((a, b))
}

fn main() {
    use clap::Parser;
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(soak::seed);
    let gap_ms = args.gap_ms;
    let cfg = soak::SoakConfig {
        seed,
        kills: args.kills,
        jit_slots: args.jit_slots,
        pim_rgs: args.pim_rgs,
        gap_ms,
        step_secs: 600,
        operator_env: vec![("RUST_LOG".into(), args.operator_log.clone())],
        extra_operators: args.extra_operators,
        window_secs: args.window_secs,
        only: args.only.map(|o| match o {
            Only::Expire => soak::Life::Expire,
            Only::Renew => soak::Life::Renew,
            Only::Delete => soak::Life::DeleteActive,
            Only::DeleteEarly => soak::Life::DeleteEarly,
            Only::Suspend => soak::Life::Suspend,
        }),
    };
    println!(
        "crash soak: seed {seed} (replay: --seed {seed}), {} kills, gaps {}-{} ms, {} JIT slots, {} PIM resource groups",
        cfg.kills, gap_ms.0, gap_ms.1, cfg.jit_slots, cfg.pim_rgs
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(soak::run(cfg));
    println!("kills (SIGKILL, then restart):     {}", r.kills);
    println!("time while killing:                {:.0} s", r.kill_secs);
    println!("total time:                        {:.0} s", r.secs);
    println!("grant lives finished:              {}", r.grants);
    for (life, n) in &r.lives {
        println!("  {life:<28} {n}");
    }
    println!("renewals:                          {}", r.renewals);
    println!("JIT markers (requests by attempt): {}", r.jit_markers);
    println!("Azure writes (2xx):                {}", r.azure_writes);
    println!(
        "double grants:                     {}",
        r.audit.double_grants.len()
    );
    println!(
        "orphaned access:                   {}",
        r.audit.orphans.len()
    );
    println!("lives that went wrong:             {}", r.findings.len());
    println!("PIM replays adopted (409):         {}", r.pim_replays);
    println!("Azure calls answered 429:          {}", r.throttled);
    for (grant, life, secs) in &r.slowest {
        println!("  slow life: {grant} {life} {secs:.0} s");
    }
    if !(r.audit.double_grants.is_empty() && r.audit.orphans.is_empty() && r.findings.is_empty()) {
        println!("double grants: {:#?}", r.audit.double_grants);
        println!("orphans: {:#?}", r.audit.orphans);
        println!("lives that went wrong: {:#?}", r.findings);
        std::process::exit(1);
    }
}
