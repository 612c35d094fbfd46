//! A strict reader of the Prometheus text format (0.0.4), for tests that
//! check `/metrics`: every line must be a `# HELP`, a `# TYPE`, another
//! comment, or a sample of a family whose `# TYPE` came first; label values
//! are unescaped; a series must not repeat.

use std::collections::{BTreeMap, HashMap};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (`x_bucket` for a histogram `x`'s bucket).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Family name to its type (`counter`, `gauge`, `histogram`, …).
    pub types: HashMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses `text`, or says which line is wrong and why.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut exposition = Self::default();
        let mut seen = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let wrong = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        check_name(name).map_err(|e| wrong(&e))?;
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(wrong("unknown type"));
                        }
                        if exposition
                            .types
                            .insert(name.to_string(), kind.to_string())
                            .is_some()
                        {
                            return Err(wrong("a second TYPE for the family"));
                        }
                    }
                    (Some("TYPE"), _, _) => return Err(wrong("TYPE needs a name and a type")),
                    (Some("HELP"), Some(name), _) => check_name(name).map_err(|e| wrong(&e))?,
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line).map_err(|e| wrong(&e))?;
            if exposition.family_type(&sample.name).is_none() {
                return Err(wrong("a sample of no declared family"));
            }
            if !seen.insert((sample.name.clone(), sample.labels.clone())) {
                return Err(wrong("the series repeats"));
            }
            exposition.samples.push(sample);
        }
        Ok(exposition)
    }

    /// The type of the family `sample` belongs to (`x_bucket`, `x_sum` and
    /// `x_count` belong to the histogram `x`).
    fn family_type(&self, sample: &str) -> Option<&str> {
        if let Some(kind) = self.types.get(sample) {
            return Some(kind);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = sample.strip_suffix(suffix)?;
            self.types
                .get(family)
                .filter(|kind| *kind == "histogram" || (*kind == "summary" && *suffix != "_bucket"))
                .map(String::as_str)
        })
    }

    /// The value of the series `name` with exactly `labels`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The value of the series `name` with exactly `labels`; an absent
    /// series is 0 (a labelled series appears with its first count).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The type declared for the family `name`.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric name"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("a sample needs a value after its name")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value, then `,` or `}`.
            let start = match chars.peek() {
                Some((_, '}')) => {
                    let (i, _) = chars.next().ok_or("unreachable")?;
                    rest = &inner[i + 1..];
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unclosed labels".into()),
            };
            let eq = inner[start..].find('=').ok_or("a label without `=`")? + start;
            let key = &inner[start..eq];
            check_name(key).map_err(|_| format!("{key:?} is not a label name"))?;
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?}")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(format!("label {key}'s value is not closed")),
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match chars.peek().map(|(_, c)| *c) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                _ => return Err("labels are separated by `,`".into()),
            }
        }
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("a sample needs a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("{v:?} is not a number"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("{timestamp:?} is not a timestamp"))?;
    }
    if fields.next().is_some() {
        return Err("more after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_labels_and_escapes() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{route=\"x\\\"y\",b=\"\\\\\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# EOF\n";
        let e = Exposition::parse(text).unwrap();
        assert_eq!(
            e.get("a_total", &[("route", "x\"y"), ("b", "\\")]),
            Some(3.0)
        );
        assert_eq!(e.get("h_count", &[]), Some(2.0));
        assert_eq!(e.type_of("h"), Some("histogram"));
        assert_eq!(e.get("a_total", &[("route", "x\"y")]), None);
    }

    #[test]
    fn refuses_what_is_not_the_format() {
        for bad in [
            "x 1\n",
            "# TYPE x gauge\nx{a=1} 1\n",
            "# TYPE x gauge\nx 1\nx 2\n",
            "# TYPE x gauge\nx one\n",
            "# TYPE x gauge\nx{a=\"1\" 1\n",
            "# TYPE x gauge\n# TYPE x counter\n",
        ] {
            assert!(Exposition::parse(bad).is_err(), "{bad:?}");
        }
    }
}
