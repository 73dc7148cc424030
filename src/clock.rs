//! The only place that reads the wall clock. Everything else takes `now` as a parameter.

use chrono::{DateTime, Utc};

/// Current UTC time.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
