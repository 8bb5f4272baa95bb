//! `GET /.well-known/jwks.json`: the public keys that verify decision tokens and consent
//! receipts (key purpose `jws`), in use and retired-but-not-removed. Public: no token needed.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};

/// How long a client may keep the set (seconds). With the signer's own cache bound (30 s) a
/// key rotated in is in a fetched set within 90 s; a retired key stays listed until removed,
/// so remove one only well after its last token expired.
pub const MAX_AGE_SECS: u32 = 60;

/// A JSON Web Key Set (RFC 7517).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwksView {
    pub keys: Vec<JwkView>,
}

/// An Ed25519 public key (RFC 8037).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkView {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, 32 bytes, base64url without padding.
    pub x: String,
    /// The key id, as in a token's header.
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// The public keys that verify decision tokens and consent receipts (no token needed).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta", responses(
    (status = 200, description = "The key set: the key in use and the retired ones not yet removed", body = JwksView,
     headers(("Cache-Control" = String, description = "max-age=60"))),
    (status = 503, description = "store_unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let set = state.signer.jwks().await?;
    Ok((
        [(header::CACHE_CONTROL, format!("max-age={MAX_AGE_SECS}"))],
        Json(set),
    )
        .into_response())
}
