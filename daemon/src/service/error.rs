//! Why a use case failed. Each front door maps it to its protocol: gRPC codes in
//! [`crate::grpc::status::service_status`], the plugin's `Err` text from the chain.

/// A failed use case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The volume manager refused or failed (its own kinds carry their codes).
    #[error(transparent)]
    Core(#[from] volume_core::Error),
    /// The request is malformed in a way only this layer sees.
    #[error("{0}")]
    InvalidArgument(String),
    /// What was asked for is not there (a layer, an OCI layout).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out in the present state (a layer in use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something that cannot happen did.
    #[error("{0}")]
    Internal(String),
    /// Looking up a layer in the layer store failed.
    #[error(transparent)]
    Layers(#[from] layer_store::Error),
    /// Placing or reaching a replica on a peer failed; the peer's answer (or the
    /// placement's own RESOURCE_EXHAUSTED) is kept with its code.
    #[error("{}", .0.message())]
    Peer(tonic::Status),
    /// The blocking task running the work panicked or was cancelled.
    #[error("worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// The service layer's result.
pub type Result<T> = std::result::Result<T, Error>;
