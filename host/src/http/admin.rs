//! The admin API, per project:
//!
//! - `GET /_partyhost/projects/<project>`: the serving version, its parties,
//!   live rooms and how often each limit was hit.
//! - `PUT /_partyhost/projects/<project>`: deploy a [`Bundle`] (JSON).
//! - `POST /_partyhost/projects/<project>/rollback`: back to the version
//!   before the serving one.
//! - `GET .../env`, `PUT .../env/<NAME>` (the value as the body),
//!   `DELETE .../env/<NAME>`: the project's secrets (names only come back).
//! - `GET .../rooms[?party=P]`: the running rooms.
//! - `GET .../tail[?party=P][&room=R]`: the live log, as JSON lines.
//!
//! A deployed project's calls need `Authorization: Bearer <its token>` (or
//! the operator's token); a wrong token and an unknown project get the
//! same 401, so tokens cannot probe for names. The host's own local project
//! (by its manifest `name`) answers the operator: a loopback client, or
//! the operator's token. It takes no deploys: it is served from its
//! manifest.
//!
//! [`Bundle`]: crate::projects::Bundle

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use super::ApiError;
use super::ops::{bearer, has_operator_token, is_local_operator};
use crate::ids::ProjectName;
use crate::projects::{DeployError, Project, Projects, SecretError};
use crate::rooms::{Rooms, TailEvent};

/// A project an admin call may act on.
enum Addressed {
    /// The host's own project, served from its manifest.
    Local,
    /// A project of `tenants.toml`, serving or not yet deployed.
    Deployed(ProjectName),
}

/// Which project the path names, once the caller may act on it.
fn authorize(projects: &Projects, project: &str, request: &Request) -> Result<Addressed, ApiError> {
    let refused = || ApiError::Unauthorized(format!("not a valid token for project `{project}`"));
    if let Some(tenants) = projects.tenants()
        && let Ok(name) = ProjectName::try_from(project)
        && tenants.projects().any(|p| p == &name)
    {
        let token_fits = bearer(request).is_some_and(|token| tenants.token_is_valid(name.as_str(), token));
        return if token_fits || has_operator_token(projects, request) {
            Ok(Addressed::Deployed(name))
        } else {
            Err(refused())
        };
    }
    let operator = is_local_operator(projects, request);
    if operator && projects.local().rooms.deployment().name == project {
        return Ok(Addressed::Local);
    }
    if projects.tenants().is_none() && !operator {
        return Err(ApiError::NotFound(
            "this host takes no deployments; start it with --tenants <tenants.toml>".into(),
        ));
    }
    Err(refused())
}

/// A deployed project's name, or the refusal for the local one.
fn deployable(addressed: Addressed) -> Result<ProjectName, ApiError> {
    match addressed {
        Addressed::Deployed(name) => Ok(name),
        Addressed::Local => Err(ApiError::BadRequest(
            "the host's own project is served from its manifest; it takes no deployments".into(),
        )),
    }
}

/// The serving project, if any.
fn serving(projects: &Projects, addressed: &Addressed) -> Option<Arc<Project>> {
    match addressed {
        Addressed::Local => Some(projects.local().clone()),
        Addressed::Deployed(name) => projects.deployed(name.as_str()),
    }
}

/// The rooms of the project the path names, once the caller may see them,
/// or a 404 saying nothing serves yet.
fn rooms_of(projects: &Projects, project: &str, request: &Request) -> Result<Arc<Rooms>, ApiError> {
    let addressed = authorize(projects, project, request)?;
    serving(projects, &addressed)
        .map(|p| p.rooms.clone())
        .ok_or_else(|| ApiError::NotFound(format!("project `{project}` has no version serving yet")))
}

pub(super) async fn deploy(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let project = deployable(authorize(&projects, &project, &request)?)?;
    // Before the body: a second upload of the project is refused unread.
    let deploying = match projects.begin(&project) {
        Ok(deploying) => deploying,
        Err(e) => return respond(Err(e)),
    };
    let limit = projects.tenants().map_or(0, |t| t.max_bundle_bytes);
    let body = axum::body::to_bytes(request.into_body(), limit).await.map_err(|e| {
        let over =
            std::error::Error::source(&e).is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
        if over {
            ApiError::TooLarge(format!("the deployment is over this host's limit of {limit} bytes"))
        } else {
            ApiError::BadRequest(format!("the upload was cut off: {e}"))
        }
    })?;
    respond(projects.deploy(deploying, body).await)
}

pub(super) async fn rollback(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let project = deployable(authorize(&projects, &project, &request)?)?;
    let deploying = match projects.begin(&project) {
        Ok(deploying) => deploying,
        Err(e) => return respond(Err(e)),
    };
    respond(projects.rollback(deploying).await)
}

pub(super) async fn status(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let addressed = authorize(&projects, &project, &request)?;
    // What an upload may weigh, so `partyhost deploy` can refuse before sending.
    let max_bundle_bytes = projects.tenants().map(|t| t.max_bundle_bytes);
    let Some(serving) = serving(&projects, &addressed) else {
        return Ok(Json(
            json!({ "project": project, "version": null, "max_bundle_bytes": max_bundle_bytes }),
        )
        .into_response());
    };
    let version = match &addressed {
        Addressed::Deployed(name) => projects.serving_version(name),
        Addressed::Local => None,
    };
    let rooms = &serving.rooms;
    let deployment = rooms.deployment();
    let stats = rooms.stats();
    Ok(Json(json!({
        "project": project,
        "version": version,
        "max_bundle_bytes": max_bundle_bytes,
        "parties": deployment.parties.keys().map(ToString::to_string).collect::<Vec<_>>(),
        "rooms": stats.rooms,
        "instances": stats.instances,
        "queued_bytes": stats.queued_bytes,
        "limit_hits": rooms.limit_hits().snapshot(),
        // What the project holds of each total, and its cap.
        "totals": rooms
            .totals()
            .project
            .snapshot()
            .into_iter()
            .map(|(name, used, cap)| (name.to_owned(), json!({ "used": used, "cap": cap })))
            .collect::<serde_json::Map<_, _>>(),
    }))
    .into_response())
}

pub(super) async fn env_list(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let names = match authorize(&projects, &project, &request)? {
        Addressed::Local => projects.local().secrets.names(),
        Addressed::Deployed(name) => projects.secret_names(&name).map_err(ApiError::internal)?,
    };
    Ok(Json(json!({ "project": project, "names": names })).into_response())
}

pub(super) async fn env_set(
    State(projects): State<Arc<Projects>>,
    Path((project, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let addressed = authorize(&projects, &project, &request)?;
    let limit = crate::projects::MAX_SECRET_BYTES;
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::TooLarge(format!("a secret's value is at most {limit} bytes")))?;
    let value = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest(format!("the value of {name} is not UTF-8 text")))?;
    change_secret(&projects, addressed, &name, Some(&value)).await?;
    Ok(Json(json!({ "project": project, "name": name, "set": true })).into_response())
}

pub(super) async fn env_remove(
    State(projects): State<Arc<Projects>>,
    Path((project, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let addressed = authorize(&projects, &project, &request)?;
    let existed = change_secret(&projects, addressed, &name, None).await?;
    Ok(Json(json!({ "project": project, "name": name, "removed": existed })).into_response())
}

/// Sets or removes a secret, on the blocking pool (it syncs a file).
async fn change_secret(
    projects: &Arc<Projects>,
    addressed: Addressed,
    name: &str,
    value: Option<&str>,
) -> Result<bool, ApiError> {
    let (projects, name, value) = (projects.clone(), name.to_owned(), value.map(str::to_owned));
    let changed = tokio::task::spawn_blocking(move || match addressed {
        Addressed::Local => projects.local().set_secret(&name, value.as_deref()),
        Addressed::Deployed(project) => projects.set_secret(&project, &name, value.as_deref()),
    })
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("the secrets task failed: {e}")))?;
    changed.map_err(|e| match e {
        SecretError::Invalid(message) => ApiError::BadRequest(message),
        SecretError::Busy(message) => ApiError::Conflict(message),
        SecretError::Internal(cause) => ApiError::internal(cause),
    })
}

/// `?party=` and `?room=` of the listing and the tail.
#[derive(Deserialize, Default, Clone)]
pub(super) struct Filter {
    party: Option<String>,
    room: Option<String>,
}

pub(super) async fn rooms(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    Query(filter): Query<Filter>,
    request: Request,
) -> Result<Response, ApiError> {
    let rooms = rooms_of(&projects, &project, &request)?;
    let party =
        match &filter.party {
            Some(name) => Some(rooms.resolve_party(name).ok_or_else(|| {
                ApiError::NotFound(format!("project `{project}` has no party named `{name}`"))
            })?),
            None => None,
        };
    Ok(Json(json!({ "project": project, "rooms": rooms.list(party.as_ref()) })).into_response())
}

pub(super) async fn tail(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    Query(filter): Query<Filter>,
    request: Request,
) -> Result<Response, ApiError> {
    let rooms = rooms_of(&projects, &project, &request)?;
    let events = rooms.tail().subscribe().ok_or_else(|| {
        ApiError::Conflict(format!(
            "project `{project}` already has {} live tails open; close one",
            crate::rooms::MAX_TAIL_LISTENERS
        ))
    })?;
    let shutdown = projects.shutdown().clone();
    let wanted = move |event: &TailEvent| {
        filter.party.as_ref().is_none_or(|p| *p == event.party)
            && filter.room.as_ref().is_none_or(|r| *r == event.room)
    };
    // One JSON line per event, and a first line at once, so the client
    // knows the tail is open before anything happens.
    let opened = json!({ "kind": "open", "project": project });
    let first =
        futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(json_line(&opened)) });
    let rest = futures_util::stream::unfold((events, shutdown), move |(mut events, shutdown)| {
        let wanted = wanted.clone();
        async move {
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    received = events.recv() => received,
                };
                let line = match received {
                    Ok(event) if wanted(&event) => json_line(&*event),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        json_line(&json!({ "kind": "missed", "events": missed }))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(line), (events, shutdown)));
            }
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(first, rest));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response())
}

fn json_line(value: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn respond(result: Result<crate::projects::Deployed, DeployError>) -> Result<Response, ApiError> {
    match result {
        Ok(deployed) => Ok(Json(deployed).into_response()),
        Err(DeployError::Invalid(message)) => Err(ApiError::BadRequest(message)),
        Err(DeployError::TooLarge(message)) => Err(ApiError::TooLarge(message)),
        Err(e @ (DeployError::NoPrevious(_) | DeployError::Busy(_))) => {
            Ok((StatusCode::CONFLICT, e.to_string()).into_response())
        }
        Err(DeployError::OverQuota(message)) => {
            Ok((StatusCode::INSUFFICIENT_STORAGE, message).into_response())
        }
        Err(DeployError::Internal(cause)) => Err(ApiError::internal(cause)),
    }
}
