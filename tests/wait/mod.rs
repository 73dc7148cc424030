//! The one way tests wait: re-check a condition until it holds or a deadline passes.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// Re-evaluates `check` (every `every`) until it returns `Some`, or panics after `within` with
/// `what` and the last state `describe`d.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let until = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) => {
                assert!(
                    Instant::now() < until,
                    "timed out after {within:?} waiting for {what}; last: {state}"
                );
            }
        }
        tokio::time::sleep(every).await;
    }
}
