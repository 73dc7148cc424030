//! The only place kube-sim reads the wall clock (a server stamps real times).

/// Now, in UTC.
#[allow(clippy::disallowed_methods)] // the simulator's single clock read
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
