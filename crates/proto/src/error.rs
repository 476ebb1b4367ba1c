//! The error body of every Drover HTTP endpoint: `{"error": {"code", "message", "details"}}`.

use serde::{Deserialize, Serialize};

/// Envelope for [`ErrorDetail`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong. `code` is stable and machine-readable (`not_found`, `invalid_request`,
/// `invalid_query`, `conflict`, `unauthorized`, `forbidden`, `payload_too_large`, `rate_limited`,
/// `internal`); `message` is one human sentence; `details` carries structured context such as the
/// failing field, the query column or per-line import errors.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}
