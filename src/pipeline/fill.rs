//! Fill: the service's response is buffered and stored when the route and
//! the response allow it (fenced against invalidations that ran meanwhile),
//! or streams through.

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header::{self},
    HeaderMap, Request, Response, StatusCode,
};
use http_body::Body;
use tower_service::Service;

use super::{
    miss::Filled,
    plan::Plan,
    respond::{not_modified_response, represent, CodedByCache, Coding},
};
use crate::{
    body::{collect_up_to, CacheBody, Collected},
    core::{bump, CacheCore},
    entry::{self, Entry, Extra, Lifetimes, Marker},
    error::StoreError,
    http::{
        body_etag, merge_not_modified, not_modified, storable, take_conditionals, variant_id, vary,
        CacheControl, Vary,
    },
    stampede::{Handover, HeldLock},
    status::{cache_status, mark, CacheStatus, Detail, Fwd},
    store::Write,
    tags::take_tags,
    CacheHandle,
};

/// Calls the service, then buffers and stores its response if the route and
/// the response allow it. With `stored`, the request carries its validators
/// and a `304` freshens it. With `has_fallback` (a stale entry will stand in
/// for a failure), a 5xx is never stored.
// Not an `async fn`, for the reason given at `serve`.
#[allow(clippy::manual_async_fn)]
pub(crate) fn fill<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    mut inner: S,
    mut req: Request<ReqBody>,
    plan: Plan,
    generation: Option<u64>,
    stored: Option<Arc<Entry>>,
    has_fallback: bool,
) -> impl Future<Output = Filled<ResBody, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    async move {
        req.extensions_mut().insert(CacheHandle::new(core.clone()));
        let may_store = !plan.head && !plan.cc.no_store;
        let (conditionals, request_headers) = if may_store {
            let conditionals = take_conditionals(req.headers_mut());
            (conditionals, req.headers().clone())
        } else {
            (HeaderMap::new(), HeaderMap::new())
        };
        // A conditional request that goes to the service as it is (`HEAD`,
        // `no-store`): tags of the gzip representation of an entry stored
        // compressed are mapped back to the service's own.
        let forwarded_tags = (!may_store && req.headers().contains_key(header::IF_NONE_MATCH))
            .then(|| {
                let sent: HeaderMap = (req.headers().get_all(header::IF_NONE_MATCH).iter())
                    .map(|v| (header::IF_NONE_MATCH, v.clone()))
                    .collect();
                crate::http::map_back_tags(req.headers_mut());
                sent
            });
        // For Cache-Status: why the request went to the service.
        let fwd = match &stored {
            _ if generation.is_none() => Fwd::Bypass,
            Some(e) if !e.never_fresh() && e.fresh_left_ms(entry::now_ms()) > 0 => Fwd::Request,
            Some(_) => Fwd::Stale,
            None if plan.marker.is_some() => Fwd::VaryMiss,
            None => Fwd::UriMiss,
        };
        // Revalidate what is stored: the service may answer 304.
        let revalidating = stored.filter(|_| may_store).filter(|e| {
            let h = &e.headers;
            h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED)
        });
        if let Some(stored) = &revalidating {
            let headers = req.headers_mut();
            if let Some(etag) = stored.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let uri = plan.rule.tagger.as_ref().map(|_| req.uri().clone());
        // Read before the service reads its data: an invalidation after this
        // point (of the key, a tag, a prefix) keeps the response from being
        // stored, since it may show data from before it. Without the counter
        // (the store failed) nothing is stored.
        let fence = if may_store && generation.is_some() {
            core.read_fence().await
        } else {
            None
        };
        if may_store && generation.is_some() && fence.is_none() {
            crate::status::bypassed(
                req.method(),
                req.uri(),
                "the store did not answer when its invalidation counter was read",
            );
        }
        let generation = generation.filter(|_| !may_store || fence.is_some());
        // For the debug lines below, which name the request.
        let target = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().clone()));
        let started = Instant::now();
        let request_ms = entry::now_ms();
        let (mut parts, body) = inner.call(req).await?.into_parts();
        let response_ms = entry::now_ms();
        if let (Some(sent), StatusCode::NOT_MODIFIED) = (&forwarded_tags, parts.status) {
            let recoded = parts
                .headers
                .get(header::ETAG)
                .and_then(|tag| crate::http::recoded_304_tag(sent, tag));
            if let Some(tag) = recoded {
                parts.headers.insert(header::ETAG, tag);
            }
        }
        let fwd_status = parts.status;
        let detail = |stored: bool, fresh: Option<Duration>| Detail {
            fwd: Some(fwd),
            fwd_status: Some(fwd_status),
            stored,
            ttl_ms: fresh.map(|d| d.as_millis() as i128),
            key: Some(plan.key()),
            detail: (fwd == Fwd::Bypass).then_some("store-unavailable"),
            ..Detail::default()
        };
        let cache_status_field = core.settings.cache_status.as_ref();
        let mut outcome = if generation.is_some() {
            CacheStatus::Miss
        } else {
            CacheStatus::Bypass
        };
        let mut body = Some(body);
        let mut known = None;
        let mut revalidated_unstorable = false;
        // RFC 9111 §4.3.4: a 304 freshens the stored response; §3.4: so does
        // a 206 of the same representation (same strong entity tag), whose
        // part is dropped for the whole stored body.
        let updates_stored = revalidating.as_ref().is_some_and(|stored| {
            parts.status == StatusCode::NOT_MODIFIED
                || (parts.status == StatusCode::PARTIAL_CONTENT
                    && crate::http::same_representation(&stored.headers, &parts.headers))
        });
        if let (true, Some(stored)) = (updates_stored, &revalidating) {
            bump(&core.counters.revalidations);
            if parts.status == StatusCode::PARTIAL_CONTENT {
                // The part's own type (`multipart/byteranges`) is not the
                // stored response's.
                parts.headers.remove(header::CONTENT_TYPE);
            }
            let mut headers = stored.headers.clone();
            merge_not_modified(&mut headers, &parts.headers);
            parts.status = stored.status;
            parts.headers = headers;
            known = Some((stored.body.clone(), stored.gzipped));
            // A compressed body whose fields now say `no-transform` is kept
            // as the origin sent it (RFC 9110 §7.7).
            if let Some(len) = stored.gzipped {
                let targeted = core
                    .settings
                    .targeted
                    .for_mode(plan.rule.http.origin_driven());
                let cc = CacheControl::parse_response(&parts.headers, targeted);
                if cc.no_transform || !crate::http::may_compress(&parts.headers) {
                    known = crate::gzip::decompress(&stored.body, len).map(|b| (b, None));
                    if known.is_none() {
                        // Not stored again; the client gets it decompressed as
                        // it streams.
                        known = Some((stored.body.clone(), stored.gzipped));
                        revalidated_unstorable = true;
                    }
                }
            }
            body = None;
            if generation.is_some() {
                outcome = CacheStatus::Revalidated;
            }
        }
        let tags = take_tags(
            &core.settings.tag_headers,
            plan.rule.tagger.as_ref(),
            uri.as_ref(),
            &mut parts,
        );
        // The key headers go into `Vary` for caches downstream; variants
        // are needed only when the response varies on more (the key holds
        // the key headers already).
        let shape = plan.rule.shape.as_deref();
        let own_variants = shape.is_none_or(|s| match vary(&parts.headers) {
            Vary::Headers(names) => s.varies_beyond_key(&names),
            _ => false,
        });
        if let Some(shape) = shape {
            shape.add_vary(&mut parts.headers);
        }
        let targeted = &core.settings.targeted;
        let cc = CacheControl::parse_response(
            &parts.headers,
            targeted.for_mode(plan.rule.http.origin_driven()),
        );
        if let Some(own) = targeted.own() {
            parts.headers.remove(own);
        }
        // A failure a stale entry will stand in for is not stored.
        let covered_failure = has_fallback && parts.status.is_server_error();
        // With the store down nothing is written: the response is buffered
        // only for requests waiting on it, and otherwise passes through as it
        // streams.
        let wanted =
            generation.is_some() || plan.followers.as_ref().is_some_and(|f| f.load(Relaxed) > 0);
        let stamped = if may_store && wanted && !covered_failure && !revalidated_unstorable {
            let status = parts.status;
            let shared_only = plan.shared_only;
            let times = (request_ms, response_ms);
            storable(
                &plan.rule,
                status,
                &mut parts.headers,
                &cc,
                shared_only,
                times.0,
                times.1,
            )
        } else {
            None
        };
        let Some((lifetimes, mut extra)) = stamped else {
            if let (Some((method, uri)), true) = (&target, generation.is_some()) {
                let reason = if plan.head {
                    "a HEAD response (the GET's entry serves HEADs)"
                } else if plan.cc.no_store {
                    "the request says Cache-Control: no-store"
                } else if covered_failure {
                    "a server error, with a stale entry standing in for it"
                } else if plan.shared_only && !cc.allows_authorized() {
                    "the request carries Authorization (or a Cookie the route shares only), \
                     and the response does not say public, s-maxage or must-revalidate"
                } else {
                    crate::http::refuse_to_store(
                        &parts.headers,
                        &cc,
                        plan.rule.http.strip_set_cookie,
                    )
                    .unwrap_or(
                        "the route does not store this status, or the response has no freshness",
                    )
                };
                crate::status::not_stored(method, uri, reason);
            }
            mark(
                core.settings.status_header.as_ref(),
                &mut parts.headers,
                outcome,
            );
            cache_status(cache_status_field, &mut parts.headers, detail(false, None));
            let body = match (body, known) {
                (Some(body), _) => CacheBody::inner(body),
                (None, Some((bytes, gzipped))) => {
                    mark_coded(&mut parts, &plan, gzipped);
                    present(&mut parts.headers, bytes, None, gzipped, plan.accepts_gzip)
                }
                (None, None) => CacheBody::empty(),
            };
            return Ok((Response::from_parts(parts, body), None));
        };
        // Buffered even when the store failed: requests waiting on this one get
        // the same response instead of calling the service themselves.
        // `gzipped`: the decoded length, when the bytes are the gzip member
        // of a revalidated entry stored compressed.
        let (collected, gzipped) = match (body, known) {
            (None, Some((bytes, gzipped))) => (Collected::Complete(bytes), gzipped),
            (Some(body), _) => (
                collect_up_to(body, core.settings.max_body_bytes).await,
                None,
            ),
            (None, None) => (Collected::Complete(Bytes::new()), None),
        };
        let mut handover = None;
        let mut stored = false;
        let body = match collected {
            Collected::Complete(bytes) => {
                if plan.rule.http.etag
                    && gzipped.is_none()
                    && !parts.headers.contains_key(header::ETAG)
                {
                    parts.headers.insert(header::ETAG, body_etag(&bytes));
                }
                // Compressed once, here, and only for a response that is
                // going to be written.
                let compressed = match gzipped {
                    None if generation.is_some() && fence.is_some() && !cc.no_transform => {
                        crate::gzip::for_store(&plan.rule.compression, &parts.headers, &bytes).await
                    }
                    _ => None,
                };
                let just_compressed = compressed.is_some();
                let (at_rest, gzipped) = match compressed {
                    Some(member) => (member, Some(bytes.len() as u64)),
                    None => (bytes.clone(), gzipped),
                };
                extra.gzipped = gzipped;
                let mut writes = Vec::with_capacity(2);
                let mut entry_key = plan.primary.clone();
                let status_header = core.settings.status_header.as_ref();
                let gen = generation.unwrap_or(0);
                if let (true, Vary::Headers(names)) = (own_variants, vary(&parts.headers)) {
                    let marker = match &plan.marker {
                        Some(m) if m.names == names => Marker::clone(m),
                        _ => Marker {
                            names,
                            nonce: format!("{:08x}", rand::random::<u32>()),
                        },
                    };
                    entry_key = crate::key::variant_key(&plan.primary, &marker, &request_headers);
                    extra.variant = Some(variant_id(&request_headers, &marker.names));
                    let index = Lifetimes {
                        fresh: lifetimes.store_ttl(),
                        stale_while_revalidate: Duration::ZERO,
                        stale_if_error: Duration::ZERO,
                        revalidate: Duration::ZERO,
                    };
                    let marker_extra = Extra {
                        marker: Some(marker),
                        ..Extra::default()
                    };
                    let value = entry::encode_with(
                        StatusCode::OK,
                        &HeaderMap::new(),
                        b"",
                        &index,
                        Duration::ZERO,
                        gen,
                        None,
                        &marker_extra,
                    );
                    if let Some(value) = value {
                        writes.push(Write {
                            key: plan.primary.clone(),
                            value,
                            ttl: lifetimes.store_ttl(),
                            tags: tags.iter().map(|t| core.keys.tag_key(t)).collect(),
                        });
                    }
                }
                // `no-cache="field"` and `private="field"`: those fields are
                // not stored.
                let omitted;
                let stored_headers = if cc.omit.is_empty() {
                    &parts.headers
                } else {
                    let mut h = parts.headers.clone();
                    for name in &cc.omit {
                        h.remove(name.as_str());
                    }
                    omitted = h;
                    &omitted
                };
                let encoded = entry::encode_with(
                    parts.status,
                    stored_headers,
                    &at_rest,
                    &lifetimes,
                    started.elapsed(),
                    gen,
                    status_header,
                    &extra,
                );
                if let Some(value) = encoded {
                    // Decoded only if a follower asks for it.
                    handover = Some(Handover::encoded(value.clone(), outcome));
                    writes.push(Write {
                        key: entry_key,
                        value,
                        ttl: lifetimes.store_ttl(),
                        tags: tags.iter().map(|t| core.keys.tag_key(t)).collect(),
                    });
                    if let Some(fence) = fence.filter(|_| generation.is_some()) {
                        // Awaited (under the budget) so the client's next request
                        // can already hit. The lock, if held, is released in the
                        // same round trip where the store can.
                        stored = core
                            .write_fenced(&writes, fence, plan.lock.as_deref())
                            .await
                            .unwrap_or(false);
                        if stored {
                            let received = gzipped.map_or(bytes.len() as u64, |n| n);
                            core.count_body(received as usize, at_rest.len());
                        }
                    }
                }
                // The client gets what a hit would give it.
                mark_coded(&mut parts, &plan, gzipped);
                let body = present(
                    &mut parts.headers,
                    at_rest,
                    just_compressed.then_some(bytes),
                    gzipped,
                    plan.accepts_gzip,
                );
                if !conditionals.is_empty()
                    && parts.status == StatusCode::OK
                    && not_modified(&conditionals, &parts.headers, response_ms)
                {
                    bump(&core.counters.not_modified);
                    crate::metrics::not_modified();
                    let mut response = not_modified_response(&parts.headers);
                    mark(status_header, response.headers_mut(), outcome);
                    let fresh = stored.then_some(lifetimes.fresh);
                    cache_status(
                        cache_status_field,
                        response.headers_mut(),
                        detail(stored, fresh),
                    );
                    return Ok((response, handover));
                }
                body
            }
            Collected::NotStorable(body) => {
                if let Some((method, uri)) = &target {
                    crate::status::not_stored(
                        method,
                        uri,
                        "the body is larger than max_body_bytes, has trailers, or failed",
                    );
                }
                body
            }
        };
        mark(
            core.settings.status_header.as_ref(),
            &mut parts.headers,
            outcome,
        );
        let fresh = stored.then_some(lifetimes.fresh);
        cache_status(
            cache_status_field,
            &mut parts.headers,
            detail(stored, fresh),
        );
        Ok((Response::from_parts(parts, body), handover))
    }
}

/// The body a client gets of a stored (or about to be stored) response
/// whose body is `at_rest`, with `headers` made those of its
/// representation: the stored bytes, with `Content-Encoding: gzip` for a
/// client that accepts gzip when `gzipped` (the decoded length) says they
/// are compressed; else `decoded` (the bytes as received) or the stored
/// bytes decompressed as they are sent.
fn present<B: Body>(
    headers: &mut HeaderMap,
    at_rest: Bytes,
    decoded: Option<Bytes>,
    gzipped: Option<u64>,
    accepts_gzip: bool,
) -> CacheBody<B> {
    let Some(len) = gzipped else {
        // A revalidated entry's stored length may be its member's.
        if headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, at_rest.len().into());
        }
        return CacheBody::full(at_rest);
    };
    if accepts_gzip {
        represent(headers, &at_rest, gzipped, Coding::Gzip);
        headers.insert(header::CONTENT_LENGTH, at_rest.len().into());
        CacheBody::full(at_rest)
    } else {
        represent(headers, &at_rest, gzipped, Coding::Decoded);
        match decoded {
            Some(bytes) => CacheBody::full(bytes),
            None => CacheBody::gunzip(at_rest, len),
        }
    }
}

/// Marks a response that [`present`] gave the gzip representation, for
/// `If-Range` (see [`CodedByCache`]).
fn mark_coded(parts: &mut http::response::Parts, plan: &Plan, gzipped: Option<u64>) {
    if plan.range && plan.accepts_gzip && gzipped.is_some() {
        parts.extensions.insert(CodedByCache);
    }
}

/// The invalidation counter as a request read it before calling the
/// service: its write is fenced by it (see [`Fence`](crate::store::Fence)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FenceRead {
    pub(crate) counter: u64,
    pub(crate) at: Instant,
}

impl CacheCore {
    /// Reads the invalidation counter before the service computes an entry;
    /// `None` when the store failed (the entry is then not stored).
    pub(crate) async fn read_fence(&self) -> Option<FenceRead> {
        let at = Instant::now();
        let key = self.keys.fence_counter_key();
        let counter = self.timed("fence", self.store.fence(&key)).await.ok()?;
        Some(FenceRead { counter, at })
    }

    /// Writes what a request computed, unless an invalidation of anything
    /// the writes touch ran since `read` (then nothing is written, and
    /// `fills_fenced` counts it); `true` when written. The lock `held` is
    /// released in the same round trip where the store can (marked released
    /// then); otherwise its caller releases it.
    pub(crate) async fn write_fenced(
        &self,
        writes: &[Write],
        read: FenceRead,
        held: Option<&HeldLock>,
    ) -> Result<bool, StoreError> {
        if self.replay.pending() {
            return Ok(false);
        }
        if read.at.elapsed() >= crate::store::FENCE_WINDOW / 2 {
            // The markers of an invalidation that ran meanwhile may be gone.
            bump(&self.counters.fills_fenced);
            crate::metrics::fenced();
            return Ok(false);
        }
        let mut markers = Vec::with_capacity(writes.len() * 2 + 1);
        markers.push(self.keys.prefix_fence_key());
        for w in writes {
            markers.push(self.keys.fence_key(&w.key));
            markers.extend(w.tags.iter().map(|t| self.keys.fence_key(t)));
        }
        markers.sort_unstable();
        markers.dedup();
        let fence = crate::store::Fence {
            counter: read.counter,
            markers,
            unlock: held.map(|h| (h.key.clone(), h.token.clone())),
        };
        let done = self
            .timed("put", self.store.put_fenced(writes, &fence))
            .await?;
        if let Some(held) = held {
            held.released.store(done.unlocked, Relaxed);
        }
        if done.stored {
            self.count_writes(writes);
        } else {
            bump(&self.counters.fills_fenced);
            crate::metrics::fenced();
            tracing::debug!(
                key = writes.last().map_or("", |w| w.key.as_str()),
                "not stored: an invalidation ran while the response was computed"
            );
        }
        Ok(done.stored)
    }
}
