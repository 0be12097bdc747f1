//! What replays of the archive read and write: the archive's users and
//! events, a consistent cut of profiles and offsets, the backfills, and the
//! revision-checked write of recomputed profiles (see [`crate::replay`]).

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use sqlx::Row as _;

use super::{PgStore, owners, privacy};
use crate::model::profile::Profile;
use crate::replay::{BackfillRecord, Cut, Recorded, Redriven};
use crate::store::StoreResult;

/// One archived event with where it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRecord {
    pub partition: i32,
    pub offset: i64,
    /// The event as received.
    pub payload: String,
}

/// Where a replay got to, written with the profiles it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// A round of a page of backfill `id`: the page's last user, the events
    /// and users it covered, and the users (archive keys) this round
    /// computed, each with the key of the profile it belongs to. Once no
    /// profile was refused the page is done; before, the round's users
    /// whose profile was written are noted (`page_done`) all the same.
    Backfill {
        id: i64,
        after_user: &'a str,
        events: i64,
        users: i64,
        round: &'a [(&'a str, &'a str)],
    },
    /// A page of `rebuild --profiles`: its last user.
    Rebuild { after_user: &'a str },
}
impl PgStore {
    /// Up to `limit` user ids of the archive of `topic` after `after`, in
    /// byte order.
    pub async fn archive_users_after(
        &self,
        topic: &str,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        let users = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM events \
             WHERE topic = $1 AND ($2::text IS NULL OR user_id > $2) \
             ORDER BY user_id LIMIT $3",
        )
        .bind(topic)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .context("reading a page of the archive's users")?;
        Ok(users)
    }

    /// Up to `limit` keys of profiles after `after`, in byte order
    /// (pointers are not profiles).
    pub async fn profile_users_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        let users = sqlx::query_scalar(
            "SELECT user_id FROM profiles \
             WHERE ($1::text IS NULL OR user_id > $1) AND merged_into IS NULL \
             ORDER BY user_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .context("reading a page of the profiles' users")?;
        Ok(users)
    }

    /// The keys of `count` profiles picked at random, in byte order.
    pub async fn sample_users(&self, count: i64) -> StoreResult<Vec<String>> {
        let mut users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM profiles \
                 WHERE merged_into IS NULL ORDER BY random() LIMIT $1",
        )
        .bind(count)
        .fetch_all(self.pool())
        .await
        .context("sampling the profiles' users")?;
        users.sort_unstable();
        Ok(users)
    }

    /// The profiles `keys` belong to and the offsets `group` committed on
    /// `topic`, read in one snapshot: each profile holds the changes of
    /// exactly the records below those offsets. A key is any the archive
    /// files events under: a profile's, or a pointer's, whose pointers lead
    /// to the profile read for it ([`Cut::owners`]).
    pub async fn cut(&self, group: &str, topic: &str, keys: &[String]) -> StoreResult<Cut> {
        let mut tx = self.pool().begin().await.context("starting a snapshot")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .context("starting a snapshot")?;
        let offsets: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM consumer_offsets \
             WHERE group_id = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&mut *tx)
        .await
        .context("reading the enrich offsets")?;
        let owners = owners(&mut tx, keys).await?;
        let roots: BTreeSet<&String> = owners.values().collect();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, profile::text FROM profiles WHERE user_id = ANY($1)")
                .bind(roots.into_iter().collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await
                .context("reading the profiles of a page")?;
        let every: Vec<&String> = owners.keys().collect();
        let backfills = backfills(&mut *tx, group, topic).await?;
        let redriven = redriven(&mut *tx, group, topic, &every).await?;
        let suppressed: Vec<String> =
            sqlx::query_scalar("SELECT key FROM suppressions WHERE key = ANY($1)")
                .bind(&every)
                .fetch_all(&mut *tx)
                .await
                .context("reading the page's suppressions")?;
        tx.commit().await.context("ending a snapshot")?;
        let mut profiles = HashMap::with_capacity(rows.len());
        for (user_id, document) in rows {
            let profile: Profile = serde_json::from_str(&document)
                .with_context(|| format!("the stored profile of user {user_id} is unreadable"))?;
            profiles.insert(user_id, profile);
        }
        // A person is suppressed by any of their keys.
        let suppressed = suppressed
            .into_iter()
            .flat_map(|key| [owners.get(&key).cloned(), Some(key)])
            .flatten()
            .collect();
        Ok(Cut {
            offsets: offsets.into_iter().collect(),
            profiles,
            owners,
            backfills,
            redriven,
            suppressed,
        })
    }

    /// Which of the candidate keys each archived event of `topic` is filed
    /// under: `candidates` are (key, partition, offset); an event the
    /// archive does not hold under any of its candidates is absent. (The
    /// archive is found by key: its index leads with the key.)
    pub async fn filed_keys(
        &self,
        topic: &str,
        candidates: &[(String, i32, i64)],
    ) -> StoreResult<HashMap<(i32, i64), String>> {
        let mut keys = Vec::with_capacity(candidates.len());
        let mut partitions = Vec::with_capacity(candidates.len());
        let mut offsets = Vec::with_capacity(candidates.len());
        for (key, partition, offset) in candidates {
            keys.push(key);
            partitions.push(*partition);
            offsets.push(*offset);
        }
        let rows: Vec<(i32, i64, String)> = sqlx::query_as(
            "SELECT e.partition, e.\"offset\", e.user_id FROM events e \
             JOIN UNNEST($2::text[], $3::integer[], $4::bigint[]) AS c(key, partition, \"offset\") \
               ON e.user_id = c.key AND e.partition = c.partition \
                  AND e.\"offset\" = c.\"offset\" \
             WHERE e.topic = $1",
        )
        .bind(topic)
        .bind(&keys)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(self.pool())
        .await
        .context("reading where the archive filed events")?;
        Ok(rows
            .into_iter()
            .map(|(partition, offset, key)| ((partition, offset), key))
            .collect())
    }

    /// The archived events filed under `keys` on `topic` below `below`
    /// (partition to offset; partitions not in it have none), with the key
    /// each is filed under, in partition and offset order.
    pub async fn archived_events(
        &self,
        topic: &str,
        keys: &[&String],
        below: &HashMap<i32, i64>,
    ) -> StoreResult<Vec<(String, ArchivedRecord)>> {
        let (partitions, ends): (Vec<i32>, Vec<i64>) = below.iter().map(|(p, o)| (*p, *o)).unzip();
        let rows = sqlx::query(
            "SELECT e.user_id, e.partition, e.\"offset\", e.payload::text AS payload \
             FROM events e \
             JOIN UNNEST($3::integer[], $4::bigint[]) AS cut(partition, next_offset) \
               ON cut.partition = e.partition \
             WHERE e.topic = $1 AND e.user_id = ANY($2) AND e.\"offset\" < cut.next_offset \
             ORDER BY e.partition, e.\"offset\"",
        )
        .bind(topic)
        .bind(keys)
        .bind(&partitions)
        .bind(&ends)
        .fetch_all(self.pool())
        .await
        .context("reading archived events")?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.try_get("user_id")
                        .context("reading an archived event")?,
                    ArchivedRecord {
                        partition: row
                            .try_get("partition")
                            .context("reading an archived event")?,
                        offset: row.try_get("offset").context("reading an archived event")?,
                        payload: row
                            .try_get("payload")
                            .context("reading an archived event")?,
                    },
                ))
            })
            .collect()
    }

    /// Writes recomputed profiles, each only over the revision it was
    /// computed from, in one transaction. Returns the users whose profile
    /// another writer changed meanwhile (not written: compute them again).
    /// When none was, `step` notes the page done in the same transaction.
    pub async fn write_recomputed(
        &self,
        profiles: &mut [Profile],
        step: Option<Step<'_>>,
    ) -> StoreResult<BTreeSet<String>> {
        // What is defined now, as the enrich role evaluates it.
        self.refresh_segments().await?;
        let mut tx = self.pool().begin().await.context("starting a write")?;
        let suppressed = privacy::suppressed_among(&mut tx, profiles).await?;
        if !suppressed.is_empty() {
            // Suppressed since the profiles were read: read them again.
            return Ok(suppressed);
        }
        let refused = self
            .write_rewritten(&mut tx, profiles)
            .await?
            .refused_users(profiles);
        let changed = (profiles.len() - refused.len()) as i64;
        let done = refused.is_empty();
        match step {
            Some(Step::Backfill {
                id,
                after_user,
                events,
                users,
                round,
            }) => {
                let written: Vec<&str> = round
                    .iter()
                    .filter(|(_, owner)| !refused.contains(*owner))
                    .map(|(user, _)| *user)
                    .collect();
                sqlx::query(
                    "UPDATE plugin_backfills SET \
                         after_user = CASE WHEN $6 THEN $2 ELSE after_user END, \
                         events = events + CASE WHEN $6 THEN $3 ELSE 0 END, \
                         users_done = users_done + CASE WHEN $6 THEN $4 ELSE 0 END, \
                         page_done = CASE WHEN $6 THEN '{}' ELSE page_done || $7 END, \
                         changed = changed + $5, updated_at = now() \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(after_user)
                .bind(events)
                .bind(users)
                .bind(changed)
                .bind(done)
                .bind(&written)
                .execute(&mut *tx)
                .await
                .context("noting the backfill's progress")?;
            }
            Some(Step::Rebuild { after_user }) if done => {
                sqlx::query(
                    "INSERT INTO replay_progress (operation, after_user, updated_at) \
                     VALUES ('rebuild-profiles', $1, now()) \
                     ON CONFLICT (operation) DO UPDATE \
                     SET after_user = EXCLUDED.after_user, updated_at = now()",
                )
                .bind(after_user)
                .execute(&mut *tx)
                .await
                .context("noting the rebuild's progress")?;
            }
            _ => {}
        }
        tx.commit()
            .await
            .context("committing recomputed profiles")?;
        Ok(refused)
    }

    /// Where an interrupted `operation` (`rebuild-profiles`) got to.
    pub async fn replay_progress(&self, operation: &str) -> StoreResult<Option<String>> {
        let after =
            sqlx::query_scalar("SELECT after_user FROM replay_progress WHERE operation = $1")
                .bind(operation)
                .fetch_optional(self.pool())
                .await
                .context("reading a replay's progress")?;
        Ok(after)
    }

    /// Forgets the progress of `operation`, finished or restarted.
    pub async fn clear_replay_progress(&self, operation: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM replay_progress WHERE operation = $1")
            .bind(operation)
            .execute(self.pool())
            .await
            .context("clearing a replay's progress")?;
        Ok(())
    }

    /// How many users the archive of `topic` has.
    pub async fn count_archive_users(&self, topic: &str) -> StoreResult<i64> {
        let count =
            sqlx::query_scalar("SELECT count(DISTINCT user_id) FROM events WHERE topic = $1")
                .bind(topic)
                .fetch_one(self.pool())
                .await
                .context("counting the archive's users")?;
        Ok(count)
    }

    /// The backfills of `group` on `topic`, oldest first.
    pub async fn backfills(&self, group: &str, topic: &str) -> StoreResult<Vec<Recorded>> {
        Ok(backfills(self.pool(), group, topic).await?)
    }

    /// Records a new backfill; returns its id.
    pub async fn start_backfill(
        &self,
        group: &str,
        topic: &str,
        record: &BackfillRecord,
        actor: &str,
    ) -> StoreResult<i64> {
        let until: HashMap<String, i64> = record
            .until
            .iter()
            .map(|(p, o)| (p.to_string(), *o))
            .collect();
        let users = record
            .users
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .context("encoding the backfill's users")?;
        let id = sqlx::query_scalar(
            "INSERT INTO plugin_backfills (group_id, topic, plugin, version, since_ms, users, \
                 until_offsets, actor, started_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6::text::json, $7::text::json, $8, now(), now()) \
             RETURNING id",
        )
        .bind(group)
        .bind(topic)
        .bind(&record.plugin)
        .bind(&record.version)
        .bind(record.since_ms)
        .bind(users)
        .bind(serde_json::to_string(&until).context("encoding the backfill's offsets")?)
        .bind(actor)
        .fetch_one(self.pool())
        .await
        .context("recording the backfill")?;
        Ok(id)
    }

    /// Marks a backfill done.
    pub async fn finish_backfill(&self, id: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE plugin_backfills SET finished_at = now(), updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(self.pool())
        .await
        .context("marking the backfill done")?;
        Ok(())
    }
}

/// The backfills of `group` on `topic`, oldest first.
async fn backfills<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    group: &str,
    topic: &str,
) -> anyhow::Result<Vec<Recorded>> {
    let rows = sqlx::query(
        "SELECT id, plugin, version, since_ms, users::text AS users, \
                until_offsets::text AS until_offsets, finished_at IS NOT NULL AS finished, \
                after_user, users_done, page_done \
         FROM plugin_backfills WHERE group_id = $1 AND topic = $2 ORDER BY id",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(executor)
    .await
    .context("reading the backfills")?;
    rows.into_iter()
        .map(|row| -> anyhow::Result<Recorded> {
            let id: i64 = row.try_get("id")?;
            let users: Option<String> = row.try_get("users")?;
            let until: String = row.try_get("until_offsets")?;
            let until: HashMap<String, i64> = serde_json::from_str(&until)
                .with_context(|| format!("backfill {id}: until_offsets"))?;
            let until = until
                .into_iter()
                .map(|(p, o)| Ok((p.parse::<i32>()?, o)))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("backfill {id}: until_offsets"))?;
            Ok(Recorded {
                record: BackfillRecord {
                    id,
                    plugin: row.try_get("plugin")?,
                    version: row.try_get("version")?,
                    since_ms: row.try_get("since_ms")?,
                    users: users
                        .map(|text| serde_json::from_str(&text))
                        .transpose()
                        .with_context(|| format!("backfill {id}: users"))?,
                    until,
                    finished: row.try_get("finished")?,
                    after_user: row.try_get("after_user")?,
                    page_done: row
                        .try_get::<Vec<String>, _>("page_done")?
                        .into_iter()
                        .collect(),
                },
                users_done: row.try_get("users_done")?,
            })
        })
        .collect()
}

/// The dead letters of `users` re-driven with success.
async fn redriven<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    group: &str,
    topic: &str,
    users: &[&String],
) -> anyhow::Result<Vec<Redriven>> {
    let rows: Vec<(String, i32, i64, String)> = sqlx::query_as(
        "SELECT plugin, partition, \"offset\", version FROM dead_letter_redrives \
         WHERE group_id = $1 AND topic = $2 AND user_id = ANY($3) AND applied",
    )
    .bind(group)
    .bind(topic)
    .bind(users)
    .fetch_all(executor)
    .await
    .context("reading the re-driven dead letters")?;
    Ok(rows
        .into_iter()
        .map(|(plugin, partition, offset, version)| Redriven {
            plugin,
            partition,
            offset,
            version,
        })
        .collect())
}
