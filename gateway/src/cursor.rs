//! Where a client is in a route's stream: the `Last-Event-ID` it resumes from.
//!
//! An id must survive two trips: out as one SSE `id:` line, back as a
//! `Last-Event-ID` header (which proxies may refuse with non-ASCII bytes, and
//! which loses leading and trailing spaces). So:
//!
//! - a route with one backend uses the backend's ids with `%`, control
//!   characters, spaces and non-ASCII percent-encoded: the ids backends
//!   really use (`5`, `1700000000000-0`, UUIDs) are unchanged, and any other
//!   id still comes back exactly;
//! - a route that merges several needs the position in each: its ids are
//!   cursors written as a URL-encoded form, `name=id&name=id` (names in route
//!   order, only backends that have sent an id).

use std::borrow::Cow;
use std::sync::Arc;

use backends::Shown;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// What a single backend's id has encoded (non-ASCII always is).
const ID_ESCAPES: &AsciiSet = &CONTROLS.add(b'%').add(b' ');

/// Whether [`escape`] changes this byte: controls, `%`, space, non-ASCII.
fn needs_escape(b: u8) -> bool {
    // Controls are below the space and DEL (0x7f), non-ASCII above it: the
    // same test as `is_ascii_control() || b'%' || b' ' || !is_ascii()` in
    // three comparisons (it runs on every id of every delivery).
    b <= b' ' || b == b'%' || b >= 0x7f
}

/// A backend's id as a header-safe token.
fn escape(id: &str) -> Cow<'_, str> {
    utf8_percent_encode(id, ID_ESCAPES).into()
}

/// The backend's id from a token (a token that decodes to invalid UTF-8 was
/// not one of ours, and is passed on as it is).
fn unescape(token: &str) -> Cow<'_, str> {
    percent_decode_str(token)
        .decode_utf8()
        .unwrap_or(Cow::Borrowed(token))
}

/// The position of a client in a route's stream.
#[derive(Clone, Debug)]
pub struct Cursor {
    names: Arc<[Arc<str>]>,
    positions: Vec<Option<Arc<str>>>,
    current: Option<Arc<str>>,
}

impl Cursor {
    /// Parses the `Last-Event-ID` a request resumes from (`None` or empty
    /// for a fresh start) for a route with these backends.
    pub fn parse(names: Arc<[Arc<str>]>, last_event_id: Option<&str>) -> Result<Self, String> {
        let last = last_event_id.filter(|id| !id.is_empty());
        let mut positions = vec![None; names.len()];
        match (last, names.len()) {
            (None, _) => {}
            (Some(id), 1) => positions[0] = Some(Arc::from(unescape(id))),
            (Some(id), _) => {
                for (name, position) in form_urlencoded::parse(id.as_bytes()) {
                    let Some(i) = names.iter().position(|n| **n == *name) else {
                        return Err(format!(
                            "Last-Event-ID {} is not a cursor of this route: \
                             it names no backend {}",
                            Shown(id),
                            Shown(&name)
                        ));
                    };
                    if positions[i].replace(Arc::from(&*position)).is_some() {
                        return Err(format!(
                            "Last-Event-ID {} names backend {} twice",
                            Shown(id),
                            Shown(&name)
                        ));
                    }
                }
            }
        }
        Ok(Self {
            names,
            positions,
            current: last.map(Arc::from),
        })
    }

    /// Where backend `index` resumes from.
    pub fn position(&self, index: usize) -> Option<&str> {
        self.positions.get(index)?.as_deref()
    }

    /// Records that backend `index` sent an event with `id`, and returns the
    /// id to send for it (the cursor's current one, lent: no reference
    /// count taken and given back per event).
    pub fn advance(&mut self, index: usize, id: &Arc<str>) -> &Arc<str> {
        let sent = self.peek(index, id);
        if self.names.len() > 1 {
            self.positions[index] = Some(Arc::clone(id));
        }
        self.current.insert(sent)
    }

    /// The id [`advance`](Self::advance) would return, without moving.
    pub fn peek(&self, index: usize, id: &Arc<str>) -> Arc<str> {
        if self.names.len() == 1 {
            // The ids backends use need no escape: one scan says so, and the
            // id is shared as it is (the escaping allocates a copy to
            // compare). A borrowed result may still differ: " " gives "%20".
            // A plain loop, not a fold: ids are short, and a vectorized
            // fold's set-up cost more than the whole id (callgrind).
            if !id.bytes().any(needs_escape) {
                return Arc::clone(id);
            }
            return Arc::from(escape(id));
        }
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (i, (name, position)) in self.names.iter().zip(&self.positions).enumerate() {
            let position = if i == index {
                Some(id)
            } else {
                position.as_ref()
            };
            if let Some(position) = position {
                form.append_pair(name, position);
            }
        }
        Arc::from(form.finish())
    }

    /// The id of the last event sent (or resumed from).
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan that skips escaping agrees with the escaping, byte by byte.
    #[test]
    fn the_escape_check_agrees_with_the_escaping() {
        let chars = (0u8..=0x7f).map(char::from).chain(['é', '€', '😀']);
        for c in chars {
            let id = format!("a{c}b");
            let changed = escape(&id) != id;
            assert_eq!(id.bytes().any(needs_escape), changed, "{c:?}");
        }
    }

    fn names(n: &[&str]) -> Arc<[Arc<str>]> {
        n.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn one_backend_uses_its_ids() {
        let mut c = Cursor::parse(names(&["demo"]), Some("a=b&c")).unwrap();
        assert_eq!(c.position(0), Some("a=b&c"));
        for plain in [
            "7",
            "1700000000000-0",
            "a=b&c",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            assert_eq!(&**c.advance(0, &Arc::from(plain)), plain);
        }
        assert_eq!(c.current(), Some("0f8fad5b-d9cb-469f-a165-70867728950e"));
    }

    #[test]
    fn any_single_id_comes_back_exactly() {
        for id in [" café\r\n\0 100% ", "%41", "\u{FEFF}\t", " ", "é"] {
            let mut c = Cursor::parse(names(&["b"]), None).unwrap();
            let token = Arc::clone(c.advance(0, &Arc::from(id)));
            assert!(token.bytes().all(|b| b.is_ascii_graphic()), "{token:?}");
            let back = Cursor::parse(names(&["b"]), Some(&token)).unwrap();
            assert_eq!(back.position(0), Some(id));
        }
    }

    #[test]
    fn merged_cursor_round_trips_any_id() {
        let backends = names(&["a b", "x&y=z"]);
        let mut c = Cursor::parse(Arc::clone(&backends), None).unwrap();
        assert_eq!(c.current(), None);
        let id = Arc::clone(c.advance(1, &Arc::from("1-0&q=%")));
        assert_eq!(&*id, "x%26y%3Dz=1-0%26q%3D%25");
        let id = Arc::clone(c.advance(0, &Arc::from("ü 5")));
        let back = Cursor::parse(backends, Some(&id)).unwrap();
        assert_eq!(back.position(0), Some("ü 5"));
        assert_eq!(back.position(1), Some("1-0&q=%"));
    }

    #[test]
    fn foreign_cursors_are_refused() {
        let backends = names(&["a", "b"]);
        assert!(Cursor::parse(Arc::clone(&backends), Some("5")).is_err());
        assert!(Cursor::parse(Arc::clone(&backends), Some("a=1&a=2")).is_err());
        let c = Cursor::parse(backends, Some("b=9")).unwrap();
        assert_eq!((c.position(0), c.position(1)), (None, Some("9")));
    }
}
