//! The admin API's errors: `{"error": {"code", "message"}}` with a status. What the service
//! refuses comes as a [`ControlError`]; its HTTP status and code are decided here, once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use millgate_actors::service::ControlError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer: the status, and the body's machine-readable code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `not_found`, `bad_request`, `conflict`, `invalid_trigger`,
    /// `unauthorized`, `internal`, ...
    pub code: String,
    /// For people: what was wrong, naming the key or the thing concerned.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_trigger", message)
    }

    /// A JSON body nested deeper than `[server] max_json_depth`.
    pub fn too_deep(err: millgate_actors::json::JsonError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_deep",
            format!("body refused: {err}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::NoTrigger(_)
            | ControlError::NoJob(_)
            | ControlError::NoDeadLetter(_)
            | ControlError::NoQuarantined(_) => Self::not_found(message),
            ControlError::Exists(_) => Self::conflict(format!("{message}; use PUT to replace it")),
            ControlError::DefinedInConfig { .. }
            | ControlError::NoSavedState { .. }
            | ControlError::ReadOnlyState { .. }
            | ControlError::NoReset { .. }
            | ControlError::Refused(_) => Self::conflict(message),
            // Also a saved state that does not validate: the code predates that use.
            ControlError::Invalid(_) => Self::invalid(message),
            ControlError::BadRequest(_) => Self::bad_request(message),
            ControlError::Internal(_) => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
