//! The error answer every HTTP route shares: a status and a `{"detail": ...}` body a user can
//! act on (FastAPI's shape, which FlowLLM's clients read). Knows nothing of routes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub(crate) detail: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, detail: impl Into<Value>) -> ApiError {
        ApiError {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"detail": self.detail}))).into_response()
    }
}
