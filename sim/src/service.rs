//! A stand-in for a Kubernetes Service in front of several replicas: a TCP proxy on a loopback
//! port that sends each new connection to a replica whose readiness probe passes (as
//! kube-proxy does with a Service's ready endpoints). TLS passes through untouched, so the
//! replicas' own certificate is what the client sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One replica: where it serves, and its readiness probe (`http://…/readyz/...`).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub readiness_url: String,
}

/// A running Service; stops when dropped.
pub struct Service {
    addr: SocketAddr,
    ready: watch::Receiver<Vec<bool>>,
    stop: watch::Sender<bool>,
}

impl Service {
    /// Starts the proxy; the readiness probes run every `period`.
    pub async fn start(endpoints: Vec<Endpoint>, period: Duration) -> std::io::Result<Service> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (ready_tx, ready) = watch::channel(vec![false; endpoints.len()]);
        let (stop, stop_rx) = watch::channel(false);
        let endpoints = Arc::new(endpoints);
        {
            let endpoints = endpoints.clone();
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(1))
                    .build()
                    .unwrap_or_default();
                loop {
                    let mut now = Vec::with_capacity(endpoints.len());
                    for e in endpoints.iter() {
                        let ok = http
                            .get(&e.readiness_url)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        now.push(ok);
                    }
                    let _ = ready_tx.send(now);
                    tokio::select! {
                        _ = stop_rx.changed() => return,
                        _ = tokio::time::sleep(period) => {}
                    }
                }
            });
        }
        let next = Arc::new(AtomicUsize::new(0));
        {
            let ready = ready.clone();
            let mut stop_rx = stop_rx;
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop_rx.changed() => return,
                        a = listener.accept() => a,
                    };
                    let Ok((client, _)) = accepted else { continue };
                    let endpoints = endpoints.clone();
                    let ready = ready.borrow().clone();
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        // Ready endpoints in turn from a rotating start; a refused connection
                        // (a replica that just went away) moves on to the next.
                        let n = endpoints.len();
                        for k in 0..n {
                            let i = (start + k) % n;
                            if !ready.get(i).copied().unwrap_or(false) {
                                continue;
                            }
                            if let Ok(backend) = TcpStream::connect(endpoints[i].addr).await {
                                let (mut c, mut b) = (client, backend);
                                let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                                return;
                            }
                        }
                        // No ready endpoint: the connection is closed, as with no endpoints.
                    });
                }
            });
        }
        Ok(Service { addr, ready, stop })
    }

    /// The Service's address (its ClusterIP:port stand-in).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which endpoints passed their last readiness probe.
    pub fn ready(&self) -> Vec<bool> {
        self.ready.borrow().clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
