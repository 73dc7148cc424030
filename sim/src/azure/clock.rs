//! The one place azure-sim reads the wall clock (expiry is by wall clock, as in Azure).

use chrono::{DateTime, Utc};

/// Current UTC time.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
