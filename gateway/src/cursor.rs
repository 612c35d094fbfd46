//! Where a client is in a route's stream: the `Last-Event-ID` it resumes from.
//!
//! A route with one backend uses that backend's ids unchanged. A route that
//! merges several needs the position in each: its ids are cursors written as
//! a URL-encoded form, `name=id&name=id` (names in route order, only backends
//! that have sent an id). Any id or name survives the encoding, and a cursor
//! is short enough for a header.

use std::sync::Arc;

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
            (Some(id), 1) => positions[0] = Some(Arc::from(id)),
            (Some(id), _) => {
                for (name, position) in form_urlencoded::parse(id.as_bytes()) {
                    let Some(i) = names.iter().position(|n| **n == *name) else {
                        return Err(format!(
                            "Last-Event-ID {id:?} is not a cursor of this route: \
                             it names no backend {name:?}"
                        ));
                    };
                    if positions[i].replace(Arc::from(&*position)).is_some() {
                        return Err(format!("Last-Event-ID {id:?} names backend {name:?} twice"));
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
    /// id to send for it.
    pub fn advance(&mut self, index: usize, id: &Arc<str>) -> Arc<str> {
        let id = if self.names.len() == 1 {
            Arc::clone(id)
        } else {
            self.positions[index] = Some(Arc::clone(id));
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (name, position) in self.names.iter().zip(&self.positions) {
                if let Some(position) = position {
                    form.append_pair(name, position);
                }
            }
            Arc::from(form.finish())
        };
        self.current = Some(Arc::clone(&id));
        id
    }

    /// The id of the last event sent (or resumed from).
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Arc<[Arc<str>]> {
        n.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn one_backend_uses_its_ids() {
        let mut c = Cursor::parse(names(&["demo"]), Some("a=b&c")).unwrap();
        assert_eq!(c.position(0), Some("a=b&c"));
        assert_eq!(&*c.advance(0, &Arc::from("7")), "7");
        assert_eq!(c.current(), Some("7"));
    }

    #[test]
    fn merged_cursor_round_trips_any_id() {
        let backends = names(&["a b", "x&y=z"]);
        let mut c = Cursor::parse(Arc::clone(&backends), None).unwrap();
        assert_eq!(c.current(), None);
        let id = c.advance(1, &Arc::from("1-0&q=%"));
        assert_eq!(&*id, "x%26y%3Dz=1-0%26q%3D%25");
        let id = c.advance(0, &Arc::from("ü 5"));
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
