//! The relay of the `profile-updates` outbox: reads the rows the commits
//! wrote, in `id` order, publishes them (key: the profile id), and deletes
//! them once the broker acknowledged every one. A crash between the two
//! publishes them again; nothing committed is skipped, because the relay
//! keeps no position of its own: whatever is in the table is still to go.
//!
//! One relay runs per database, whichever process holds the advisory lock
//! ([`RELAY_LOCK`]) on its connection; the others wait to take over. So
//! the rows of one profile are published by one producer, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Row as _};
use tokio_util::sync::CancellationToken;

use super::handoff::Handoff;
use crate::pipeline::publish::{EventPublisher, OutgoingEvent};

/// The advisory lock of the one relay of a database.
pub const RELAY_LOCK: i64 = 0x7075_6c73_6875_6201; // "pulshub" 01

/// How many outbox rows (commits) one round publishes at most.
const ROUND_ROWS: i64 = 16;

/// How long an idle relay waits before it looks again; the stream's delay
/// when little happens.
const IDLE: Duration = Duration::from_millis(100);

/// How long the relay waits after an error (the broker or the database
/// unreachable) before it tries again, and how often a relay without the
/// lock asks for it.
const RETRY: Duration = Duration::from_secs(1);

pub struct Relay {
    pub pool: PgPool,
    pub publisher: Arc<dyn EventPublisher>,
    /// What this process's commits wrote, so a round reads only row ids.
    pub handoff: Arc<Handoff>,
}

impl Relay {
    /// Relays until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.lead(&stop) => outcome,
            };
            if let Err(error) = outcome {
                tracing::warn!("profile-updates relay: {error:#}; trying again in {RETRY:?}");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Takes the lock, then relays until an error.
    async fn lead(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .context("connecting for the relay")?;
        loop {
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *connection)
                .await
                .context("asking for the relay's lock")?;
            if held {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETRY) => {}
            }
        }
        tracing::info!("relaying profile updates");
        loop {
            let relayed = self.round(&mut connection).await?;
            if relayed == 0 {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(IDLE) => {}
                }
            }
        }
    }

    /// Publishes the messages of the oldest rows and deletes the rows;
    /// returns how many messages.
    async fn round(&self, connection: &mut PoolConnection<Postgres>) -> anyhow::Result<usize> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM profile_updates ORDER BY id LIMIT $1")
                .bind(ROUND_ROWS)
                .fetch_all(&mut **connection)
                .await
                .context("reading the profile-updates outbox")?;
        let Some(&last) = ids.last() else {
            return Ok(0);
        };
        let mut rows: BTreeMap<i64, Vec<OutgoingEvent>> = BTreeMap::new();
        let mut missing = Vec::new();
        for &id in &ids {
            match self.handoff.take(id) {
                Some(messages) => {
                    rows.insert(id, messages);
                }
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            rows.extend(read_rows(connection, &missing).await?);
        }
        let messages: Vec<OutgoingEvent> = rows.into_values().flatten().collect();
        if let Err(error) = self.publisher.publish(&messages).await {
            // Read again next time, from the outbox.
            return Err(anyhow::Error::new(error).context("publishing profile updates"));
        }
        sqlx::query("DELETE FROM profile_updates WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut **connection)
            .await
            .context("deleting relayed profile updates")?;
        self.handoff.forget_through(last);
        Ok(messages.len())
    }
}

/// The messages of outbox rows `ids`, by row.
async fn read_rows(
    connection: &mut PoolConnection<Postgres>,
    ids: &[i64],
) -> anyhow::Result<BTreeMap<i64, Vec<OutgoingEvent>>> {
    let rows =
        sqlx::query("SELECT id, profile_ids, messages FROM profile_updates WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **connection)
            .await
            .context("reading profile updates from the outbox")?;
    let mut read = BTreeMap::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let keys: Vec<String> = row.try_get("profile_ids")?;
        let values: Vec<String> = row.try_get("messages")?;
        anyhow::ensure!(
            keys.len() == values.len(),
            "profile-updates row {id} holds {} profile ids for {} messages",
            keys.len(),
            values.len()
        );
        let messages = keys
            .into_iter()
            .zip(values)
            .map(|(key, message)| OutgoingEvent {
                key,
                payload: message.into_bytes(),
            })
            .collect();
        read.insert(id, messages);
    }
    Ok(read)
}
