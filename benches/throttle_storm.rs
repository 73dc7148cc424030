//! A throttling storm of minutes: azure-sim answers every ARM call on one subscription with 429
//! and Retry-After for `--storm-secs` (default 300), while grants wait on it and on a second,
//! healthy subscription (tests/e2e_support/storm.rs). Prints figures; exits non-zero when a call
//! reached a throttled bucket before its Retry-After (the run panics on the other checks: the
//! healthy subscription's grants Active during the storm, every grant Active after it, no double
//! grant or orphan). tests/storm.rs runs a one-minute storm.
//!
//! `cargo bench --bench throttle_storm [-- --storm-secs N --retry-after N]`

#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;
#[path = "../tests/wait/mod.rs"]
mod wait;

/// A throttling storm of minutes (flags are checked: a bad value is an error).
#[derive(clap::Parser, Debug)]
#[command(name = "throttle_storm")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// How long azure-sim answers the throttled subscription with 429 (seconds).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    storm_secs: u64,
    /// The Retry-After azure-sim sends (seconds).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    retry_after: u64,
}

fn main() {
    use clap::Parser;
    let Args {
        storm_secs,
        retry_after,
        ..
    } = Args::parse();
    println!(
        "throttle storm: {storm_secs} s of 429 with Retry-After {retry_after} s on one subscription"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(e2e_support::storm::run(storm_secs, retry_after));
    println!(
        "calls to the throttled subscription:   {}",
        r.throttled_calls
    );
    println!("  answered 429:                        {}", r.throttled_429);
    println!(
        "  before Retry-After elapsed:          {}",
        r.early_calls.len()
    );
    println!(
        "  shortest gap after a 429 (bucket):   {} ms",
        r.min_gap_ms.map_or("-".into(), |g| g.to_string())
    );
    println!(
        "healthy subscription all Active after: {:.1} s",
        r.healthy_active_secs
    );
    println!("throttled grants near the storm's end: {:?}", r.waiting);
    println!(
        "first answered call after the storm:  {} s",
        r.first_success_after_storm_secs
            .map_or("-".into(), |s| format!("{s:.1}"))
    );
    println!(
        "throttled grants all Active after it:  {:.1} s",
        r.converge_after_storm_secs
    );
    println!("total time:                            {:.0} s", r.secs);
    if !r.early_calls.is_empty() {
        println!("early calls: {:#?}", r.early_calls);
        std::process::exit(1);
    }
}
