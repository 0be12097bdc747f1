//! A webhook receiver: a real HTTP server on the loopback that records
//! every delivery, checks its signature with the Standard Webhooks library
//! (not PulseHub's code), and answers as the test scripts it: a status per
//! request in turn, then a default; or never.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use standardwebhooks::Webhook;

/// How the receiver answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Holds the request open and never answers.
    Hang,
}

/// One request, as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: i64,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the Standard Webhooks library said of the signature.
    pub verified: Result<(), String>,
    pub answer: Answer,
}

impl Delivery {
    /// The body, parsed.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }

    /// The messages of the batch.
    pub fn messages(&self) -> Vec<Value> {
        self.json()["data"]
            .as_array()
            .expect("`data` is an array")
            .clone()
    }
}

struct Shared {
    webhook: Webhook,
    script: Mutex<VecDeque<Answer>>,
    otherwise: Mutex<Answer>,
    deliveries: Mutex<Vec<Delivery>>,
    /// Requests answered (a hanging one is not).
    answered: AtomicUsize,
}

/// A running receiver; stops with the test's runtime.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
}

/// A fresh `whsec_` secret of 32 bytes.
pub fn secret(seed: u8) -> String {
    use base64::Engine as _;
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

impl Receiver {
    /// Starts a receiver that verifies with `secret` and answers `script`
    /// in turn, then `otherwise`.
    pub async fn start(secret: &str, script: &[Answer], otherwise: Answer) -> Receiver {
        let shared = Arc::new(Shared {
            webhook: Webhook::new(secret).expect("the library reads the secret"),
            script: Mutex::new(script.iter().copied().collect()),
            otherwise: Mutex::new(otherwise),
            deliveries: Mutex::default(),
            answered: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().expect("address").port();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            shared,
        }
    }

    /// From now on, answers `answer` once the script is used up.
    pub fn answer_from_now(&self, answer: Answer) {
        *self.shared.otherwise.lock().expect("lock") = answer;
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().expect("lock").clone()
    }

    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// The library's verdict on `body` under `headers`.
    pub fn verify(&self, body: &[u8], headers: &HeaderMap) -> Result<(), String> {
        self.shared
            .webhook
            .verify(body, headers)
            .map_err(|error| error.to_string())
    }

    /// Waits until `done` holds of the deliveries so far (three minutes at
    /// most).
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let deliveries = self.deliveries();
            if done(&deliveries) {
                return deliveries;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver never got {what}; it got {} deliveries",
                deliveries.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answer = shared
        .script
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or_else(|| *shared.otherwise.lock().expect("lock"));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delivery = Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
        verified: shared
            .webhook
            .verify(&body, &headers)
            .map_err(|error| error.to_string()),
        headers,
        body,
        answer,
    };
    shared.deliveries.lock().expect("lock").push(delivery);
    match answer {
        Answer::Status(status) => {
            shared.answered.fetch_add(1, Ordering::SeqCst);
            StatusCode::from_u16(status).expect("a status")
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
    }
}
