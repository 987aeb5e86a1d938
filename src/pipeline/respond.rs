//! Respond: a response built from a stored entry (`age`, the status header,
//! conditional requests answered with `304`), in the representation the
//! request accepts when the entry's body is stored compressed.

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
    http::{coded_etag, not_modified_as, vary_on_accept_encoding, NOT_MODIFIED_HEADERS},
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

/// Which representation of an entry a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// The body as stored, with the stored fields: an entry not compressed.
    AsStored,
    /// The stored gzip member with `Content-Encoding: gzip` and the gzip
    /// representation's entity tag.
    Gzip,
    /// The stored gzip member decompressed as it is sent.
    Decoded,
}

impl Coding {
    /// The representation of `entry` for a request that does (or does not)
    /// accept gzip.
    pub(crate) fn of(entry: &Entry, accepts_gzip: bool) -> Self {
        match (entry.gzipped, accepts_gzip) {
            (None, _) => Coding::AsStored,
            (Some(_), true) => Coding::Gzip,
            (Some(_), false) => Coding::Decoded,
        }
    }
}

/// Turns the stored fields of an entry whose body is compressed
/// (`gzipped`: its decoded length) into those of the `coding`
/// representation: both say `Vary: Accept-Encoding` (the choice depends on
/// it); the gzip one has `Content-Encoding` and its own entity tag, the
/// decoded one the decoded length.
pub(crate) fn represent(
    headers: &mut HeaderMap,
    member: &[u8],
    gzipped: Option<u64>,
    coding: Coding,
) {
    let Some(decoded_len) = gzipped else {
        return;
    };
    match coding {
        Coding::AsStored => return,
        Coding::Gzip => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            retag(headers, member);
        }
        Coding::Decoded => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(decoded_len));
        }
    }
    vary_on_accept_encoding(headers);
}

/// Gives the fields of the gzip representation of `member` its entity tag;
/// a stored tag that is not a valid one is dropped, never shared by both
/// representations.
fn retag(headers: &mut HeaderMap, member: &[u8]) {
    let coded = headers
        .get(header::ETAG)
        .map(|tag| coded_etag(tag, crate::gzip::member_id(member)));
    match coded {
        Some(Some(tag)) => {
            headers.insert(header::ETAG, tag);
        }
        Some(None) => {
            headers.remove(header::ETAG);
        }
        None => {}
    }
}

/// Marks a response in the gzip representation of an entry the cache
/// compressed, for a request with `Range`: `If-Range` with a date never
/// matches it (another instance, level or library version may have stored
/// other bytes under the same `Last-Modified`); only its own entity tag,
/// which names its bytes, does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodedByCache;

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
    let coding = Coding::of(&entry, plan.accepts_gzip);
    // An entry only this request holds (decoded from the store's bytes) is
    // taken apart; one the in-process store or a flight shares is served
    // from its prepared headers.
    let (status, headers, body, marked) = match Arc::try_unwrap(entry) {
        Ok(entry) => {
            let mut headers = entry.headers;
            represent(&mut headers, &entry.body, entry.gzipped, coding);
            let body = match (coding, entry.gzipped) {
                _ if plan.head => CacheBody::empty(),
                (Coding::Decoded, Some(len)) => CacheBody::gunzip(entry.body, len),
                _ => CacheBody::full(entry.body),
            };
            (entry.status, headers, body, false)
        }
        Err(shared) => {
            let (headers, body, marked) = served(&shared, status_header, outcome, coding);
            let body = if plan.head { CacheBody::empty() } else { body };
            (shared.status, headers, body, marked)
        }
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
    if coding == Coding::Gzip && plan.range {
        response.extensions_mut().insert(CodedByCache);
    }
    response
}

/// A shared entry as a hit serves it in `coding`: its headers, its body,
/// and whether the headers already carry `outcome` in the cache-status
/// field. The headers are a clone of the map prepared on the entry's first
/// hit in that representation, or a copy when the entry was prepared for
/// another layer's status field. A compressed entry's decoded body is made
/// once too, on its first hit by a client that does not accept gzip (the
/// in-process stores weigh entries with it, see `Entry::decoded_reserve`;
/// if it does not decompress, each such hit streams it and is cut short).
fn served<B: Body>(
    entry: &Entry,
    status_header: Option<&HeaderName>,
    outcome: CacheStatus,
    coding: Coding,
) -> (HeaderMap, CacheBody<B>, bool) {
    let prepare = || {
        let mut headers = copy_headers(entry);
        represent(&mut headers, &entry.body, entry.gzipped, coding);
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
    };
    let (prepared, body) = match (coding, entry.gzipped) {
        (Coding::Decoded, Some(len)) => {
            let decoded = entry.decoded.get_or_init(|| {
                let bytes = crate::gzip::decompress(&entry.body, len)?;
                Some((prepare(), bytes))
            });
            match decoded {
                Some((prepared, bytes)) => (Some(prepared), CacheBody::full(bytes.clone())),
                None => (None, CacheBody::gunzip(entry.body.clone(), len)),
            }
        }
        _ => (
            Some(entry.served.get_or_init(prepare)),
            CacheBody::full(entry.body.clone()),
        ),
    };
    match prepared {
        Some(served) if served.status_header.as_ref() == status_header => (
            served.headers.clone(),
            body,
            outcome == CacheStatus::Hit || status_header.is_none(),
        ),
        _ => {
            let mut headers = copy_headers(entry);
            represent(&mut headers, &entry.body, entry.gzipped, coding);
            (headers, body, false)
        }
    }
}

/// A copy of an entry's headers with room for the `age` and cache-status
/// fields a served entry gets, the two fields of a compressed entry's
/// representation, and one field more. A clone would be exactly full,
/// and the first insert would move every field to a larger allocation; a
/// full map grows on any insert, even of a field it holds, so the prepared
/// map that every hit clones keeps a spare slot (for `age`, or a
/// `Cache-Status`).
pub(crate) fn copy_headers(entry: &Entry) -> HeaderMap {
    let room = if entry.gzipped.is_some() { 5 } else { 3 };
    let mut headers = HeaderMap::with_capacity(entry.headers.len() + room);
    for (name, value) in &entry.headers {
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
    let coding = Coding::of(&entry, plan.accepts_gzip);
    let matches = || {
        let coded;
        let etag = match (coding, entry.headers.get(header::ETAG)) {
            (Coding::Gzip, Some(tag)) => {
                coded = coded_etag(tag, crate::gzip::member_id(&entry.body));
                coded.as_ref()
            }
            (_, tag) => tag,
        };
        not_modified_as(request, etag, &entry.headers, entry.stored_at_ms)
    };
    if entry.status == StatusCode::OK && plan.conditional && matches() {
        bump(&core.counters.not_modified);
        crate::metrics::not_modified();
        let age = entry.age_secs(now);
        let mut response = not_modified_response(&entry.headers);
        let headers = response.headers_mut();
        if entry.gzipped.is_some() {
            if coding == Coding::Gzip {
                retag(headers, &entry.body);
            }
            vary_on_accept_encoding(headers);
        }
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
