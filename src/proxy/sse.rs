//! Server-sent events framing at the byte level.
//!
//! The [`Framer`] cuts a byte stream into whole events (everything up to and
//! including the blank line that dispatches an event) without changing a byte, so
//! that a relay can forward an SSE stream event by event, and never forward half an
//! event when the upstream fails. Line terminators are CR, LF or CRLF, as the
//! WHATWG event-stream rules say, and may be split across chunks. [`parse_event`]
//! reads the `event`, `data` and `id` fields of one raw event.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Cuts a byte stream into complete events.
#[derive(Debug, Default)]
pub struct Framer {
    /// Bytes received but not yet part of a complete event.
    pending: BytesMut,
    /// Scanner state carried across chunks.
    state: LineState,
}

#[derive(Debug, Clone, Copy)]
struct LineState {
    /// No byte of the current line has been seen yet.
    at_line_start: bool,
    /// The previous byte was CR, so an LF now completes that terminator.
    after_cr: bool,
}

impl Default for LineState {
    fn default() -> Self {
        Self {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl LineState {
    /// Scans `bytes`, returning the offset just past the last blank line (the end of
    /// the last complete event) in it, if any.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut last_boundary = None;
        let mut i = 0;
        while i < bytes.len() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[i] == b'\n' {
                    // The LF of a CRLF: part of the terminator already counted.
                    if last_boundary == Some(i) {
                        last_boundary = Some(i + 1);
                    }
                    i += 1;
                    continue;
                }
            }
            // Jump to the next line terminator.
            let rest = &bytes[i..];
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    if !rest.is_empty() {
                        self.at_line_start = false;
                    }
                    break;
                }
                Some(offset) => {
                    if offset > 0 {
                        self.at_line_start = false;
                    }
                    let at = i + offset;
                    if self.at_line_start {
                        last_boundary = Some(at + 1);
                    }
                    self.at_line_start = true;
                    self.after_cr = bytes[at] == b'\r';
                    i = at + 1;
                }
            }
        }
        last_boundary
    }
}

impl Framer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the bytes of every event it completes, in one piece
    /// (possibly several events), or `None` when no event is complete yet. The
    /// concatenation of everything returned plus [`Framer::finish`] is exactly the
    /// input.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        let boundary = self.state.scan(&chunk);
        if self.pending.is_empty() {
            match boundary {
                Some(end) if end == chunk.len() => Some(chunk),
                Some(end) => {
                    self.pending.extend_from_slice(&chunk[end..]);
                    Some(chunk.slice(..end))
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    None
                }
            }
        } else {
            let before = self.pending.len();
            self.pending.extend_from_slice(&chunk);
            boundary.map(|end| self.pending.split_to(before + end).freeze())
        }
    }

    /// Whether bytes of an unfinished event are being held.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many bytes of an unfinished event are being held.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Gives up holding an unfinished event: returns its bytes so far. The scanner
    /// keeps its place, so the event's end is still found.
    pub fn release_partial(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }

    /// Ends the stream: returns the held bytes of an unfinished event (which a
    /// relay forwards unchanged when the upstream ended cleanly).
    pub fn finish(&mut self) -> Bytes {
        self.state = LineState::default();
        std::mem::take(&mut self.pending).freeze()
    }

    /// Drops the held bytes of an unfinished event.
    pub fn discard(&mut self) {
        self.pending.clear();
        self.state = LineState::default();
    }
}

/// The fields of one event, borrowed from its bytes where they can be: a
/// single `data` line of valid UTF-8, the usual case, is not copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, if any.
    pub event: Option<Cow<'a, str>>,
    /// The `data:` lines joined with `\n`.
    pub data: Cow<'a, str>,
    /// The `id:` field, if any.
    pub id: Option<Cow<'a, str>>,
}

/// Cuts bytes made of whole events (as [`Framer::push`] returns them) into one
/// piece per event, each with its terminating blank line, handing each to `each`
/// in order.
pub fn split_events(piece: &Bytes, mut each: impl FnMut(Bytes)) {
    let b = &piece[..];
    let (mut start, mut line_start, mut i) = (0, 0, 0);
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &b[i..]) {
        let at = i + offset;
        let mut end = at + 1;
        if b[at] == b'\r' && b.get(at + 1) == Some(&b'\n') {
            end += 1;
        }
        if at == line_start {
            each(piece.slice(start..end));
            start = end;
        }
        line_start = end;
        i = end;
    }
    if start < b.len() {
        each(piece.slice(start..));
    }
}

/// Reads the fields of one raw event as the WHATWG rules say: comments skipped, one
/// leading space of a value removed, `data` lines joined with `\n`, bytes that are
/// not UTF-8 replaced. Returns `None` for an event with no `data` field (which
/// clients do not dispatch).
pub fn parse_event(raw: &[u8]) -> Option<Event<'_>> {
    let mut event = Event::default();
    let mut has_data = false;
    let mut rest = raw;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = &rest[end..];
        if let Some(stripped) = rest.strip_prefix(b"\r\n") {
            rest = stripped;
        } else if let Some((_, stripped)) = rest.split_first() {
            rest = stripped;
        }
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => event.event = Some(text(value)),
            b"data" => {
                if has_data {
                    let data = event.data.to_mut();
                    data.push('\n');
                    data.push_str(&text(value));
                } else {
                    event.data = text(value);
                }
                has_data = true;
            }
            b"id" if !value.contains(&0) => event.id = Some(text(value)),
            _ => {}
        }
    }
    has_data.then_some(event)
}

/// A field's value as text: borrowed when it is UTF-8, else a copy with every
/// sequence that is not UTF-8 replaced by U+FFFD.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_events_split_one_by_one_whatever_the_line_ends() {
        let piece = Bytes::from_static(b"data: a\n\ndata: b\r\n\r\n: ping\r\rdata: c\ndata: d\n\n");
        let mut events = Vec::new();
        split_events(&piece, |event| events.push(event));
        let texts: Vec<&[u8]> = events.iter().map(|e| &e[..]).collect();
        assert_eq!(
            texts,
            [
                &b"data: a\n\n"[..],
                b"data: b\r\n\r\n",
                b": ping\r\r",
                b"data: c\ndata: d\n\n"
            ]
        );
        assert_eq!(events.concat(), piece.to_vec());
    }

    use super::*;

    /// Feeds `input` split at every position in `cuts`, collecting what comes out.
    fn frame(input: &[u8], cuts: &[usize]) -> (Vec<Bytes>, Bytes) {
        let mut framer = Framer::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            if let Some(b) = framer.push(Bytes::copy_from_slice(&input[start..cut])) {
                out.push(b);
            }
            start = cut;
        }
        (out, framer.finish())
    }

    #[test]
    fn whole_events_pass_through_as_they_are() {
        let input = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let (out, rest) = frame(input, &[]);
        assert_eq!(out, vec![Bytes::from_static(input)]);
        assert!(rest.is_empty());
    }

    #[test]
    fn partial_events_are_held_until_their_blank_line() {
        let input = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n";
        // Cut inside the second event, then inside its blank line.
        let (out, rest) = frame(input, &[12, 30, 35]);
        let joined: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(joined, input);
        assert_eq!(out[0].as_ref(), b"event: a\ndata: 1\n\n");
        assert_eq!(out.last().unwrap().as_ref(), b"event: b\ndata: 2\n\n");
        assert!(rest.is_empty());
    }

    #[test]
    fn every_split_of_every_terminator_style_keeps_the_bytes() {
        for input in [
            &b"data: x\r\n\r\ndata: y\r\n\r\n"[..],
            b"data: x\r\rdata: y\r\r",
            b"data: x\n\ndata: y\n\n",
            b": comment\ndata: x\n\ndata: tail-without-blank-line",
        ] {
            for cut in 0..=input.len() {
                let (out, rest) = frame(input, &[cut]);
                let mut joined: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
                joined.extend_from_slice(&rest);
                assert_eq!(joined, input, "cut at {cut}");
                for piece in &out {
                    let last = piece.last().copied();
                    assert!(matches!(last, Some(b'\n' | b'\r')), "cut {cut}: {piece:?}");
                }
            }
        }
    }

    #[test]
    fn crlf_blank_line_split_between_cr_and_lf() {
        let mut framer = Framer::new();
        assert_eq!(
            framer.push(Bytes::from_static(b"data: x\r\n\r")).as_deref(),
            Some(&b"data: x\r\n\r"[..])
        );
        // The LF that completes the CRLF is carried into the next piece, unchanged.
        assert_eq!(
            framer
                .push(Bytes::from_static(b"\ndata: y\r\n\r\n"))
                .as_deref(),
            Some(&b"\ndata: y\r\n\r\n"[..])
        );
    }

    #[test]
    fn an_unterminated_tail_is_returned_by_finish() {
        let mut framer = Framer::new();
        assert!(framer.push(Bytes::from_static(b"data: 1")).is_none());
        assert!(framer.has_partial());
        assert_eq!(framer.finish().as_ref(), b"data: 1");
        assert!(!framer.has_partial());
    }

    #[test]
    fn a_released_partial_event_still_ends_where_it_ends() {
        let mut framer = Framer::new();
        assert!(framer.push(Bytes::from_static(b"data: long")).is_none());
        assert_eq!(framer.held(), 10);
        assert_eq!(framer.release_partial().as_ref(), b"data: long");
        assert!(!framer.has_partial());
        // The rest of that event, its blank line, then the next event.
        assert_eq!(
            framer
                .push(Bytes::from_static(b"er\n\ndata: 2\n\n"))
                .as_deref(),
            Some(&b"er\n\ndata: 2\n\n"[..])
        );
    }

    #[test]
    fn parse_fields() {
        let e = parse_event(b"event: response.created\ndata: {\"a\":\ndata:1}\nid: 7\n\n").unwrap();
        assert_eq!(e.event.as_deref(), Some("response.created"));
        assert_eq!(e.data, "{\"a\":\n1}");
        assert_eq!(e.id.as_deref(), Some("7"));
        assert!(parse_event(b": keep-alive\n\n").is_none());
        assert_eq!(parse_event(b"\ndata: y\r\n\r\n").unwrap().data, "y");
    }

    #[test]
    fn one_data_line_is_read_in_place_and_bad_bytes_are_replaced() {
        let e = parse_event(b"event: e\ndata: {\"a\":1}\n\n").unwrap();
        assert!(matches!(e.data, Cow::Borrowed("{\"a\":1}")));
        assert!(matches!(e.event, Some(Cow::Borrowed("e"))));
        let bad = parse_event(b"data: a\xffb\ndata: \xe2\x82\n\n").unwrap();
        assert_eq!(bad.data, "a\u{FFFD}b\n\u{FFFD}");
        assert_eq!(parse_event(b"data\n\n").unwrap().data, "");
        assert_eq!(parse_event(b"id: a\0b\ndata: x\n\n").unwrap().id, None);
    }
}
