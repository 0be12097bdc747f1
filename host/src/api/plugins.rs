//! `GET /api/v1/plugins` and `GET /api/v1/plugins/{name}`: the installed
//! plugins, running or quarantined, with their counters and earlier versions.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, Problem};
use crate::model::event::format_millis;
use crate::plugin::{Manifest, Plugin, PluginLimits, Subscription, Totals};
use crate::plugin_ops::PluginView;
use crate::plugin_ops::registry::PluginState;

/// The active plugins, by name.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PluginList {
    pub plugins: Vec<PluginInfo>,
}

/// One loaded plugin version.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Plugin)]
pub(super) struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The event kinds it receives; `*` means every kind.
    pub events: Vec<String>,
    /// The only attributes it may change.
    pub writes: Vec<String>,
    /// The limits it runs under: the manifest's, capped by the host.
    pub limits: LimitsInfo,
    pub state: PluginState,
    /// SHA-256 of the manifest and the component together, hex: what
    /// rollback and the audit log name a version by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// When the plugin entered its state (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Why it is in that state (quarantine, rollback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where this version came from: `api` (an upload) or `dir` (the plugin
    /// directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Work done by this version since it was loaded in this process.
    pub counters: Counters,
    /// Earlier versions kept for rollback, newest first.
    pub previous: Vec<PreviousVersion>,
}

/// An earlier version, kept for rollback.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub(super) struct PreviousVersion {
    pub version: String,
    pub version_id: String,
    pub sha256: String,
    /// When it was installed (RFC 3339).
    pub installed_at: String,
}

#[derive(Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = PluginLimits)]
pub(super) struct LimitsInfo {
    /// Linear memory per instance.
    pub memory_mb: usize,
    /// CPU-time budget per event.
    pub timeout_ms: u32,
}

impl PluginInfo {
    pub(super) fn new(manifest: &Manifest, limits: &PluginLimits, sha256: &str) -> Self {
        let events = match &manifest.events {
            Subscription::All => vec!["*".to_owned()],
            Subscription::Kinds(kinds) => kinds.iter().cloned().collect(),
        };
        Self {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            description: manifest.description.clone(),
            sha256: sha256.to_owned(),
            events,
            writes: manifest.writes.iter().cloned().collect(),
            limits: LimitsInfo {
                memory_mb: limits.memory_bytes / (1024 * 1024),
                timeout_ms: limits.timeout_ms,
            },
            state: PluginState::Active,
            version_id: None,
            since: None,
            reason: None,
            source: None,
            counters: Counters::default(),
            previous: Vec::new(),
        }
    }
}

/// Counters of the running version since it was loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Counters {
    /// Calls into the plugin (one per batch it had events in, per 2,048
    /// events).
    pub calls: u64,
    /// Events handed to it.
    pub events: u64,
    /// Events it failed on (errors, traps, timeouts, limits).
    pub failures: u64,
}

impl From<Totals> for Counters {
    fn from(totals: Totals) -> Self {
        Counters {
            calls: totals.calls,
            events: totals.events,
            failures: totals.failures,
        }
    }
}

impl From<&Plugin> for PluginInfo {
    fn from(plugin: &Plugin) -> Self {
        let mut info = Self::new(&plugin.manifest, &plugin.limits, &plugin.sha256);
        info.counters = plugin.health.totals().into();
        info
    }
}

impl From<&PluginView> for PluginInfo {
    fn from(view: &PluginView) -> Self {
        let mut info = Self::new(
            &view.plugin.manifest,
            &view.plugin.limits,
            &view.plugin.sha256,
        );
        let record = &view.record;
        info.state = record.state;
        info.version_id = Some(record.current.id.clone());
        info.since = Some(format_millis(record.since_ms));
        info.reason = record.reason.clone();
        info.source = Some(record.current.source.clone());
        info.counters = view.plugin.health.totals().into();
        info.previous = record
            .previous
            .iter()
            .map(|v| PreviousVersion {
                version: v.version.clone(),
                version_id: v.id.clone(),
                sha256: v.sha256.clone(),
                installed_at: format_millis(v.installed_at_ms),
            })
            .collect();
        info
    }
}

/// Every installed plugin: the manager's records where this process runs
/// plugins, else the chain's active set.
pub(super) fn all(state: &AppState) -> Vec<PluginInfo> {
    match &state.manager {
        Some(manager) => manager.list().iter().map(PluginInfo::from).collect(),
        None => state
            .chain
            .plugins()
            .iter()
            .map(|p| PluginInfo::from(&**p))
            .collect(),
    }
}

pub(super) fn one(state: &AppState, name: &str) -> Option<PluginInfo> {
    match &state.manager {
        Some(manager) => manager.get(name).as_ref().map(PluginInfo::from),
        None => state
            .chain
            .plugins()
            .iter()
            .find(|p| p.name() == name)
            .map(|p| PluginInfo::from(&**p)),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/plugins",
    operation_id = "list_plugins",
    tag = "plugins",
    responses((status = 200, description = "The installed plugins, by name", body = PluginList))
)]
pub(super) async fn list(State(state): State<AppState>) -> Json<PluginList> {
    Json(PluginList {
        plugins: all(&state),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/plugins/{name}",
    operation_id = "get_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The plugin: its running version, state, counters and earlier versions", body = PluginInfo),
        (status = 404, description = "No plugin of this name is loaded", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, Problem> {
    one(&state, &name)
        .map(Json)
        .ok_or_else(|| Problem::plugin_not_found(&name))
}
