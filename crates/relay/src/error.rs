//! Relay errors: what stops a delivery step (it is retried after a back-off).

use idledger_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building a message failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl RelayError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}
