//! The one error type of the HTTP routes. Client mistakes are 4xx with a
//! clear text; server failures are 5xx, logged with an id that is also sent
//! to the client, and never show internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum ApiError {
    /// 404 with a message for the client.
    NotFound(String),
    /// 400 with a message for the client.
    BadRequest(String),
    /// 413: a body over the limit.
    TooLarge(String),
    /// 401: no token, or not this project's.
    Unauthorized(String),
    /// 409: another change of the same thing is under way.
    Conflict(String),
    /// 503 with a message: a total's cap refused the room (the tenant's to
    /// know, nothing of the host's internals).
    Refused(String),
    /// 5xx: the cause is logged, the client gets only the status and an id.
    Internal { status: StatusCode, cause: anyhow::Error },
}

impl ApiError {
    pub fn internal(cause: anyhow::Error) -> Self {
        Self::Internal { status: StatusCode::INTERNAL_SERVER_ERROR, cause }
    }

    /// 503: the room could not take the request. A cap that refused it is
    /// named; any other cause stays in the log.
    pub fn unavailable(cause: anyhow::Error) -> Self {
        if cause.downcast_ref::<crate::budget::CapReached>().is_some() {
            return Self::Refused(format!("{cause:#}"));
        }
        Self::Internal { status: StatusCode::SERVICE_UNAVAILABLE, cause }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::NotFound(text) => (StatusCode::NOT_FOUND, text),
            Self::BadRequest(text) => (StatusCode::BAD_REQUEST, text),
            Self::TooLarge(text) => (StatusCode::PAYLOAD_TOO_LARGE, text),
            Self::Unauthorized(text) => (StatusCode::UNAUTHORIZED, text),
            Self::Conflict(text) => (StatusCode::CONFLICT, text),
            Self::Refused(text) => (StatusCode::SERVICE_UNAVAILABLE, text),
            Self::Internal { status, cause } => {
                let id = uuid::Uuid::new_v4();
                tracing::error!(error.id = %id, cause = %format!("{cause:#}"), "request failed");
                (status, format!("{} (error id {id})", status.canonical_reason().unwrap_or("error")))
            }
        };
        if status.is_client_error() {
            tracing::warn!(%status, reason = %text, "request refused");
        }
        (status, text).into_response()
    }
}
