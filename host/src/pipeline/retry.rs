//! Waiting out a backend: the one retry loop of PulseHub.
//!
//! Every loop that waits for PostgreSQL, Redis, the broker or the dead-letter
//! sink calls [`retry`] with a [`Backoff`] and says when to give up
//! ([`Until`]): the lanes and the Kafka source wait until they are stopped
//! (nothing moves until the backend is back), start-up waits a bounded time
//! (so PulseHub may start before its database does, but not hang forever).

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Delays between attempts: `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// A lane's batch against a backend: 50 ms, doubling up to 5 s.
    pub const LANE: Backoff = Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_secs(5),
    };
    /// The Kafka source reading stored offsets on a partition assignment:
    /// 100 ms, doubling up to 5 s.
    pub const ASSIGNMENT: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    /// A start-up step: every 2 s.
    pub const START_UP: Backoff = Backoff {
        first: Duration::from_secs(2),
        max: Duration::from_secs(2),
    };

    /// The delay after `delay`.
    fn after(self, delay: Duration) -> Duration {
        (delay * 2).min(self.max)
    }
}

/// When [`retry`] stops trying.
#[derive(Debug, Clone, Copy)]
pub enum Until<'a> {
    /// Never gives up on its own; stops when the token is cancelled.
    Stopped(&'a CancellationToken),
    /// Gives up on the first failure after this long since the first
    /// attempt.
    Elapsed(Duration),
}

/// Why [`retry`] returned without a value.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// The stop token was cancelled while waiting.
    Stopped,
    /// The time of [`Until::Elapsed`] ran out; the last error.
    TimedOut(E),
}

/// Runs `attempt` until it succeeds, waiting between failures as `backoff`
/// says and logging each failure as a warning naming `what`.
///
/// `attempt` is a closure returning a future (`|| store.ping()`), not an
/// `async` closure: the futures of `async` closures cannot yet be shown to be
/// `Send`, and start-up runs on spawned tasks.
pub async fn retry<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    backoff: Backoff,
    until: Until<'_>,
    mut attempt: impl FnMut() -> F,
) -> Result<T, GaveUp<E>> {
    let started = Instant::now();
    let mut delay = backoff.first;
    loop {
        if let Until::Stopped(stop) = until
            && stop.is_cancelled()
        {
            return Err(GaveUp::Stopped);
        }
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        match until {
            Until::Elapsed(limit) if started.elapsed() >= limit => {
                return Err(GaveUp::TimedOut(error));
            }
            _ => {}
        }
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            "{what} failed, retrying: {error:#}"
        );
        match until {
            Until::Stopped(stop) => tokio::select! {
                () = stop.cancelled() => return Err(GaveUp::Stopped),
                () = tokio::time::sleep(delay) => {}
            },
            Until::Elapsed(_) => tokio::time::sleep(delay).await,
        }
        delay = backoff.after(delay);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails `failures` times, then answers with the attempt count, noting
    /// the (paused) time of every attempt.
    struct Flaky {
        failures: u32,
        attempts: AtomicU32,
        at: std::sync::Mutex<Vec<Duration>>,
        start: Instant,
    }

    impl Flaky {
        fn new(failures: u32) -> Arc<Flaky> {
            Arc::new(Flaky {
                failures,
                attempts: AtomicU32::new(0),
                at: std::sync::Mutex::new(Vec::new()),
                start: Instant::now(),
            })
        }

        async fn attempt(&self) -> Result<u32, String> {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
            self.at
                .lock()
                .expect("not poisoned")
                .push(self.start.elapsed());
            if n <= self.failures {
                Err(format!("failure {n}"))
            } else {
                Ok(n)
            }
        }

        fn times(&self) -> Vec<Duration> {
            self.at.lock().expect("not poisoned").clone()
        }
    }

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_maximum() {
        let flaky = Flaky::new(5);
        let stop = CancellationToken::new();
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let value = retry("probing", backoff, Until::Stopped(&stop), || {
            flaky.attempt()
        })
        .await;
        assert_eq!(value, Ok(6));
        // 100, 200, 400, then capped at 500.
        assert_eq!(flaky.times(), ms(&[0, 100, 300, 700, 1200, 1700]));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_the_token_ends_the_wait() {
        let flaky = Flaky::new(u32::MAX);
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        let value = retry("probing", Backoff::LANE, Until::Stopped(&stop), || {
            flaky.attempt()
        })
        .await;
        assert_eq!(value, Err(GaveUp::Stopped));
        // Stopped during the wait that began at 750 ms, not after it.
        assert_eq!(started.elapsed(), Duration::from_millis(1_000));
        assert_eq!(flaky.times(), ms(&[0, 50, 150, 350, 750]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_gives_up_with_the_last_error() {
        let flaky = Flaky::new(u32::MAX);
        let value = retry(
            "migrating",
            Backoff::START_UP,
            Until::Elapsed(Duration::from_secs(5)),
            || flaky.attempt(),
        )
        .await;
        // Attempts at 0, 2, 4 and 6 s; the one at 6 s is past the limit.
        assert_eq!(value, Err(GaveUp::TimedOut("failure 4".to_owned())));
        assert_eq!(flaky.times(), ms(&[0, 2_000, 4_000, 6_000]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_is_returned_at_once() {
        let flaky = Flaky::new(0);
        let value = retry(
            "probing",
            Backoff::LANE,
            Until::Elapsed(Duration::ZERO),
            || flaky.attempt(),
        )
        .await;
        assert_eq!(value, Ok(1));
    }
}
