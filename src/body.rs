//! The response body: a cached `Bytes` body, or the inner body passed through
//! untouched (an enum, so uncached responses are never buffered or copied).

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// The body of every response that passed through the layer.
    ///
    /// A hit (or a miss that was just stored) holds its bytes and needs no
    /// allocation to serve; anything else is the inner service's body, frame for
    /// frame, with its errors and trailers.
    pub struct CacheBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Full { data: Option<Bytes> },
        Inner { #[pin] body: B },
        // Frames read while trying to buffer a body that turned out not to be
        // storable, then the rest of it (or the error that stopped the read).
        Replay {
            frames: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
        // One range of a body that streams through (a range request for a
        // response too large to store): `skip` bytes dropped, then
        // `remaining` bytes sent; the rest and any trailers are not.
        Slice {
            body: Pin<Box<CacheBody<B>>>,
            skip: u64,
            remaining: u64,
        },
        Gunzip { decoder: Box<crate::gzip::Gunzip> },
    }
}

impl<B: Body> CacheBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// The bytes of a body the layer holds whole (a hit, a stored miss);
    /// `None` for a body that streams through.
    /// A stored gzip member, decompressed as it is sent (never past
    /// `decoded_len` bytes). A member that turns out corrupt or of another
    /// length ends the body early: the connection, whose `Content-Length`
    /// promised more, is closed and the client sees an incomplete response,
    /// never a wrong one.
    pub(crate) fn gunzip(stored: Bytes, decoded_len: u64) -> Self {
        Self {
            kind: Kind::Gunzip {
                decoder: Box::new(crate::gzip::Gunzip::new(stored, decoded_len)),
            },
        }
    }

    pub(crate) fn bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Full { data } => Some(data.clone().unwrap_or_default()),
            _ => None,
        }
    }

    /// The `length` bytes of this streaming body from offset `first`.
    pub(crate) fn slice(self, first: u64, length: u64) -> Self {
        Self {
            kind: Kind::Slice {
                body: Box::pin(self),
                skip: first,
                remaining: length,
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
            Kind::Slice { .. } => "Slice",
            Kind::Gunzip { .. } => "Gunzip",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Replay {
                frames,
                error,
                rest,
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
            KindProj::Slice {
                body,
                skip,
                remaining,
            } => loop {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let frame = match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => frame,
                    other => return Poll::Ready(other),
                };
                let Ok(mut data) = frame.into_data() else {
                    continue; // trailers are not part of a range
                };
                let len = data.len() as u64;
                if len <= *skip {
                    *skip -= len;
                    continue;
                }
                // Both below `len`, a `usize`.
                let start = *skip as usize;
                let end = (*skip + (*remaining).min(len - *skip)) as usize;
                data = data.slice(start..end);
                *skip = 0;
                *remaining -= data.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(data))));
            },
            KindProj::Gunzip { decoder } => match decoder.next_chunk() {
                Ok(chunk) => Poll::Ready(chunk.map(|c| Ok(Frame::data(c)))),
                Err(why) => {
                    crate::gzip::broken(why, decoder.left());
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay {
                frames,
                error,
                rest,
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
            Kind::Slice {
                body, remaining, ..
            } => *remaining == 0 || body.is_end_stream(),
            // Not before its checksum is read.
            Kind::Gunzip { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay { frames, rest, .. } => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let mut hint = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                hint.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
            Kind::Slice { remaining, .. } => SizeHint::with_exact(*remaining),
            Kind::Gunzip { decoder } => SizeHint::with_exact(decoder.left()),
        }
    }
}

/// What [`collect_up_to`] found.
pub(crate) enum Collected<B: Body> {
    /// The whole body, at most the limit, without trailers.
    Complete(Bytes),
    /// The body was larger than the limit, had trailers, or failed: here it is
    /// again, whole, for the client.
    NotStorable(CacheBody<B>),
}

/// Reads `body` into memory if it ends within `limit` bytes with no trailers.
/// Otherwise hands back a body that replays what was read and then the rest,
/// so the client always gets the complete response.
pub(crate) async fn collect_up_to<B>(body: B, limit: usize) -> Collected<B>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Collected::NotStorable(CacheBody::inner(body));
    }
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut size = 0usize;
    let give_back = |frames, error, rest| {
        Collected::NotStorable(CacheBody {
            kind: Kind::Replay {
                frames,
                error,
                rest,
            },
        })
    };
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return give_back(frames, Some(e), None),
            Some(Ok(frame)) => {
                let is_data = frame.is_data();
                size += frame.data_ref().map_or(0, Bytes::len);
                frames.push_back(frame);
                if !is_data || size > limit {
                    return give_back(frames, None, Some(body));
                }
            }
        }
    }
    let mut chunks = frames.into_iter().filter_map(|f| f.into_data().ok());
    match (chunks.next(), chunks.next()) {
        (None, _) => Collected::Complete(Bytes::new()),
        (Some(only), None) => Collected::Complete(only),
        (Some(first), Some(second)) => {
            let mut all = Vec::with_capacity(size);
            all.extend_from_slice(&first);
            all.extend_from_slice(&second);
            chunks.for_each(|c| all.extend_from_slice(&c));
            Collected::Complete(Bytes::from(all))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::{Full, StreamBody};

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn chunks(parts: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Chunks {
        StreamBody::new(futures_util::stream::iter(parts))
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    async fn read_all<B: Body<Data = Bytes>>(body: CacheBody<B>) -> (Vec<u8>, bool, Option<String>)
    where
        B::Error: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let (mut out, mut trailers, mut error) = (Vec::new(), false, None);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) if f.is_data() => out.extend_from_slice(&f.into_data().unwrap()),
                Ok(_) => trailers = true,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        (out, trailers, error)
    }

    #[tokio::test]
    async fn small_bodies_are_collected() {
        match collect_up_to(chunks(vec![data("ab"), data("cd")]), 10).await {
            Collected::Complete(b) => assert_eq!(b, "abcd"),
            Collected::NotStorable(_) => panic!("should be complete"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_still_reaches_the_client_whole() {
        let body = chunks(vec![data("aaaa"), data("bbbb"), data("cccc"), data("dd")]);
        let Collected::NotStorable(b) = collect_up_to(body, 5).await else {
            panic!("over the limit must not be stored");
        };
        assert_eq!(read_all(b).await, (b"aaaabbbbccccdd".to_vec(), false, None));
    }

    #[tokio::test]
    async fn a_known_large_body_is_not_read_at_all() {
        let Collected::NotStorable(b) =
            collect_up_to(Full::new(Bytes::from(vec![1u8; 100])), 10).await
        else {
            panic!("must not buffer");
        };
        assert!(matches!(b.kind, Kind::Inner { .. }));
        assert_eq!(b.size_hint().exact(), Some(100));
    }

    #[tokio::test]
    async fn a_slice_of_a_stream_spans_its_chunks_and_drops_trailers() {
        let body = chunks(vec![
            data("abcd"),
            data("efgh"),
            data("ijkl"),
            Ok(Frame::trailers(HeaderMap::new())),
        ]);
        let slice = CacheBody::inner(body).slice(3, 6);
        assert_eq!(slice.size_hint().exact(), Some(6));
        assert_eq!(read_all(slice).await, (b"defghi".to_vec(), false, None));
        let past = CacheBody::inner(chunks(vec![data("abcd"), data("ef")])).slice(5, 10);
        assert_eq!(read_all(past).await, (b"f".to_vec(), false, None));
    }

    #[tokio::test]
    async fn trailers_and_errors_are_kept() {
        let with_trailers = chunks(vec![data("x"), Ok(Frame::trailers(HeaderMap::new()))]);
        let Collected::NotStorable(b) = collect_up_to(with_trailers, 100).await else {
            panic!("trailers are not stored");
        };
        assert_eq!(read_all(b).await, (b"x".to_vec(), true, None));

        let failing = chunks(vec![data("x"), Err(std::io::Error::other("boom"))]);
        let Collected::NotStorable(b) = collect_up_to(failing, 100).await else {
            panic!("a failed body is not stored");
        };
        assert_eq!(
            read_all(b).await,
            (b"x".to_vec(), false, Some("boom".into()))
        );
    }
}
