//! The admin API of a multi-tenant host, one token per project:
//!
//! - `PUT /_partyhost/projects/<project>`: deploy a [`Bundle`] (JSON).
//! - `POST /_partyhost/projects/<project>/rollback`: back to the version
//!   before the serving one.
//! - `GET /_partyhost/projects/<project>`: the serving version, its parties,
//!   live rooms and how often each limit was hit.
//!
//! Every call needs `Authorization: Bearer <token>`; a wrong token and an
//! unknown project get the same 401, so tokens cannot probe for names.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

use super::ApiError;
use crate::ids::ProjectName;
use crate::manifest::Tenants;
use crate::projects::{DeployError, Projects};

pub(super) async fn deploy(
    State(projects): State<Arc<Projects>>,
    Path(project): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (project, tenants) = authorize(&projects, &project, &request)?;
    // Before the body: a second upload of the project is refused unread.
    let deploying = match projects.begin(&project) {
        Ok(deploying) => deploying,
        Err(e) => return respond(Err(e)),
    };
    let limit = tenants.max_bundle_bytes;
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
    let (project, _) = authorize(&projects, &project, &request)?;
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
    let (name, tenants) = authorize(&projects, &project, &request)?;
    // What an upload may weigh, so `partyhost deploy` can refuse before sending.
    let max_bundle_bytes = tenants.max_bundle_bytes;
    let Some(project) = projects.deployed(name.as_str()) else {
        let status =
            json!({ "project": name.as_str(), "version": null, "max_bundle_bytes": max_bundle_bytes });
        return Ok(Json(status).into_response());
    };
    let deployment = project.rooms.deployment();
    let stats = project.rooms.stats();
    Ok(Json(json!({
        "project": name.as_str(),
        "version": projects.serving_version(&name),
        "max_bundle_bytes": max_bundle_bytes,
        "parties": deployment.parties.keys().map(ToString::to_string).collect::<Vec<_>>(),
        "rooms": stats.rooms,
        "instances": stats.instances,
        "queued_bytes": stats.queued_bytes,
        "limit_hits": project.rooms.limit_hits().snapshot(),
        // What the project holds of each total, and its cap.
        "totals": project
            .rooms
            .totals()
            .project
            .snapshot()
            .into_iter()
            .map(|(name, used, cap)| (name.to_owned(), json!({ "used": used, "cap": cap })))
            .collect::<serde_json::Map<_, _>>(),
    }))
    .into_response())
}

/// The project named in the path, if the bearer token is its token.
fn authorize<'a>(
    projects: &'a Projects,
    project: &str,
    request: &Request,
) -> Result<(ProjectName, &'a Tenants), ApiError> {
    let tenants = projects.tenants().ok_or_else(|| {
        ApiError::NotFound("this host takes no deployments; start it with --tenants <tenants.toml>".into())
    })?;
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (ProjectName::try_from(project), token) {
        (Ok(name), Some(token)) if tenants.token_is_valid(name.as_str(), token) => Ok((name, tenants)),
        _ => Err(ApiError::Unauthorized(format!("not a valid token for project `{project}`"))),
    }
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
