//! `GET` and `DELETE /servers/{id}/os-server-password`.

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::{Auth, State};
use crate::app::compute::passwords as app;
use crate::error::Result;

/// `{"password": "…"}` (empty when the guest posted none).
pub async fn show(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let password = app::show(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({ "password": password })).into_response())
}

/// 204.
pub async fn clear(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    app::clear(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
