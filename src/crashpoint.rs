//! Crash injection for the crash-consistency harness: `ACCESSGRANT_CRASH_AT=<point>[:<n>]`
//! aborts the process (no destructors, no flushing: as abrupt as SIGKILL) the n-th time (default
//! 1st) the named side-effect boundary is reached. Unset in production, where each call costs
//! one relaxed atomic load.
//!
//! Points, in the order a reconcile meets them:
//! - `after-finalizer`: the finalizer patch was accepted.
//! - `after-intent`: the intent (attempt, request id) is in status; the Azure write is next.
//! - `after-azure-write`: Azure answered the write; its outcome is not yet in status.
//! - `after-status`: a status write (other than an intent) was accepted.
//! - `before-remove-finalizer`: Azure shows the access gone; the finalizer is still on.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Plan {
    point: String,
    nth: u64,
    seen: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let raw = std::env::var("ACCESSGRANT_CRASH_AT").ok()?;
        let (point, nth) = match raw.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (raw, 1),
        };
        Some(Plan {
            point,
            nth: nth.max(1),
            seen: AtomicU64::new(0),
        })
    })
    .as_ref()
}

/// Marks a side-effect boundary; aborts here when the harness asked for it.
pub fn hit(point: &str) {
    let Some(p) = plan() else { return };
    if p.point != point {
        return;
    }
    if p.seen.fetch_add(1, Ordering::SeqCst) + 1 == p.nth {
        eprintln!("crashpoint {point}: aborting as asked by ACCESSGRANT_CRASH_AT");
        std::process::abort();
    }
}
