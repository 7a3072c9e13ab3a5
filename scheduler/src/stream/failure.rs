//! Why a streaming source stopped serving leases: kept typed so that callers can tell a
//! truncated or replaced file ([`LoaderError::Truncated`], [`LoaderError::FileChanged`]) from an
//! I/O error, and cloned into the error of every later lease.

use std::sync::Arc;

use flashstream_loader::LoaderError;

use crate::SchedulerError;

/// The sticky failure of a [`StreamingSource`](crate::StreamingSource): after it, every lease
/// fails with [`SchedulerError::ReadFailed`] carrying a clone of it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadFailure {
    /// A read of a unit (or of embedding rows) failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read (a unit, `embedding rows`).
        what: String,
        /// Why.
        source: Arc<LoaderError>,
    },
    /// The read backend itself failed (waiting for completions).
    #[error("read backend failed: {0}")]
    Backend(Arc<LoaderError>),
    /// A rebudget failed and the previous residency could not be restored either.
    #[error("{0}")]
    Rebuild(Arc<SchedulerError>),
    /// The source has no memory yet, or is between two plans (never seen by a lease: the
    /// gate keeps them out meanwhile).
    #[error("{0}")]
    NotReady(&'static str),
}

impl ReadFailure {
    /// The loader's error behind the failure, if a read caused it.
    pub fn loader_error(&self) -> Option<&LoaderError> {
        match self {
            ReadFailure::Read { source, .. } | ReadFailure::Backend(source) => Some(source),
            ReadFailure::Rebuild(e) => match &**e {
                SchedulerError::Load(l) => Some(l),
                SchedulerError::ReadFailed(f) => f.loader_error(),
                _ => None,
            },
            ReadFailure::NotReady(_) => None,
        }
    }
}
