//! Keys from requests: a template whose `{param}`s the route's path fills,
//! and a pattern per key syntax that says which keys clients may read.
//!
//! A template is filled in one pass: a parameter's value is copied, never
//! searched for placeholders again, so `{a}` = `"{b}"` cannot pull in
//! `{b}`'s value. Each syntax checks values its own way: a glob key takes
//! any value (the pattern decides), a NATS subject refuses values that
//! would add tokens or wildcards.

use crate::problem::Problem;
use crate::{BackendError, ErrorKind, RequestContext};

/// Checks a key template read with a [`Glob`] allow pattern (Redis,
/// PostgreSQL): `field` names the template's config key (`stream`, `key`),
/// which is required; `allow` is required when the template has
/// placeholders, so that clients cannot reach arbitrary keys.
pub fn validate_glob_template(
    field: &str,
    template: &str,
    allow: Option<&str>,
    problems: &mut Vec<Problem>,
) {
    if template.is_empty() {
        problems.push(Problem::new(field, "required: the key clients read"));
    }
    if let Err(reason) = Template::parse(template) {
        problems.push(Problem::new(field, reason));
    }
    if template.contains('{') && allow.is_none() {
        problems.push(Problem::new(
            "allow",
            format!(
                "required when `{field}` has placeholders (`rooms:*`), so that clients cannot reach arbitrary keys"
            ),
        ));
    }
}

/// A key with `{param}` placeholders (`rooms:{room}`), checked when parsed.
/// (`Default`: the empty template.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// The template, or why its braces are wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        placeholders(text)?;
        Ok(Self(text.to_string()))
    }

    /// Whether it has placeholders (and so needs an allow pattern).
    pub fn has_placeholders(&self) -> bool {
        self.0.contains('{')
    }

    /// The text with each `{name}` replaced by `value(name)`, in one pass.
    pub fn fill<'a, E>(
        &self,
        mut value: impl FnMut(&str) -> Result<&'a str, E>,
    ) -> Result<String, E> {
        let mut out = String::with_capacity(self.0.len());
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            out.push_str(&rest[..open]);
            out.push_str(value(&rest[open + 1..open + close])?);
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The key a request names: each placeholder filled from the route's
    /// path parameters, each value first passed to `check` (a 400 there);
    /// a parameter the path lacks is the config's fault (500).
    pub fn resolve(
        &self,
        ctx: &RequestContext,
        check: impl Fn(&str, &str) -> Result<(), BackendError>,
    ) -> Result<String, BackendError> {
        self.fill(|name| {
            let value = ctx.params.get(name).ok_or_else(|| {
                BackendError::new(
                    ErrorKind::Internal,
                    format!(
                        "the key needs the path parameter {{{name}}}, which the route's path lacks"
                    ),
                )
            })?;
            check(name, value)?;
            Ok(value.as_str())
        })
    }

    /// The template with every placeholder filled with `x`: what a key of
    /// it looks like, for syntax checks.
    pub fn sample(&self) -> String {
        self.fill(|_| Ok::<_, ()>("x")).unwrap_or_default()
    }
}

/// The `{name}`s of a template, or why its braces are wrong.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or("a `{` without its `}`: placeholders are written `{param}`")?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() || name.contains('{') {
            return Err("a placeholder names a path parameter: `{param}`".into());
        }
        names.push(name);
        rest = &rest[open + close + 1..];
    }
    Ok(names)
}

/// Which keys clients may read.
pub trait Pattern {
    /// Whether `key` is one of them.
    fn allows(&self, key: &str) -> bool;
}

/// The key, or 404 when a pattern is set and does not allow it.
pub fn allowed(key: String, pattern: Option<&impl Pattern>) -> Result<String, BackendError> {
    match pattern {
        Some(pattern) if !pattern.allows(&key) => Err(BackendError::new(
            ErrorKind::NotFound,
            format!("no stream {} here", crate::Shown(&key)),
        )),
        _ => Ok(key),
    }
}

/// A glob where `*` matches any run of characters (`rooms:*`, which also
/// allows `rooms:a:b`): Redis keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// The pattern (any text is one).
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_string())
    }
}

impl Pattern for Glob {
    fn allows(&self, key: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = key.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// A NATS subject pattern: `.`-separated tokens, `*` one token, a final
/// `>` one or more (`rooms.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// The pattern, or why it is not a subject.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        check_subject(pattern)?;
        Ok(Self(pattern.to_string()))
    }

    /// Refuses a parameter value that would change what a subject means:
    /// empty, or holding `.`, `*`, `>`, whitespace or a control character.
    pub fn check_value(name: &str, value: &str) -> Result<(), BackendError> {
        if value.is_empty()
            || value.contains(['.', '*', '>'])
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(BackendError::bad_request(format!(
                "the path parameter {{{name}}} may not be empty or contain `.`, `*`, `>`, whitespace or control characters: they would change the NATS subject"
            )));
        }
        Ok(())
    }
}

impl Pattern for Subject {
    /// Whether every subject that `key` stands for is matched (so a key
    /// that is itself a wildcard must be within the pattern too).
    fn allows(&self, key: &str) -> bool {
        let mut pattern = self.0.split('.');
        let mut subject = key.split('.');
        loop {
            match (pattern.next(), subject.next()) {
                (Some(">"), Some(_)) | (None, None) => return true,
                (Some("*"), Some(token)) if token != ">" => {}
                (Some(want), Some(token)) if want == token => {}
                _ => return false,
            }
        }
    }
}

/// Checks a subject or subject pattern: `.`-separated non-empty tokens
/// without whitespace or control characters, `*` and `>` only as whole
/// tokens, `>` only last.
pub fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "{subject:?} has an empty token (a leading, trailing or doubled `.`)"
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{subject:?} has whitespace or a control character"));
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(format!(
                "{subject:?}: `*` and `>` are wildcards and stand alone between dots"
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!("{subject:?}: `>` may only be the last token"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(params: &[(&str, &str)]) -> RequestContext {
        RequestContext {
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..RequestContext::default()
        }
    }

    #[test]
    fn templates_fill_in_one_pass() {
        assert!(Template::parse("a.{x").is_err());
        assert!(Template::parse("a.{}").is_err());
        let template = Template::parse("k:{x}:{y}").unwrap();
        assert!(template.has_placeholders());
        // A value that looks like a placeholder stays what it is.
        let key = template.resolve(&ctx(&[("x", "{y}"), ("y", "2")]), |_, _| Ok(()));
        assert_eq!(key, Ok("k:{y}:2".to_string()));
        let missing = template.resolve(&ctx(&[("x", "1")]), |_, _| Ok(()));
        assert_eq!(missing.map_err(|e| e.kind), Err(ErrorKind::Internal));
        assert_eq!(template.sample(), "k:x:x");
    }

    #[test]
    fn globs() {
        let rooms = Glob::new("rooms:*");
        assert!(rooms.allows("rooms:a") && rooms.allows("rooms:") && rooms.allows("rooms:a:b"));
        assert!(!rooms.allows("secrets:a"));
        assert!(Glob::new("a*b*c").allows("a-x-b-y-c"));
        assert!(!Glob::new("a*b*c").allows("a-x-c-y-b"));
        assert!(Glob::new("exact").allows("exact"));
        assert!(!Glob::new("exact").allows("exactly"));
        assert_eq!(
            allowed("x".into(), Some(&Glob::new("y"))).map_err(|e| e.kind),
            Err(ErrorKind::NotFound)
        );
    }

    #[test]
    fn subjects() {
        let within = |p: &str, s: &str| Subject::parse(p).unwrap().allows(s);
        assert!(within("rooms.*", "rooms.a"));
        assert!(!within("rooms.*", "rooms.a.b"));
        assert!(!within("rooms.*", "rooms"));
        assert!(within("rooms.>", "rooms.a.b"));
        assert!(!within("rooms.>", "rooms"));
        assert!(within("rooms.*", "rooms.*"), "a wildcard within a wildcard");
        assert!(!within("rooms.*", "rooms.>"), "wider than the pattern");
        assert!(!within("rooms.a", "rooms.*"));
        assert!(within("exact.one", "exact.one"));
        assert!(check_subject("rooms.>").is_ok());
        assert!(check_subject("rooms.*.x").is_ok());
        for bad in ["rooms..x", "rooms.>.x", "rooms.a*", "rooms.a b"] {
            assert!(check_subject(bad).is_err(), "{bad}");
        }
        assert!(Subject::check_value("room", "lobby").is_ok());
        for bad in ["a.b", "*", ">", "a b", "a\tb", ""] {
            let refused = Subject::check_value("room", bad).map_err(|e| e.kind);
            assert_eq!(refused, Err(ErrorKind::BadRequest), "{bad:?}");
        }
    }
}
