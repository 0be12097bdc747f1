//! `GET /api/v1/profile-updates`: the `profile-updates` stream (contract
//! §3a) as server-sent events, where the process keeps it (the embedded
//! mode's log, [`UpdateFeed`]); with Kafka, a problem pointing at the topic.
//!
//! Each message is one event: `id` its sequence number, `event` its `type`,
//! `data` its JSON as published. A reader resumes after the `Last-Event-ID`
//! it sends (as a browser's `EventSource` does on reconnecting) or the
//! `after` query parameter; with neither, it reads new messages only. When
//! the messages right after its position are no longer kept, the stream
//! says so first, with a `gap` event.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::{AppState, Problem};
use crate::activation::feed::{StoredUpdate, UpdateFeed};

/// Messages read from the log at a time.
const PAGE: usize = 500;
/// How often an idle stream sends a comment, so that proxies and clients
/// keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The request header a reader resumes with (the SSE standard's).
const LAST_EVENT_ID: &str = "last-event-id";
/// The event that says messages after the reader's position are gone.
const GAP: &str = "gap";
/// Most digits of a `Last-Event-ID`, and the largest `after`: the bounds the
/// OpenAPI document states, far above any sequence number given.
const MAX_ID_DIGITS: usize = 18;
const MAX_AFTER: u64 = i64::MAX as u64;

/// Where this process's `profile-updates` stream can be read.
#[derive(Clone)]
pub enum UpdateStream {
    /// Here, from the embedded store's log.
    Feed(Arc<dyn UpdateFeed>),
    /// From this Kafka topic (services mode).
    Topic(String),
    /// Nowhere: `activation.profile_updates` is off.
    Off,
}

/// One server-sent event of the stream, as a client's parser reads it.
#[derive(Debug, ToSchema)]
#[expect(
    dead_code,
    reason = "never built: the document's shape of what the stream writes"
)]
pub(super) struct ProfileUpdateEvent {
    /// The message's sequence number (absent on a `gap` event).
    #[schema(nullable = false)]
    id: Option<String>,
    /// `profile.updated`, `segment.entered`, `segment.exited`,
    /// `profile.deleted`, or `gap`.
    event: String,
    /// The message's JSON, as on the `profile-updates` topic; for `gap`,
    /// `{"oldest": N}`.
    data: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    /// Start after the message with this sequence number; `0`: from the
    /// oldest message kept. Without it and without `Last-Event-ID`, the
    /// stream starts at its end (new messages only). `Last-Event-ID` wins
    /// over it.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after: Option<u64>,
    /// `false`: end the response once it has sent every message there is,
    /// instead of waiting for new ones (default `true`).
    follow: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/api/v1/profile-updates",
    operation_id = "stream_profile_updates",
    tag = "updates",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9]{1,18}$",
            description = "The `id` of the last event read: the stream resumes after it"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = ProfileUpdateEvent,
            description = "Server-sent events, one per message: `id` the message's sequence \
                number, `event` its `type` (`profile.updated`, `segment.entered`, \
                `segment.exited`, `profile.deleted`), `data` its JSON as on the `profile-updates` topic. First, \
                when the messages right after the position asked for are no longer kept, an \
                event `gap` with data `{\"oldest\": N}`: the stream goes on from message N. \
                A comment every 15 s while idle."),
        (status = 400, description = "`after`, `follow` or `Last-Event-ID` is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This process does not keep the stream: with Kafka, read the topic `kafka.updates_topic`; or `activation.profile_updates` is off", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|error| {
        Problem::invalid_stream_query(&format!(
            "the query takes `after` (a sequence number) and `follow` (true or false): {}",
            error.body_text()
        ))
    })?;
    if query.after.is_some_and(|after| after > MAX_AFTER) {
        return Err(Problem::invalid_stream_query(&format!(
            "`after` is a sequence number, 0 to {MAX_AFTER}"
        )));
    }
    let resumed = last_event_id(&headers)?;
    let feed = match state.updates {
        UpdateStream::Feed(feed) => feed,
        UpdateStream::Topic(topic) => {
            return Err(Problem::stream_unavailable(&format!(
                "this server publishes the profile-updates stream to the Kafka topic {topic}: \
                 consume it there"
            )));
        }
        UpdateStream::Off => {
            return Err(Problem::stream_unavailable(
                "the profile-updates stream is off (activation.profile_updates = false)",
            ));
        }
    };
    let mut newest = feed.newest();
    let after = resumed
        .or(query.after)
        .unwrap_or_else(|| *newest.borrow_and_update());
    let reader = Reader {
        feed,
        newest,
        after,
        from_oldest: after == 0,
        follow: query.follow.unwrap_or(true),
        pending: VecDeque::new(),
        shutdown: state.shutdown.clone(),
    };
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive");
    Ok(Sse::new(reader.events())
        .keep_alive(keep_alive)
        .into_response())
}

/// The sequence number in `Last-Event-ID`, when the request has one.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .ok()
        .filter(|text| {
            (1..=MAX_ID_DIGITS).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|text| text.parse().ok());
    match parsed {
        Some(sequence) => Ok(Some(sequence)),
        None => Err(Problem::invalid_stream_query(
            "Last-Event-ID is not the id of an event of this stream (a sequence number)",
        )),
    }
}

/// One response's way through the log.
struct Reader {
    feed: Arc<dyn UpdateFeed>,
    newest: watch::Receiver<u64>,
    /// The sequence number of the last message sent (or to start after).
    after: u64,
    /// The reader asked for the oldest message kept (`after=0`): a
    /// trimmed beginning is no gap to it.
    from_oldest: bool,
    follow: bool,
    pending: VecDeque<Event>,
    shutdown: CancellationToken,
}

impl Reader {
    fn events(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut reader| async move {
            if reader.pending.is_empty() {
                reader.fill().await;
            }
            let event = reader.pending.pop_front()?;
            Some((Ok(event), reader))
        })
    }

    /// Reads the next events into `pending`, waiting for new messages when
    /// following; leaves it empty when the response is to end (caught up
    /// and not following, the server stopping, or the store failing: the
    /// reader then reconnects with the `Last-Event-ID` it has).
    async fn fill(&mut self) {
        loop {
            let page = match self.feed.read(self.after, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(
                        "the profile-updates stream could not read on: {:#}",
                        error.0
                    );
                    return;
                }
            };
            let gone = self.after.saturating_add(1) < page.oldest || self.after > page.newest;
            if gone && !self.from_oldest {
                let data = serde_json::json!({ "oldest": page.oldest }).to_string();
                self.pending
                    .push_back(Event::default().event(GAP).data(data));
                self.after = page.oldest - 1;
                continue;
            }
            self.from_oldest = false;
            if let Some(last) = page.messages.last() {
                self.after = last.sequence;
                self.pending.extend(page.messages.iter().map(event));
                return;
            }
            if !self.follow || !self.pending.is_empty() {
                return;
            }
            let after = self.after;
            tokio::select! {
                changed = self.newest.wait_for(|&newest| newest > after) => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// The event of one message.
fn event(update: &StoredUpdate) -> Event {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }
    let mut event = Event::default().id(update.sequence.to_string());
    // A field of an event is one line.
    if let Ok(Kind { kind }) = serde_json::from_str::<Kind<'_>>(&update.message)
        && !kind.contains(['\r', '\n'])
    {
        event = event.event(kind);
    }
    event.data(&update.message)
}
