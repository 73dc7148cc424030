//! azure-sim: an HTTPS server that behaves like Azure (Entra token endpoint, ARM for Defender JIT
//! and PIM) for everything accessgrant-operator uses. See sim/README.md, section azure-sim.

pub mod arm;
pub mod clock;
pub mod control;
pub mod jit;
pub mod jwt;
pub mod pim;
pub mod server;
pub mod state;
pub mod time;
pub mod tls;
pub mod token;
pub mod view;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub use tls::install_crypto_provider;
pub use world::World;

/// How to run a sim.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    pub world: World,
    /// `(issuer, base_url)`: where to fetch OIDC discovery + JWKS for client assertions.
    pub oidc_discovery: Vec<(String, String)>,
    /// Extra DNS names for the server certificate (127.0.0.1, ::1 and localhost are always in).
    pub tls_names: Vec<String>,
}

impl SimConfig {
    pub fn new(world: World) -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            world,
            oidc_discovery: Vec::new(),
            tls_names: Vec::new(),
        }
    }
}

/// Errors starting the sim.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("tls: {0}")]
    Tls(String),
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
}

/// A running sim; shuts down when dropped or on [`RunningSim::shutdown`].
pub struct RunningSim {
    addr: SocketAddr,
    ca_pem: String,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `https://127.0.0.1:PORT` (ARM base URL and Entra authority host).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }
    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// Resolves when the server stops on its own (its task ended); pending while it runs,
    /// and for ever once [`RunningSim::shutdown`] has taken the task.
    pub async fn stopped(&mut self) {
        crate::task_ended(&mut self.task).await
    }
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Debug)]
struct ConnectionReset;

impl std::fmt::Display for ConnectionReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset (injected fault)")
    }
}

impl std::error::Error for ConnectionReset {}

/// Starts the sim on a tokio runtime; returns once it accepts connections.
pub async fn serve(config: SimConfig) -> Result<RunningSim, ServeError> {
    install_crypto_provider();
    let tls = tls::generate(&config.tls_names).map_err(ServeError::Tls)?;
    let now = clock::now();
    let token_lifetime = time::parse_duration(&config.world.settings.token_lifetime)
        .ok_or_else(|| ServeError::Config("settings.tokenLifetime".into()))?;
    let state = state::State::new(config.world, now).map_err(ServeError::Config)?;
    let rng = ring::rand::SystemRandom::new();
    let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
        .map_err(|_| ServeError::Config("cannot generate a signing key".into()))?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| ServeError::Config(format!("http client: {e}")))?;
    let shared = Arc::new(server::Shared {
        state: Mutex::new(state),
        key,
        token_lifetime,
        discovery: config.oidc_discovery,
        http,
    });
    let app = server::router(shared);
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        loop {
            let accepted = tokio::select! {
                _ = stop_rx.changed() => break,
                a = listener.accept() => a,
            };
            let Ok((tcp, peer)) = accepted else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let mut conn_stop = stop_rx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    _ => return,
                };
                let svc = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        req.extensions_mut().insert(server::RemoteAddr(peer));
                        async move {
                            let resp = match app.oneshot(req.map(axum::body::Body::new)).await {
                                Ok(r) => r,
                                Err(never) => match never {},
                            };
                            if resp.extensions().get::<server::ResetConnection>().is_some() {
                                return Err(ConnectionReset);
                            }
                            Ok(resp)
                        }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = conn_stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.as_mut()).await;
                    }
                }
            });
        }
    });
    Ok(RunningSim {
        addr,
        ca_pem: tls.ca_pem,
        stop,
        task: Some(task),
    })
}
