//! The page a server serves: its bytes, shared by every connection, and
//! its SHA-256, announced to fast-mode clients.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Resume points: a client resumes a page from a multiple of this many
/// bytes, and the page keeps the SHA-256 of each such prefix, so that a
/// resume request costs a lookup, never hashing (docs/PROTOCOL.md §9.6).
pub const CHECKPOINT: u64 = 256 * 1024;

/// A page and its digest.
#[derive(Debug, Clone)]
pub struct Page {
    bytes: Bytes,
    sha256: [u8; 32],
    /// `checkpoints[k]`: the SHA-256 of the first `(k + 1) * CHECKPOINT`
    /// bytes (32 bytes per 256 KiB of page).
    checkpoints: Vec<[u8; 32]>,
}

/// SHA-256 taken in pieces, keeping the digest of every whole
/// [`CHECKPOINT`]-byte prefix on the way.
#[derive(Debug, Clone, Default)]
struct Hashing {
    hasher: Sha256,
    len: u64,
    checkpoints: Vec<[u8; 32]>,
}

impl Hashing {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = CHECKPOINT - self.len % CHECKPOINT;
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            let (now, rest) = data.split_at(take);
            self.hasher.update(now);
            self.len += take as u64;
            data = rest;
            if self.len % CHECKPOINT == 0 {
                self.checkpoints.push(self.hasher.clone().finalize().into());
            }
        }
    }

    fn finish(self, bytes: Bytes) -> Page {
        Page { bytes, sha256: self.hasher.finalize().into(), checkpoints: self.checkpoints }
    }
}

/// Whether `offset` is a resume point: a positive multiple of
/// [`CHECKPOINT`].
fn is_resume_point(offset: u64) -> bool {
    offset > 0 && offset % CHECKPOINT == 0
}

/// Of the digests of a page's resume points (`checkpoints[k]` for the first
/// `(k + 1) * CHECKPOINT` bytes), the one of the prefix ending at
/// `offset`, if it is a resume point the page has reached.
fn prefix_digest(checkpoints: &[[u8; 32]], offset: u64) -> Option<[u8; 32]> {
    let k = usize::try_from(offset / CHECKPOINT).ok()?;
    is_resume_point(offset).then_some(())?;
    checkpoints.get(k.checked_sub(1)?).copied()
}

impl Page {
    /// Wraps `bytes` (no copy) and computes its SHA-256 once, with the
    /// digests of its resume points.
    pub fn new(bytes: Bytes) -> Page {
        let mut hashing = Hashing::default();
        hashing.update(&bytes);
        hashing.finish(bytes)
    }

    /// The content.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Its SHA-256.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The SHA-256 of its first `offset` bytes, if `offset` is a resume
    /// point within it (a positive multiple of [`CHECKPOINT`]).
    pub fn prefix_sha256(&self, offset: u64) -> Option<[u8; 32]> {
        prefix_digest(&self.checkpoints, offset)
    }

    /// The page from `offset` on, for a resumed transfer: no copy, and the
    /// digest is still the whole page's, which the client checks its
    /// whole file against (docs/PROTOCOL.md §9.6).
    pub fn resumed_from(&self, offset: u64) -> Page {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.bytes.len());
        Page { bytes: self.bytes.slice(start..), sha256: self.sha256, checkpoints: Vec::new() }
    }

    /// Bytes `start..end`, or nothing if out of range.
    pub fn slice(&self, start: u64, end: u64) -> &[u8] {
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => self.bytes.get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// Length of the trailer that ends a streamed page (docs/PROTOCOL.md §9.7):
///
/// ```text
/// outcome (u8) | status (u16) | page length (u64) | SHA-256 (32)
/// ```
///
/// Outcome 0 is a complete page, with its length and digest; any other is
/// the refusal code of why the page was cut short (with the HTTP status
/// for code 5), and the rest is zero.
pub const TRAILER_LEN: usize = 43;

/// The `page_len` of an answer whose page streams: its length and digest
/// are not known yet and come in the trailer (docs/PROTOCOL.md §9.7).
pub const STREAMED: u64 = u64::MAX;

/// How a streamed page ended, as its trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Complete: the page's length and SHA-256.
    Complete { len: u64, sha256: [u8; 32] },
    /// Cut short, for this reason.
    Failed(crate::conn::Refusal),
}

impl StreamEnd {
    /// The trailer's bytes.
    pub fn encode(self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        match self {
            StreamEnd::Complete { len, sha256 } => {
                t[3..11].copy_from_slice(&len.to_be_bytes());
                t[11..].copy_from_slice(&sha256);
            }
            StreamEnd::Failed(why) => {
                let mut code = Vec::with_capacity(3);
                why.encode(&mut code);
                // A refusal's code is never 0 on the wire: 0 means complete.
                if let Some(first @ 0) = code.first_mut() {
                    *first = crate::conn::Refusal::Failed.code();
                }
                for (slot, b) in t.iter_mut().zip(code) {
                    *slot = b;
                }
            }
        }
        t
    }

    /// Reads a trailer; `None` unless it is exactly [`TRAILER_LEN`] bytes.
    pub fn decode(t: &[u8]) -> Option<StreamEnd> {
        let t: &[u8; TRAILER_LEN] = t.try_into().ok()?;
        if t[0] != 0 {
            return Some(StreamEnd::Failed(crate::conn::Refusal::decode(&t[..3])));
        }
        let len = u64::from_be_bytes(t[3..11].try_into().ok()?);
        let sha256 = t[11..].try_into().ok()?;
        Some(StreamEnd::Complete { len, sha256 })
    }
}

/// A page still being downloaded, served while it grows (docs/PROTOCOL.md
/// §9.7). What a connection sends is the stream:
///
/// ```text
/// META length (u16) | META | START (u64) | the page from START | trailer
/// ```
///
/// META (what the origin said, as in an answer) is known when the origin's
/// headers are in; the page follows as it arrives, the trailer once it has
/// ended. A stream that fails before the headers has an empty META. START
/// is 0, or for a client resuming (a [`StreamView`] with its prefix) the
/// resume point, once the page has reached it and its prefix matched.
///
/// The driver's fetch appends from its own thread while the core reads
/// from the loop's; a lock guards the buffer, held only to copy a segment
/// out. The core is told of growth by a call
/// ([`Server::streams_grew`](crate::Server::streams_grew)), so it stays
/// free of threads and clocks: the simulator appends at chosen instants.
#[derive(Debug, Default)]
pub struct Stream {
    inner: std::sync::Mutex<StreamInner>,
    /// The writer's running digest, apart from `inner`: hashing a piece
    /// never holds up the loop's reads.
    hashing: std::sync::Mutex<Hashing>,
}

#[derive(Debug, Default)]
struct StreamInner {
    /// META's length and META, once the headers are in.
    head: Option<Vec<u8>>,
    /// The page so far (frozen into the end's page when complete).
    bytes: Vec<u8>,
    /// The digests of the resume points it has passed.
    checkpoints: Vec<[u8; 32]>,
    /// Set once: the trailer, and for a complete page the page itself.
    end: Option<([u8; TRAILER_LEN], Option<std::sync::Arc<Page>>)>,
    /// The most bytes the page may bring (the proxy's --fetch-max-size),
    /// which the buffer's growth never passes.
    limit: Option<usize>,
}

/// Longest META a stream carries (its length is a u16).
const MAX_STREAM_META: usize = u16::MAX as usize;

impl Stream {
    /// An empty stream; `expected` (a Content-Length, say) reserves room.
    pub fn new(expected: usize) -> Stream {
        let inner = StreamInner { bytes: Vec::with_capacity(expected), ..StreamInner::default() };
        Stream { inner: std::sync::Mutex::new(inner), hashing: std::sync::Mutex::default() }
    }

    /// Like [`new`](Self::new), for a page of at most `limit` bytes: the
    /// buffer grows by doubling but never past `limit`. A budget that counts
    /// `limit` for a fetch under way then holds; plain doubling took a page
    /// of 65 MiB to 128 MiB of buffer, up to twice what was counted.
    pub fn with_limit(expected: usize, limit: usize) -> Stream {
        let stream = Stream::new(expected.min(limit));
        stream.lock().limit = Some(limit);
        stream
    }

    fn hashing(&self) -> std::sync::MutexGuard<'_, Hashing> {
        self.hashing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StreamInner> {
        // A panicking writer leaves the bytes it appended whole: go on.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Room for `n` more page bytes (a Content-Length), reserved at once,
    /// within the limit.
    pub fn reserve(&self, n: usize) {
        let mut s = self.lock();
        if s.end.is_none() {
            let room = s.limit.map_or(n, |limit| n.min(limit.saturating_sub(s.bytes.len())));
            s.bytes.reserve_exact(room);
        }
    }

    /// The origin's headers are in: META, the stream's first bytes. Only
    /// the first call counts.
    pub fn start(&self, meta: &crate::secure::PageMeta) {
        let mut s = self.lock();
        if s.head.is_none() && s.end.is_none() {
            let mut encoded = Vec::new();
            meta.encode(MAX_STREAM_META, &mut encoded);
            encoded.truncate(MAX_STREAM_META);
            let mut head = (encoded.len() as u16).to_be_bytes().to_vec();
            head.extend_from_slice(&encoded);
            s.head = Some(head);
        }
    }

    /// Appends page bytes (ignored before [`start`](Self::start) and once
    /// the stream has ended). One writer at a time: the driver's fetch.
    pub fn push(&self, data: &[u8]) {
        if self.lock().head.is_none() {
            return;
        }
        let mut hashing = self.hashing();
        let passed = hashing.checkpoints.len();
        hashing.update(data);
        let mut s = self.lock();
        if s.end.is_none() {
            let need = s.bytes.len().saturating_add(data.len());
            if need > s.bytes.capacity() {
                let cap = s.bytes.capacity().saturating_mul(2).max(need);
                // Past the limit (a writer that does not hold to it), plain
                // doubling again, not a copy per push.
                let cap = match s.limit {
                    Some(limit) if need <= limit => cap.min(limit),
                    _ => cap,
                };
                let len = s.bytes.len();
                s.bytes.reserve_exact(cap - len);
            }
            s.bytes.extend_from_slice(data);
            let new = hashing.checkpoints.get(passed..).unwrap_or_default();
            s.checkpoints.extend_from_slice(new);
        }
    }

    /// Bytes its buffer holds (what a budget counts of a stream that did
    /// not complete; a complete one's page is counted as a page).
    pub fn held_bytes(&self) -> u64 {
        self.lock().bytes.capacity() as u64
    }

    /// The page is complete: the trailer follows it, and the page is
    /// returned (hashed, no copy) for a cache. `None` before
    /// [`start`](Self::start) or once ended (the first end stands).
    pub fn finish(&self) -> Option<std::sync::Arc<Page>> {
        let hashing = std::mem::take(&mut *self.hashing());
        let mut s = self.lock();
        if s.head.is_none() || s.end.is_some() {
            return None;
        }
        let mut bytes = std::mem::take(&mut s.bytes);
        // Grown by doubling (no Content-Length): the spare room would live
        // as long as the page, uncounted by the budgets. Reserved from a
        // Content-Length, it fits already and nothing is copied.
        if bytes.capacity() > bytes.len() + bytes.len() / 8 {
            bytes.shrink_to_fit();
        }
        let page = std::sync::Arc::new(hashing.finish(Bytes::from(bytes)));
        Some(s.end_with(page))
    }

    /// Ends a stream nothing was appended to with `page`, already whole (a
    /// cached page that a conditional request found unchanged): no copy.
    /// `None` if bytes were appended or it has ended.
    pub fn finish_with(
        &self,
        meta: &crate::secure::PageMeta,
        page: std::sync::Arc<Page>,
    ) -> Option<std::sync::Arc<Page>> {
        self.start(meta);
        let mut s = self.lock();
        if s.end.is_some() || !s.bytes.is_empty() {
            return None;
        }
        Some(s.end_with(page))
    }

    /// The page was cut short (or never came): what was sent of it is
    /// followed by a trailer with `why`, and the client keeps nothing.
    /// No-op once ended.
    pub fn fail(&self, why: crate::conn::Refusal) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.head.get_or_insert_with(|| vec![0, 0]);
            s.end = Some((StreamEnd::Failed(why).encode(), None));
        }
    }

    /// The complete page, once finished.
    pub fn page(&self) -> Option<std::sync::Arc<Page>> {
        self.lock().end.as_ref().and_then(|(_, p)| p.clone())
    }

    /// Whether it has ended (complete or not).
    pub fn has_ended(&self) -> bool {
        self.lock().end.is_some()
    }

    /// The stream as a client with `resume` gets it, in its four parts
    /// (head, START, the page from START, the trailer so far), handed to
    /// `f` under the lock, with whether it has ended; `None` while nothing
    /// may be sent. One layout for what is counted and what is copied.
    fn view<R>(&self, resume: Option<(u64, [u8; 32])>, f: impl FnOnce([&[u8]; 4], bool) -> R) -> Option<R> {
        let s = self.lock();
        let (Some(head), Some(start)) = (&s.head, s.start(resume)) else { return None };
        let start_field = start.to_be_bytes();
        let body = s.body();
        let page = body.get(usize::try_from(start).unwrap_or(usize::MAX).min(body.len())..).unwrap_or(&[]);
        let trailer: &[u8] = s.end.as_ref().map_or(&[], |(t, _)| &t[..]);
        Some(f([&head[..], &start_field[..], page, trailer], s.end.is_some()))
    }

    /// The stream as a client with `resume` gets it: bytes that may be
    /// sent now, and the whole length once it has ended.
    fn available(&self, resume: Option<(u64, [u8; 32])>) -> (u64, Option<u64>) {
        self.view(resume, |parts, ended| {
            let n = parts.iter().map(|p| p.len() as u64).sum();
            (n, ended.then_some(n))
        })
        .unwrap_or((0, None))
    }

    /// Appends bytes `from..to` of the stream as a client with `resume`
    /// gets it.
    fn copy(&self, resume: Option<(u64, [u8; 32])>, from: u64, to: u64, out: &mut Vec<u8>) {
        self.view(resume, |parts, _| {
            let mut at = 0u64;
            for part in parts {
                let len = part.len() as u64;
                let a = from.clamp(at, at + len) - at;
                let b = to.clamp(at, at + len) - at;
                if let (Ok(a), Ok(b)) = (usize::try_from(a), usize::try_from(b)) {
                    out.extend_from_slice(part.get(a..b).unwrap_or(&[]));
                }
                at += len;
            }
        });
    }
}

/// A client's view of a [`Stream`]: the whole page, or for a client that
/// asked to resume with the digest of its prefix (docs/PROTOCOL.md §9.6),
/// the page from there if that prefix turns out to be this page's.
#[derive(Debug, Clone)]
pub struct StreamView {
    /// The stream.
    pub stream: std::sync::Arc<Stream>,
    /// The client's prefix: its length and SHA-256.
    pub resume: Option<(u64, [u8; 32])>,
}

impl StreamView {
    /// The whole page, from its start.
    pub fn whole(stream: std::sync::Arc<Stream>) -> StreamView {
        StreamView { stream, resume: None }
    }
}

impl StreamInner {
    /// Where `resume`'s client starts in the page: 0, or the resume point
    /// once the page has reached it and the prefix is this page's; `None`
    /// while that is not known yet (nothing is sent until it is). Decided
    /// by the page's own bytes, so the answer never changes.
    fn start(&self, resume: Option<(u64, [u8; 32])>) -> Option<u64> {
        let Some((offset, sha)) = resume else { return Some(0) };
        let digests = match &self.end {
            Some((_, Some(page))) => &page.checkpoints,
            _ => &self.checkpoints,
        };
        match prefix_digest(digests, offset) {
            Some(d) => Some(if d == sha { offset } else { 0 }),
            // Not there yet: wait, unless it has ended (shorter) or the
            // offset is no resume point.
            None if is_resume_point(offset) && self.end.is_none() => None,
            None => Some(0),
        }
    }

    fn body(&self) -> &[u8] {
        match &self.end {
            Some((_, Some(page))) => page.bytes(),
            _ => &self.bytes,
        }
    }

    fn end_with(&mut self, page: std::sync::Arc<Page>) -> std::sync::Arc<Page> {
        let trailer = StreamEnd::Complete { len: page.len(), sha256: page.sha256() }.encode();
        self.bytes = Vec::new();
        self.end = Some((trailer, Some(std::sync::Arc::clone(&page))));
        page
    }
}

/// What a connection serves: a page in memory, or one still arriving.
#[derive(Debug, Clone)]
pub enum Body {
    /// The whole page, shared.
    Whole(std::sync::Arc<Page>),
    /// A page being downloaded, shared by every connection that asked.
    Streaming(StreamView),
}

impl Body {
    /// The `page_len` and `page_sha256` the answer announces.
    pub fn announced(&self) -> (u64, [u8; 32]) {
        match self {
            Body::Whole(p) => (p.len(), p.sha256()),
            Body::Streaming(_) => (STREAMED, [0; 32]),
        }
    }

    /// Bytes that may be sent now, and the total once known.
    pub fn available(&self) -> (u64, Option<u64>) {
        match self {
            Body::Whole(p) => (p.len(), Some(p.len())),
            Body::Streaming(v) => v.stream.available(v.resume),
        }
    }

    /// Appends bytes `start..end` (of the page, or of the stream) to `out`.
    pub fn copy(&self, start: u64, end: u64, out: &mut Vec<u8>) {
        match self {
            Body::Whole(p) => out.extend_from_slice(p.slice(start, end)),
            Body::Streaming(v) => v.stream.copy(v.resume, start, end, out),
        }
    }

    /// Whether it may still grow.
    pub fn is_streaming(&self) -> bool {
        matches!(self, Body::Streaming(_))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::conn::Refusal;
    use crate::secure::PageMeta;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    fn read(body: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        let (n, _) = body.available();
        // In odd pieces, across the head, page and trailer boundaries.
        let mut at = 0;
        while at < n {
            body.copy(at, (at + 777).min(n), &mut out);
            at += 777;
        }
        out
    }

    #[test]
    fn a_page_keeps_the_digest_of_every_resume_point() {
        let b = bytes(3 * CHECKPOINT as usize + 5);
        let page = Page::new(Bytes::from(b.clone()));
        assert_eq!(page.sha256(), sha(&b));
        for k in 1..=3u64 {
            assert_eq!(page.prefix_sha256(k * CHECKPOINT), Some(sha(&b[..(k * CHECKPOINT) as usize])));
        }
        for not in [0, 1, CHECKPOINT - 1, CHECKPOINT + 1, 4 * CHECKPOINT, u64::MAX] {
            assert_eq!(page.prefix_sha256(not), None, "{not}");
        }
    }

    #[test]
    fn trailers_round_trip_and_a_wrong_length_is_none() {
        let sha = [9u8; 32];
        for end in [
            StreamEnd::Complete { len: 12345, sha256: sha },
            StreamEnd::Failed(Refusal::Status(404)),
            StreamEnd::Failed(Refusal::TooLarge),
        ] {
            assert_eq!(StreamEnd::decode(&end.encode()), Some(end));
        }
        assert_eq!(StreamEnd::decode(&[0u8; TRAILER_LEN - 1]), None);
        assert_eq!(StreamEnd::decode(&[0u8; TRAILER_LEN + 1]), None);
        // Code 0 is "complete": a refusal never encodes as it.
        assert_ne!(StreamEnd::Failed(Refusal::Other(0)).encode()[0], 0);
    }

    /// A budget counts a fetch under way as its limit: the buffer never
    /// holds more, however the page arrives (plain doubling took this one
    /// to 4,096,000 bytes), and a Content-Length beyond the limit reserves
    /// only it.
    #[test]
    fn a_streams_buffer_stays_within_its_limit() {
        let meta = PageMeta { status: 200, content_type: String::new(), final_url: "https://a.b/".into() };
        let limit = (3 << 20) + 1;
        let stream = Stream::with_limit(0, limit);
        stream.start(&meta);
        let piece = vec![7u8; 1000];
        let mut pushed = 0;
        while pushed < limit {
            let n = piece.len().min(limit - pushed);
            stream.push(&piece[..n]);
            pushed += n;
            assert!(stream.held_bytes() <= limit as u64, "{} bytes held after {pushed}", stream.held_bytes());
        }
        assert_eq!(stream.held_bytes(), limit as u64);
        let reserved = Stream::with_limit(0, limit);
        reserved.reserve(10 << 20);
        assert_eq!(reserved.held_bytes(), limit as u64);
        // A writer that does not hold to the limit: the buffer doubles
        // again rather than growing by each piece.
        stream.push(&piece);
        let past = stream.held_bytes();
        assert!(past >= 2 * limit as u64, "{past}");
        stream.push(&piece);
        assert_eq!(stream.held_bytes(), past, "no new buffer for the next piece");
        let page = stream.finish().expect("a complete page");
        assert_eq!(page.len(), limit as u64 + 2000);
    }

    #[test]
    fn a_stream_is_its_head_then_the_page_as_it_grows_then_the_trailer() {
        let meta = PageMeta { status: 200, content_type: "text/html".into(), final_url: "https://a.b/".into() };
        let mut head = Vec::new();
        meta.encode(usize::MAX, &mut head);
        let mut want = (head.len() as u16).to_be_bytes().to_vec();
        want.extend_from_slice(&head);
        want.extend_from_slice(&0u64.to_be_bytes());
        let page = bytes(100_000);
        let stream = Arc::new(Stream::new(0));
        let body = Body::Streaming(StreamView::whole(Arc::clone(&stream)));
        stream.push(b"before the headers: dropped");
        assert_eq!(body.available(), (0, None), "nothing before the headers");
        stream.start(&meta);
        stream.push(&page[..60_000]);
        assert_eq!(body.available(), (want.len() as u64 + 60_000, None));
        stream.push(&page[60_000..]);
        let whole = stream.finish().expect("complete");
        assert!(stream.finish().is_none(), "the first end stands");
        stream.fail(Refusal::Timeout);
        want.extend_from_slice(&page);
        want.extend_from_slice(&StreamEnd::Complete { len: page.len() as u64, sha256: sha(&page) }.encode());
        assert_eq!(body.available(), (want.len() as u64, Some(want.len() as u64)));
        assert!(read(&body) == want);
        assert!(whole.bytes()[..] == page[..] && whole.sha256() == sha(&page));
        assert!(stream.page().is_some_and(|p| Arc::ptr_eq(&p, &whole)));

        // Cut short before the headers: an empty META, then why.
        let failed = Arc::new(Stream::new(0));
        failed.fail(Refusal::Unreachable);
        let got = read(&Body::Streaming(StreamView::whole(failed)));
        let mut want = vec![0, 0];
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(&StreamEnd::Failed(Refusal::Unreachable).encode());
        assert_eq!(got, want);
    }

    #[test]
    fn a_resuming_view_waits_for_its_point_then_starts_there_only_if_the_prefix_matches() {
        let meta = PageMeta::default();
        let page = bytes(3 * CHECKPOINT as usize);
        let point = 2 * CHECKPOINT;
        let good = sha(&page[..point as usize]);
        let stream = Arc::new(Stream::new(0));
        let view = |resume| Body::Streaming(StreamView { stream: Arc::clone(&stream), resume });
        stream.start(&meta);
        stream.push(&page[..point as usize - 1]);
        assert_eq!(view(Some((point, good))).available(), (0, None), "not decided before the point");
        assert_eq!(view(Some((point, [1; 32]))).available(), (0, None));
        assert!(view(Some((point - 1, good))).available().0 > 0, "no resume point: from the start at once");
        stream.push(&page[point as usize - 1..]);
        let head = 2 + 3 + 8;
        let resumed = read(&view(Some((point, good))));
        assert_eq!(resumed[head - 8..head], point.to_be_bytes());
        assert!(resumed[head..] == page[point as usize..], "the rest only");
        let whole = read(&view(Some((point, [1; 32]))));
        assert_eq!(whole[head - 8..head], 0u64.to_be_bytes());
        assert!(whole[head..] == page[..], "another prefix: the whole page");
        // A page that ends short of the point is served whole.
        let short = Arc::new(Stream::new(0));
        short.start(&meta);
        short.push(&page[..1000]);
        let v = Body::Streaming(StreamView { stream: Arc::clone(&short), resume: Some((point, good)) });
        assert_eq!(v.available(), (0, None));
        short.finish();
        assert_eq!(v.available().1, Some(head as u64 + 1000 + TRAILER_LEN as u64));
    }
}
