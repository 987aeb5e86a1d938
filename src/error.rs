//! The crate's errors: a configuration that cannot work, a store that failed,
//! and a response that cannot become a cache entry.

use std::{fmt, time::Duration};

/// Everything that can go wrong in this crate's fallible calls.
///
/// The request path never returns these: a store failure there is logged,
/// counted and answered by the inner service (fail-open). They come back from
/// [`RedisCacheLayerBuilder::build`](crate::RedisCacheLayerBuilder::build) and
/// from the [`CacheHandle`](crate::CacheHandle) calls.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work. The message names the setting and what to
    /// change.
    Config(String),
    /// The store failed or did not answer in time.
    Store(StoreError),
    /// A value given to the cache could not be used (for example a URI without a
    /// path, or a header value that is not text).
    Invalid(String),
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(m) => write!(f, "invalid cache configuration: {m}"),
            Self::Store(e) => write!(f, "cache store error: {e}"),
            Self::Invalid(m) => write!(f, "invalid input: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A failure of a [`Store`](crate::store::Store) call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish inside the time budget.
    Timeout(Duration),
    /// The store is not connected (Redis down or still connecting).
    Unavailable,
    /// The store answered with an error.
    Backend(String),
    /// The circuit breaker is open after repeated failures: the store was not
    /// called.
    CircuitOpen,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            Self::Unavailable => f.write_str("not connected"),
            Self::Backend(m) => f.write_str(m),
            Self::CircuitOpen => f.write_str("circuit open after repeated failures"),
        }
    }
}

impl std::error::Error for StoreError {}
