//! Respond: a response built from a stored entry (`age`, the status header,
//! conditional requests answered with `304`).

use std::sync::Arc;

use http::{
    header::{self, AGE},
    HeaderMap, HeaderName, HeaderValue, Response, StatusCode,
};
use http_body::Body;

use super::plan::Plan;
use crate::{
    body::CacheBody,
    core::{bump, CacheCore},
    entry::{Entry, Served},
    http::{not_modified, NOT_MODIFIED_HEADERS},
    status::{cache_status, mark, CacheStatus, Detail, Fwd},
};

/// How a stored entry came to be served, as `Cache-Status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Found by this request's lookup.
    Lookup,
    /// Handed over by the request that led the key (single-flight).
    Collapsed,
    /// Standing in for the service, which failed (stale-if-error).
    ServiceFailed,
}

/// What `Cache-Status` says about an entry served `via`.
fn entry_detail<'a>(entry: &Entry, plan: &'a Plan, via: Via, now: u64) -> Detail<'a> {
    Detail {
        fwd: match via {
            Via::Lookup => None,
            Via::Collapsed => Some(Fwd::UriMiss),
            Via::ServiceFailed => Some(Fwd::Stale),
        },
        ttl_ms: Some(entry.fresh_left_ms(now)),
        collapsed: via == Via::Collapsed,
        key: Some(plan.key()),
        detail: (via == Via::ServiceFailed).then_some("service-failed"),
        ..Detail::default()
    }
}

/// A stored entry as a response; `now` (milliseconds since the epoch) gives
/// its `age`.
pub(crate) fn cached_response<B: Body>(
    core: &CacheCore,
    entry: Arc<Entry>,
    plan: &Plan,
    outcome: CacheStatus,
    via: Via,
    now: u64,
) -> Response<CacheBody<B>> {
    let age = entry.age_secs(now);
    let detail = core
        .settings
        .cache_status
        .as_ref()
        .map(|_| entry_detail(&entry, plan, via, now));
    let status_header = core.settings.status_header.as_ref();
    // An entry only this request holds (decoded from the store's bytes) is
    // taken apart; one the in-process store or a flight shares is served
    // from its prepared headers.
    let (status, headers, body, marked) = match Arc::try_unwrap(entry) {
        Ok(entry) => (entry.status, entry.headers, entry.body, false),
        Err(shared) => {
            let (headers, marked) = served_headers(&shared, status_header, outcome);
            (shared.status, headers, shared.body.clone(), marked)
        }
    };
    let body = if plan.head {
        CacheBody::empty()
    } else {
        CacheBody::full(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    let headers = response.headers_mut();
    // `content-length` comes with the decoded entry.
    headers.insert(AGE, age_value(age));
    if marked {
        crate::status::record(outcome);
    } else {
        mark(status_header, headers, outcome);
    }
    if let Some(detail) = detail {
        cache_status(core.settings.cache_status.as_ref(), headers, detail);
    }
    response
}

/// The headers of a shared entry as a hit serves them, and whether they
/// already carry `outcome` in the cache-status field: a clone of the map
/// prepared on the entry's first hit, or a copy with room for the two fields
/// when the entry was prepared for another layer's status field.
pub(crate) fn served_headers(
    entry: &Entry,
    status_header: Option<&HeaderName>,
    outcome: CacheStatus,
) -> (HeaderMap, bool) {
    let served = entry.served.get_or_init(|| {
        let mut headers = copy_headers(&entry.headers);
        headers.insert(AGE, age_value(0));
        if let Some(name) = status_header {
            headers.insert(
                name.clone(),
                HeaderValue::from_static(CacheStatus::Hit.as_str()),
            );
        }
        Served {
            status_header: status_header.cloned(),
            headers,
        }
    });
    if served.status_header.as_ref() == status_header {
        (
            served.headers.clone(),
            outcome == CacheStatus::Hit || status_header.is_none(),
        )
    } else {
        (copy_headers(&entry.headers), false)
    }
}

/// A copy of stored headers with room for the `age` and cache-status fields
/// a served entry gets, and one field more. A clone would be exactly full,
/// and the first insert would move every field to a larger allocation; a
/// full map grows on any insert, even of a field it holds, so the prepared
/// map that every hit clones keeps a spare slot (for `age`, or a
/// `Cache-Status`).
pub(crate) fn copy_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(stored.len() + 3);
    for (name, value) in stored {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Serves a stored entry, as a `304 Not Modified` when the request's
/// conditional headers match it (RFC 9111 §4.3.2).
pub(crate) fn serve_entry<B: Body>(
    core: &CacheCore,
    entry: Arc<Entry>,
    request: &HeaderMap,
    plan: &Plan,
    outcome: CacheStatus,
    via: Via,
    now: u64,
) -> Response<CacheBody<B>> {
    if entry.status == StatusCode::OK
        && plan.conditional
        && not_modified(request, &entry.headers, entry.stored_at_ms)
    {
        bump(&core.counters.not_modified);
        crate::metrics::not_modified();
        let age = entry.age_secs(now);
        let mut response = not_modified_response(&entry.headers);
        let headers = response.headers_mut();
        headers.insert(AGE, age_value(age));
        mark(core.settings.status_header.as_ref(), headers, outcome);
        if core.settings.cache_status.is_some() {
            let detail = entry_detail(&entry, plan, via, now);
            cache_status(core.settings.cache_status.as_ref(), headers, detail);
        }
        return response;
    }
    cached_response(core, entry, plan, outcome, via, now)
}

/// A `304` with the headers RFC 9110 §15.4.5 asks for, from `stored`.
pub(crate) fn not_modified_response<B: Body>(stored: &HeaderMap) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    for name in NOT_MODIFIED_HEADERS.iter().chain([&header::LAST_MODIFIED]) {
        for value in stored.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    response
}

/// `age` header values for the first hour, made once: serving a hit needs no
/// formatting or allocation for them.
pub(crate) fn age_value(age: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..=3600u64).map(HeaderValue::from).collect());
    usize::try_from(age)
        .ok()
        .and_then(|i| AGES.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(age))
}
