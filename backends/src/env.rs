//! `${NAME}` in config values: secrets come from the environment, never
//! from config files.

/// Replaces every `${NAME}` in `value` with the variable `NAME` of `env`;
/// `$${` is a literal `${`. Fails naming every variable that is missing.
pub fn expand(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut missing = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let close = after
                .find('}')
                .ok_or("has a `${` without its `}` (write `$${` for a literal `${`)")?;
            let name = &after[..close];
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}`: a variable name is letters, digits and `_`, not starting with a digit"
                ));
            }
            match env(name).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(&v),
                None => missing.push(name),
            }
            rest = &after[close + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    match missing.as_slice() {
        [] => Ok(out),
        [one] => Err(format!(
            "the environment variable {one} is not set (or empty)"
        )),
        many => Err(format!(
            "the environment variables {} are not set (or empty)",
            many.join(", ")
        )),
    }
}
