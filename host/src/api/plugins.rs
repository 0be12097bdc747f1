//! `GET /api/v1/plugins` and `GET /api/v1/plugins/{name}`: the loaded plugins.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, Problem};
use crate::plugin::{Manifest, Plugin, PluginLimits, Subscription};

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
}

#[derive(Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = PluginLimits)]
pub(super) struct LimitsInfo {
    /// Linear memory per instance.
    pub memory_mb: usize,
    /// CPU-time budget per event.
    pub timeout_ms: u32,
}

/// Whether the version runs on new batches.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum PluginState {
    Active,
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
        }
    }
}

impl From<&Plugin> for PluginInfo {
    fn from(plugin: &Plugin) -> Self {
        Self::new(&plugin.manifest, &plugin.limits, &plugin.sha256)
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/plugins",
    operation_id = "list_plugins",
    tag = "plugins",
    responses((status = 200, description = "The active plugins, by name", body = PluginList))
)]
pub(super) async fn list(State(state): State<AppState>) -> Json<PluginList> {
    let plugins = state.chain.plugins();
    Json(PluginList {
        plugins: plugins.iter().map(|p| PluginInfo::from(&**p)).collect(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/plugins/{name}",
    operation_id = "get_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The active version of the plugin", body = PluginInfo),
        (status = 404, description = "No plugin of this name is loaded", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, Problem> {
    let plugins = state.chain.plugins();
    plugins
        .iter()
        .find(|p| p.name() == name)
        .map(|p| Json(PluginInfo::from(&**p)))
        .ok_or_else(|| Problem::plugin_not_found(&name))
}
