//! Throttling storm against the real operator binary: azure-sim answers every ARM call on one
//! subscription with 429 and `Retry-After: 5` for a minute, while grants wait on it and on a
//! second, healthy subscription (see tests/e2e_support/storm.rs for what is checked). The
//! minutes-long storm is `cargo bench --bench throttle_storm`.

use crate::e2e_support;

use e2e_support::storm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_429s_on_one_subscription() {
    let _heavy = crate::one_heavy_at_a_time().await;
    let r = storm::run(60, 5).await;
    println!(
        "storm: {}s of 429 (Retry-After {}s) on one subscription: {} calls reached it ({} answered 429), \
         shortest gap after a 429 in its bucket {:?} ms, calls before Retry-After: {}; \
         healthy subscription Active after {:.1}s; throttled one, near the storm's end: {:?}; \
         its first answered call {:?}s after the storm, all Active {:.1}s after it; {:.0}s in all",
        r.storm_secs,
        r.retry_after_secs,
        r.throttled_calls,
        r.throttled_429,
        r.min_gap_ms,
        r.early_calls.len(),
        r.healthy_active_secs,
        r.waiting,
        r.first_success_after_storm_secs,
        r.converge_after_storm_secs,
        r.secs
    );
    assert!(
        r.early_calls.is_empty(),
        "calls before Retry-After elapsed: {:#?}",
        r.early_calls
    );
    assert!(r.throttled_429 > 0, "the storm hit");
    assert!(
        r.first_success_after_storm_secs.is_some_and(|s| s >= -0.5),
        "nothing got through before the storm ended: {:?}",
        r.first_success_after_storm_secs
    );
    assert!(
        r.min_gap_ms.is_some_and(|g| g >= 5000),
        "the operator came back after the storm's Retry-After: {:?}",
        r.min_gap_ms
    );
}
