//! A TCP proxy in front of a service (PostgreSQL, Redis) that a test can
//! cut, to make the service fail and recover without disturbing the server
//! other tests use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy: it listens on a port of 127.0.0.1 of its own and forwards
/// each connection to the upstream. [`cut`](Proxy::cut) ends every
/// connection and refuses new ones until [`restore`](Proxy::restore).
/// Dropping it stops it and ends its connections.
pub struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (accept_up, accept_cut, accept_stop) = (up.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut client = tokio::select! {
                    _ = accept_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let cut = accept_cut.lock().expect("proxy lock").clone();
                // Checked after taking the token: `cut` clears the flag
                // before it swaps the token, so a connection accepted while
                // it runs is either refused here or holds the token it cuts.
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        // A cut wins over bytes waiting to be copied: after
                        // `cut`, nothing more reaches the service.
                        biased;
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            cut,
            stop,
        }
    }

    /// The port the proxy listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Ends every connection and refuses new ones: the service is gone.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut cut = self.cut.lock().expect("proxy lock");
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Lets connections through again: the service is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let credentials = authority.rfind('@').map_or("", |at| &authority[..=at]);
        format!("{scheme}://{credentials}{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().expect("proxy lock").cancel();
    }
}
