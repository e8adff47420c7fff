//! An incremental server-sent events parser.

use std::fmt;

/// One dispatched server-sent event, borrowed from the parser's buffers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field; `None` for the default type, `message`.
    pub event: Option<&'a str>,
    /// The `data:` lines, joined with `\n`.
    pub data: &'a [u8],
}

impl<'a> SseEvent<'a> {
    /// The event type, `message` when the stream gave none.
    pub fn event_type(&self) -> &'a str {
        self.event.unwrap_or("message")
    }

    /// The data as text, when it is UTF-8.
    pub fn data_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.data).ok()
    }
}

impl fmt::Debug for SseEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("event", &self.event)
            .field("data", &String::from_utf8_lossy(self.data))
            .finish()
    }
}

/// An incremental parser of `text/event-stream` bodies, following the
/// WHATWG rules.
///
/// Feed it chunks split anywhere (inside a line, between `\r` and `\n`,
/// inside a UTF-8 character); it calls back with each event as the blank
/// line that ends it arrives. Lines end in `\n`, `\r\n` or `\r`; a leading
/// byte order mark is skipped; `:` starts a comment; one space after a
/// field's colon is dropped; `data` lines are joined with `\n`; an event
/// without data is not dispatched; `id` and `retry` are kept
/// ([`last_event_id`](Self::last_event_id), [`retry`](Self::retry)).
///
/// Buffers are reused from event to event: a steady stream allocates
/// nothing. Line ends are found with `memchr`.
///
/// ```
/// use llm_tower::metering::SseParser;
///
/// let mut parser = SseParser::new();
/// let mut seen = Vec::new();
/// for chunk in [&b"event: ping\r"[..], b"\ndata: {}\r\n\r", b"\ndata: a\ndata:b\n\n"] {
///     parser.feed(chunk, |ev| {
///         seen.push((ev.event_type().to_owned(), ev.data_str().unwrap().to_owned()))
///     });
/// }
/// assert_eq!(seen, [("ping".into(), "{}".into()), ("message".into(), "a\nb".into())]);
/// ```
#[derive(Clone, Debug)]
pub struct SseParser {
    /// A line begun in an earlier chunk.
    line: Vec<u8>,
    fields: Fields,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs
    /// to that line end.
    after_cr: bool,
    /// Bytes of a leading byte order mark matched so far; `3` once past the
    /// start of the stream.
    bom: u8,
    /// The largest line or event held, in bytes.
    max_event_size: usize,
    /// An event outgrew `max_event_size`: parsing stopped.
    overflowed: bool,
}

/// The largest event an [`SseParser`] holds by default: 16 MiB. A stream
/// that sends a larger one is passed on untouched but no longer parsed.
pub const MAX_EVENT_SIZE: usize = 16 << 20;

impl Default for SseParser {
    fn default() -> Self {
        SseParser {
            line: Vec::new(),
            fields: Fields::default(),
            after_cr: false,
            bom: 0,
            max_event_size: MAX_EVENT_SIZE,
            overflowed: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Fields {
    /// The event type, when `has_event`; kept between events so a repeated
    /// type is neither validated nor copied again.
    event: String,
    has_event: bool,
    data: Vec<u8>,
    has_data: bool,
    last_id: String,
    retry: Option<u64>,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Sets the largest line or event held, in bytes, checked after each
    /// chunk: the parser never holds more than this limit plus one chunk,
    /// whatever the stream sends.
    pub fn with_max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// Whether an event outgrew the maximum size, after which the parser
    /// ignores the rest of the stream.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed
    }

    /// Parses the next chunk, calling `on_event` for every event it
    /// completes.
    pub fn feed(&mut self, chunk: &[u8], on_event: impl FnMut(SseEvent<'_>)) {
        if self.overflowed {
            return;
        }
        self.feed_inner(chunk, on_event);
        if self.line.len() + self.fields.data.len() > self.max_event_size {
            self.overflowed = true;
            self.line = Vec::new();
            self.fields.data = Vec::new();
        }
    }

    fn feed_inner(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let mut rest = chunk;
        if self.bom < 3 {
            rest = self.skip_bom(rest);
        }
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
            if self.line.is_empty() {
                self.fields.line(&rest[..i], &mut on_event);
            } else {
                self.line.extend_from_slice(&rest[..i]);
                self.fields.line(&self.line, &mut on_event);
                self.line.clear();
            }
            rest = self.past_line_end(&rest[i..]);
            // Blank lines (the end of an event) without another search.
            while let Some(b'\n' | b'\r') = rest.first() {
                self.fields.dispatch(&mut on_event);
                rest = self.past_line_end(rest);
            }
        }
        self.line.extend_from_slice(rest);
    }

    /// Skips the line end `rest` starts with: `\n`, `\r\n` or `\r` (which
    /// may be the first half of a `\r\n` split across chunks).
    fn past_line_end<'c>(&mut self, rest: &'c [u8]) -> &'c [u8] {
        match rest {
            [b'\r', b'\n', tail @ ..] => tail,
            [b'\r'] => {
                self.after_cr = true;
                &[]
            }
            [_, tail @ ..] => tail,
            [] => rest,
        }
    }

    fn skip_bom<'c>(&mut self, mut rest: &'c [u8]) -> &'c [u8] {
        while self.bom < 3 {
            let Some(&b) = rest.first() else {
                return rest;
            };
            if b == BOM[self.bom as usize] {
                self.bom += 1;
                rest = &rest[1..];
            } else {
                // Not a byte order mark after all: what matched is text.
                self.line.extend_from_slice(&BOM[..self.bom as usize]);
                self.bom = 3;
            }
        }
        rest
    }

    /// Whether an event or a line has begun and not been completed: at the
    /// end of a stream, such an event is discarded.
    pub fn has_pending(&self) -> bool {
        self.overflowed || !self.line.is_empty() || self.fields.has_data || self.fields.has_event
    }

    /// The last `id:` field seen.
    pub fn last_event_id(&self) -> &str {
        &self.fields.last_id
    }

    /// The last valid `retry:` field seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.fields.retry
    }
}

impl Fields {
    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        let (name, value): (&[u8], &[u8]) = if let Some(v) = line.strip_prefix(b"data:") {
            (b"data", v)
        } else if let Some(v) = line.strip_prefix(b"event:") {
            (b"event", v)
        } else {
            match memchr::memchr(b':', line) {
                Some(0) => return, // a comment
                Some(c) => (&line[..c], &line[c + 1..]),
                None => (line, &b""[..]),
            }
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                if self.event.as_bytes() != value {
                    self.event.clear();
                    self.event.push_str(&String::from_utf8_lossy(value));
                }
                self.has_event = !value.is_empty();
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                self.last_id.clear();
                self.last_id.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.has_data {
            on_event(SseEvent {
                event: self.has_event.then_some(self.event.as_str()),
                data: &self.data,
            });
        }
        self.has_event = false;
        self.data.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| {
                out.push((
                    e.event.map(str::to_owned),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        out
    }

    #[test]
    fn whatwg_examples() {
        // Comments, missing data, the space after the colon, empty data.
        let got = parse(&[b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"]);
        assert_eq!(
            got,
            [
                (None, "first event".to_owned()),
                (None, "second event".to_owned()),
                (None, " third event".to_owned())
            ]
        );
        let got = parse(&[b"data\n\ndata\ndata\n\ndata:"]);
        assert_eq!(got, [(None, String::new()), (None, "\n".to_owned())]);
    }

    #[test]
    fn line_ends_and_bom() {
        let got = parse(&[
            b"\xEF\xBB",
            b"\xBFevent: a\rdata: 1\r",
            b"\n\r\nevent:b\ndata:2\r\r",
        ]);
        assert_eq!(
            got,
            [
                (Some("a".to_owned()), "1".to_owned()),
                (Some("b".to_owned()), "2".to_owned())
            ]
        );
        // A partial BOM is text, not skipped.
        let got = parse(&[b"\xEF", b"data: x\n\n"]);
        assert_eq!(got, []);
    }

    #[test]
    fn event_types_do_not_leak_between_events() {
        let got = parse(&[b"event: a\ndata: 1\n\ndata: 2\n\nevent: a\r\nevent:\r\ndata: 3\r\n\r\n\n\nevent: b\n\ndata: 4\n\n"]);
        assert_eq!(
            got,
            [
                (Some("a".to_owned()), "1".to_owned()),
                (None, "2".to_owned()),
                (None, "3".to_owned()),
                (None, "4".to_owned())
            ]
        );
    }

    #[test]
    fn id_retry_and_pending() {
        let mut p = SseParser::new();
        p.feed(b"id: 7\nretry: 3000\nretry: x\ndata: a", |_| {});
        assert_eq!(p.last_event_id(), "7");
        assert_eq!(p.retry(), Some(3000));
        assert!(p.has_pending());
        p.feed(b"\n\n", |_| {});
        assert!(!p.has_pending());
    }

    #[test]
    fn an_oversized_event_stops_parsing_with_bounded_memory() {
        let mut p = SseParser::new().with_max_event_size(64);
        let mut n = 0;
        p.feed(b"data: small\n\n", |_| n += 1);
        assert_eq!(n, 1);
        for _ in 0..100 {
            p.feed(&[b'x'; 50], |_| n += 1);
        }
        assert!(p.is_overflowed());
        assert!(p.line.capacity() <= 128, "{}", p.line.capacity());
        p.feed(b"\n\ndata: later\n\n", |_| n += 1);
        assert_eq!(n, 1, "nothing parsed after the overflow");
        assert!(p.has_pending());
    }
}
