//! What `pulsehub dlq redrive` records: for each dead-lettered event it ran
//! a plugin over, the version and whether it applied, written in the
//! transaction of the profile changes it made. An event re-driven with
//! success is never re-driven again; one that failed again keeps its new
//! error and may be tried with a later version.

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use sqlx::Row as _;

use super::PgStore;
use crate::model::profile::Profile;
use crate::store::StoreResult;

/// One dead-lettered event run through a plugin version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOutcome {
    pub partition: i32,
    pub offset: i64,
    pub plugin: String,
    pub user_id: String,
    pub version: String,
    /// `None`: applied. Else the kind of error and what the plugin said.
    pub error: Option<(String, String)>,
}

impl PgStore {
    /// Every dead letter run through a plugin version so far, by plugin,
    /// partition and offset, with its latest outcome.
    pub async fn redrive_outcomes(
        &self,
        group: &str,
        topic: &str,
    ) -> StoreResult<HashMap<(String, i32, i64), RedriveOutcome>> {
        let rows = sqlx::query(
            "SELECT partition, \"offset\", plugin, user_id, version, error_kind, detail \
             FROM dead_letter_redrives WHERE group_id = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(self.pool())
        .await
        .context("reading the re-driven dead letters")?;
        let mut outcomes = HashMap::with_capacity(rows.len());
        for row in rows {
            let kind: Option<String> = row.try_get("error_kind").context("error_kind")?;
            let detail: Option<String> = row.try_get("detail").context("detail")?;
            let outcome = RedriveOutcome {
                partition: row.try_get("partition").context("partition")?,
                offset: row.try_get("offset").context("offset")?,
                plugin: row.try_get("plugin").context("plugin")?,
                user_id: row.try_get("user_id").context("user_id")?,
                version: row.try_get("version").context("version")?,
                error: kind.map(|kind| (kind, detail.unwrap_or_default())),
            };
            let key = (outcome.plugin.clone(), outcome.partition, outcome.offset);
            outcomes.insert(key, outcome);
        }
        Ok(outcomes)
    }

    /// Writes the profiles a re-drive changed, each only over the revision
    /// it was computed from, and the outcomes of the users written, in one
    /// transaction. Returns the users whose profile another writer changed
    /// meanwhile: neither their profile nor their outcomes are written
    /// (compute them again). Fails, writing nothing, when another re-drive
    /// applied one of these letters first.
    pub async fn write_redriven(
        &self,
        group: &str,
        topic: &str,
        profiles: &mut [Profile],
        outcomes: &[RedriveOutcome],
    ) -> StoreResult<BTreeSet<String>> {
        // What is defined now, as the enrich role evaluates it.
        self.refresh_segments().await?;
        let mut tx = self.pool().begin().await.context("starting a write")?;
        let suppressed = super::privacy::suppressed_among(&mut tx, profiles).await?;
        if !suppressed.is_empty() {
            // Suppressed since the profiles were read: read them again.
            return Ok(suppressed);
        }
        let refused = self
            .write_rewritten(&mut tx, profiles)
            .await?
            .refused_users(profiles);
        let kept: Vec<&RedriveOutcome> = outcomes
            .iter()
            .filter(|o| !refused.contains(&o.user_id))
            .collect();
        let column = |f: fn(&RedriveOutcome) -> Option<String>| -> Vec<Option<String>> {
            kept.iter().map(|o| f(o)).collect()
        };
        let partitions: Vec<i32> = kept.iter().map(|o| o.partition).collect();
        let offsets: Vec<i64> = kept.iter().map(|o| o.offset).collect();
        let plugins = column(|o| Some(o.plugin.clone()));
        let users = column(|o| Some(o.user_id.clone()));
        let versions = column(|o| Some(o.version.clone()));
        let kinds = column(|o| o.error.as_ref().map(|(kind, _)| kind.clone()));
        let details = column(|o| o.error.as_ref().map(|(_, detail)| detail.clone()));
        // An outcome replaces a failed one, never an applied one: a letter
        // applied twice would count its event twice.
        let recorded = sqlx::query(
            "INSERT INTO dead_letter_redrives AS r \
                 (group_id, topic, partition, \"offset\", plugin, user_id, version, applied, \
                  error_kind, detail, attempts, redriven_at) \
             SELECT $1, $2, o.partition, o.offset, o.plugin, o.user_id, o.version, \
                    o.error_kind IS NULL, o.error_kind, o.detail, 1, now() \
             FROM UNNEST($3::integer[], $4::bigint[], $5::text[], $6::text[], $7::text[], \
                         $8::text[], $9::text[]) \
                  AS o(partition, \"offset\", plugin, user_id, version, error_kind, detail) \
             ON CONFLICT (group_id, topic, partition, \"offset\", plugin) DO UPDATE SET \
                 version = EXCLUDED.version, applied = EXCLUDED.applied, \
                 error_kind = EXCLUDED.error_kind, detail = EXCLUDED.detail, \
                 attempts = r.attempts + 1, redriven_at = now() \
             WHERE NOT r.applied",
        )
        .bind(group)
        .bind(topic)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&plugins)
        .bind(&users)
        .bind(&versions)
        .bind(&kinds)
        .bind(&details)
        .execute(&mut *tx)
        .await
        .context("recording the re-driven dead letters")?
        .rows_affected();
        if recorded != kept.len() as u64 {
            tx.rollback().await.context("rolling back a re-drive")?;
            return Err(anyhow::anyhow!(
                "{} of {} dead letters were re-driven by another run meanwhile; nothing of \
                 this page was written: run the re-drive again",
                kept.len() as u64 - recorded,
                kept.len()
            )
            .into());
        }
        tx.commit().await.context("committing a re-drive")?;
        Ok(refused)
    }
}
