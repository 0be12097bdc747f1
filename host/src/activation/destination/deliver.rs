//! One delivery: a signed `POST` of a batch to a destination's URL, and
//! what its answer means for the schedule (contract §5): any `2xx` is
//! delivered; `410 Gone` disables the destination; everything else
//! (`429`, `5xx`, other statuses, no answer within the timeout, no
//! connection) is tried again later, after at least the `Retry-After`
//! the receiver asked for.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use reqwest::{StatusCode, Url};

use super::guard::{GuardedResolver, refuse};
use super::sign::{Secret, signature_header};

/// The longest `Retry-After` honoured: a receiver cannot park a
/// destination for longer than this per attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// `410 Gone`: the receiver wants no more.
    Gone,
    /// Try again: why, and the `Retry-After` asked for, if any.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// The HTTP client of every destination.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    /// A client that gives up on a receiver after `timeout`, follows no
    /// redirect, uses no proxy, and connects to private addresses only if
    /// `allow_private`.
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Sender> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(GuardedResolver { allow_private }))
            .build()?;
        Ok(Sender {
            client,
            allow_private,
        })
    }

    /// Whether it may reach loopback and private addresses
    /// (`activation.allow_private_networks`).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Posts `body`, signed with `secrets` under `id` and the current
    /// time; returns what came of it and how long the receiver took.
    pub async fn send(
        &self,
        url: &str,
        secrets: &[Secret],
        id: &str,
        body: &str,
    ) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = self.attempt(url, secrets, id, body).await;
        (outcome, started.elapsed())
    }

    async fn attempt(&self, url: &str, secrets: &[Secret], id: &str, body: &str) -> Outcome {
        let failed = |reason: String| Outcome::Failed {
            reason,
            retry_after: None,
        };
        let parsed = match Url::parse(url) {
            Ok(parsed) => parsed,
            Err(error) => return failed(format!("the URL does not parse: {error}")),
        };
        if let Some(why) = refuse(&parsed, self.allow_private) {
            return failed(why);
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let response = self
            .client
            .post(parsed)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("PulseHub/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(secrets, id, timestamp, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return failed(describe(&error)),
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        if status == StatusCode::GONE {
            return Outcome::Gone;
        }
        Outcome::Failed {
            reason: format!("the receiver answered {status}"),
            retry_after: retry_after(response.headers()),
        }
    }
}

/// An error of the client, with its causes (the resolver's refusal, the
/// timeout) in one line.
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "the receiver did not answer in time".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds (an HTTP date is not honoured), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "99999999".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn private_addresses_are_refused_before_connecting() {
        let sender = Sender::new(Duration::from_secs(1), false).expect("client");
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let (outcome, _) = sender
            .send(
                "http://127.0.0.1:9/hook",
                std::slice::from_ref(&secret),
                "msg_1",
                "{}",
            )
            .await;
        let Outcome::Failed { reason, .. } = outcome else {
            panic!("sent to the loopback: {outcome:?}");
        };
        assert!(reason.contains("allow_private_networks"), "{reason}");
        let (outcome, _) = sender
            .send("http://localhost.:9/hook", &[secret], "msg_1", "{}")
            .await;
        assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    }
}
