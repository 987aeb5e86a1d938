//! The HTTP caching rules (RFC 9111, with RFC 9110 for validators and
//! conditional requests, RFC 5861 for the stale extensions), as pure
//! functions over header maps and times. Nothing here touches the store or
//! reads the clock; callers pass times in (milliseconds since the epoch).
//!
//! | file | what it decides |
//! |---|---|
//! | `cache_control` | the `Cache-Control` and `Pragma` directives (§5.2, §5.4) |
//! | `coding` | content coding: what may be stored gzip-compressed, who accepts gzip, the fields of each representation (RFC 9110 §8.4, §12.5.3) |
//! | `date` | HTTP dates (RFC 9110 §5.6.7) |
//! | `freshness` | freshness lifetime, age, and what a stored response is good for (§4.2) |
//! | `storage` | whether a response may be stored, and for how long (§3) |
//! | `vary` | which stored response a request selects (§4.1) |
//! | `conditional` | `If-None-Match`/`If-Modified-Since`, `304` merging (RFC 9110 §13, §4.3.4) |
//! | `fields` | the request fields the cache acts on, hop-by-hop fields |
//! | `invalidation` | which URIs an unsafe request invalidates (§4.4) |
//! | `range` | `Range` and `If-Range`, the parts they ask for, `multipart/byteranges` (RFC 9110 §14) |

mod cache_control;
mod coding;
mod conditional;
mod date;
mod fields;
mod freshness;
mod invalidation;
mod range;
mod storage;
mod vary;

pub(crate) use self::{
    cache_control::CacheControl,
    coding::{
        accepts_gzip, coded_etag, map_back_tags, may_compress, recoded_304_tag,
        vary_on_accept_encoding,
    },
    conditional::{
        body_etag, merge_not_modified, not_modified, not_modified_as, take_conditionals,
        NOT_MODIFIED_HEADERS,
    },
    fields::{is_hop_by_hop, RequestFields},
    freshness::{judge, Use},
    invalidation::same_origin,
    range::{
        content_range, same_representation, take_range, unsatisfied_range, Answer, Multipart,
        RangeRequest,
    },
    storage::{refuse_to_store, storable},
    vary::{selects, variant_id, vary, Vary},
};

#[cfg(test)]
pub(crate) mod test_headers {
    use http::{HeaderMap, HeaderValue};

    use super::CacheControl;

    pub(crate) fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    pub(crate) fn cc(v: &'static str) -> CacheControl {
        CacheControl::parse(&with(&[("cache-control", v)]))
    }
}
