//! Range: a request's `Range` answered from the complete `200` the rest of
//! the pipeline produced (a hit, a stale or revalidated entry, a miss just
//! stored, or a response that streams through), RFC 9110 §14.

use bytes::Bytes;
use http::{
    header::{self, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE},
    response::Parts,
    HeaderValue, Response, StatusCode,
};
use http_body::Body;

use crate::{
    body::CacheBody,
    http::{content_range, unsatisfied_range, Answer, Multipart, RangeRequest},
};

/// Turns a complete `200` into the answer to `range`: a `206` of one part
/// (`Content-Range`) or of several (`multipart/byteranges`), or a `416`
/// (`Content-Range: bytes */length`). Anything else (another status, an
/// `If-Range` that does not match, a streaming body of unknown length, a
/// streaming body asked for several parts) is left as it is.
pub(crate) fn answer_range<B>(
    range: &RangeRequest,
    response: Response<CacheBody<B>>,
) -> Response<CacheBody<B>>
where
    B: Body<Data = Bytes>,
{
    let coded = response
        .extensions()
        .get::<super::respond::CodedByCache>()
        .is_some();
    if response.status() != StatusCode::OK || !range.applies_to(response.headers(), coded) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let whole = body.bytes();
    let length = if range.head {
        parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    } else {
        match &whole {
            Some(bytes) => Some(bytes.len() as u64),
            None => body.size_hint().exact(),
        }
    };
    let Some(length) = length else {
        return Response::from_parts(parts, body);
    };
    let ranges = match range.resolve(length) {
        Answer::Full => return Response::from_parts(parts, body),
        Answer::Unsatisfiable => {
            parts.status = StatusCode::RANGE_NOT_SATISFIABLE;
            let headers = &mut parts.headers;
            headers.remove(CONTENT_TYPE);
            headers.remove(header::CONTENT_ENCODING);
            headers.insert(CONTENT_RANGE, unsatisfied_range(length));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            return Response::from_parts(parts, CacheBody::empty());
        }
        Answer::Parts(ranges) => ranges,
    };
    if let [(first, last)] = ranges[..] {
        let size = last - first + 1;
        let body = match (range.head, whole) {
            (true, _) => CacheBody::empty(),
            // Within `length`, a `usize`.
            (false, Some(bytes)) => CacheBody::full(bytes.slice(first as usize..=last as usize)),
            (false, None) => body.slice(first, size),
        };
        partial(&mut parts, size);
        parts
            .headers
            .insert(CONTENT_RANGE, content_range(first, last, length));
        return Response::from_parts(parts, body);
    }
    // Several parts of a streaming body: the whole of it, as it streams.
    if whole.is_none() && !range.head {
        return Response::from_parts(parts, body);
    }
    let boundary = format!("{:016x}", rand::random::<u64>());
    let multipart = Multipart::new(&ranges, length, parts.headers.get(CONTENT_TYPE), &boundary);
    let body = match whole.filter(|_| !range.head) {
        Some(bytes) => CacheBody::full(Bytes::from(multipart.body(&bytes))),
        None => CacheBody::empty(),
    };
    partial(&mut parts, multipart.length);
    parts
        .headers
        .insert(CONTENT_TYPE, multipart.content_type.clone());
    Response::from_parts(parts, body)
}

/// A `206` of `size` bytes (RFC 9110 §15.3.7): the `200`'s header fields,
/// but for its length.
fn partial(parts: &mut Parts, size: u64) {
    parts.status = StatusCode::PARTIAL_CONTENT;
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(size));
    parts.headers.remove(header::CONTENT_RANGE);
}
