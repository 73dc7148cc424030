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

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: u64| {
        arg(&args, name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let seed = arg(&args, "--seed")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(soak::seed);
    let gap_ms = arg(&args, "--gap-ms")
        .and_then(|v| {
            let (a, b) = v.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((100, 1200));
    let cfg = soak::SoakConfig {
        seed,
        kills: num("--kills", 1000) as usize,
        jit_slots: num("--jit-slots", 8) as usize,
        pim_rgs: num("--pim-rgs", 4) as usize,
        gap_ms,
        step_secs: 600,
        operator_env: vec![(
            "RUST_LOG".into(),
            arg(&args, "--operator-log").unwrap_or_else(|| "warn".into()),
        )],
        extra_operators: num("--extra-operators", 0) as usize,
        window_secs: num("--window-secs", 0),
        only: match arg(&args, "--only").as_deref() {
            Some("expire") => Some(soak::Life::Expire),
            Some("renew") => Some(soak::Life::Renew),
            Some("delete") => Some(soak::Life::DeleteActive),
            Some("delete-early") => Some(soak::Life::DeleteEarly),
            Some("suspend") => Some(soak::Life::Suspend),
            _ => None,
        },
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
