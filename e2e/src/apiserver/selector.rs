//! Label and field selectors, parsed and matched as kube-apiserver does for
//! `labelSelector` and `fieldSelector` on list and watch.

use serde_json::Value;

use super::fields::FieldSource;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for term in split_top_level(input)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
            LabelRequirement::GreaterThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelRequirement::LessThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("unable to parse requirement: unexpected ')' in {input:?}")
                })?;
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unclosed '(' in {input:?}"
        ));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        validate_label_key(key)?;
        return Ok(LabelRequirement::DoesNotExist(key.to_string()));
    }
    for (op, is_eq) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((k, v)) = term.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            validate_label_key(k)?;
            validate_label_value(v)?;
            return Ok(if is_eq {
                LabelRequirement::Equals(k.into(), v.into())
            } else {
                LabelRequirement::NotEquals(k.into(), v.into())
            });
        }
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = term.split_once(op) {
            let k = k.trim();
            validate_label_key(k)?;
            let n: i64 = v.trim().parse().map_err(|_| {
                format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {v:?}")
            })?;
            return Ok(if gt {
                LabelRequirement::GreaterThan(k.into(), n)
            } else {
                LabelRequirement::LessThan(k.into(), n)
            });
        }
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim_start();
        let (op, set) = if let Some(set) = rest.strip_prefix("notin") {
            ("notin", set)
        } else if let Some(set) = rest.strip_prefix("in") {
            ("in", set)
        } else {
            return Err(format!(
                "unable to parse requirement: unknown operator in {term:?}"
            ));
        };
        let set = set.trim();
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("unable to parse requirement: expected '(' in {term:?}"))?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        validate_label_key(key)?;
        for v in &values {
            validate_label_value(v)?;
        }
        if values.is_empty() {
            return Err(format!(
                "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty: {term:?}"
            ));
        }
        return Ok(if op == "in" {
            LabelRequirement::In(key.to_string(), values)
        } else {
            LabelRequirement::NotIn(key.to_string(), values)
        });
    }
    validate_label_key(term)?;
    Ok(LabelRequirement::Exists(term.to_string()))
}

/// A qualified name with an optional DNS subdomain prefix (`example.com/name`).
fn validate_label_key(key: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            let prefix_ok =
                !prefix.is_empty() && prefix.len() <= 253 && prefix.split('.').all(is_dns_label);
            if !prefix_ok {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}: prefix part must be a DNS subdomain"
                ));
            }
            name
        }
        None => key,
    };
    if is_qualified_name_part(name) {
        Ok(())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

/// One field requirement: the field (e.g. `metadata.name`, read through its
/// [`FieldSource`]) equals or differs from `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    source: FieldSource,
    value: String,
    equals: bool,
}

/// A parsed `fieldSelector`; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses and resolves every field with `resolve` (the resource's
    /// fields, see [`super::fields::source`]), whose error is the message.
    pub fn parse(
        input: &str,
        resolve: impl Fn(&str) -> Result<FieldSource, String>,
    ) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        for term in split_unescaped(input, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, value, equals) = if let Some((f, v)) = split_once_unescaped(&term, "!=") {
                (f, v, false)
            } else if let Some((f, v)) = split_once_unescaped(&term, "==") {
                (f, v, true)
            } else if let Some((f, v)) = split_once_unescaped(&term, "=") {
                (f, v, true)
            } else {
                return Err(format!(
                    "invalid field selector: {term:?}: expected an operator ('=', '==' or '!=')"
                ));
            };
            requirements.push(FieldRequirement {
                source: resolve(field.trim())?,
                value: unescape(&value),
                equals,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements
            .iter()
            .all(|r| (r.source.value(object) == r.value) == r.equals)
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

fn split_once_unescaped(term: &str, op: &str) -> Option<(String, String)> {
    let mut i = 0;
    let bytes = term.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some((term[..i].to_string(), term[i + op.len()..].to_string()));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({ "metadata": { "name": "web", "namespace": "ns", "labels": labels }, "status": { "phase": "Running" } })
    }

    fn matches(sel: &str, labels: Value) -> bool {
        LabelSelector::parse(sel)
            .unwrap_or_else(|e| panic!("{sel}: {e}"))
            .matches(&obj(labels))
    }

    #[test]
    fn equality_operators() {
        assert!(matches("app=web", json!({"app": "web"})));
        assert!(matches("app==web", json!({"app": "web"})));
        assert!(!matches("app=web", json!({"app": "db"})));
        assert!(matches("app!=web", json!({"app": "db"})));
        assert!(matches("app!=web", json!({})));
        assert!(matches("", json!({})));
    }

    #[test]
    fn set_operators_and_existence() {
        assert!(matches("env in (prod, staging)", json!({"env": "prod"})));
        assert!(!matches("env in (prod,staging)", json!({"env": "dev"})));
        assert!(!matches("env in (prod)", json!({})));
        assert!(matches("env notin (prod)", json!({"env": "dev"})));
        assert!(matches("env notin (prod)", json!({})));
        assert!(matches("env", json!({"env": "x"})));
        assert!(!matches("env", json!({})));
        assert!(matches("!env", json!({})));
        assert!(!matches("!env", json!({"env": "x"})));
        assert!(matches(
            "app=web,env in (a,b),!gone",
            json!({"app": "web", "env": "b"})
        ));
        assert!(matches(
            "example.com/tier=front",
            json!({"example.com/tier": "front"})
        ));
        assert!(matches("n>3", json!({"n": "4"})));
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        assert!(LabelSelector::parse("env in (a").is_err());
        assert!(LabelSelector::parse("env in ()").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let p = |s: &str| {
            FieldSelector::parse(s, |field| match field {
                "metadata.name" | "metadata.namespace" | "status.phase" => Ok(FieldSource::Path {
                    path: field.split('.').map(str::to_string).collect(),
                    default: "",
                }),
                other => Err(format!("field label not supported: {other}")),
            })
        };
        assert!(p("metadata.name=web").is_ok_and(|f| f.matches(&o)));
        assert!(p("metadata.name==web,metadata.namespace=ns").is_ok_and(|f| f.matches(&o)));
        assert!(p("metadata.name!=web").is_ok_and(|f| !f.matches(&o)));
        assert!(p("status.phase=Running").is_ok_and(|f| f.matches(&o)));
        assert_eq!(
            p("spec.foo=bar"),
            Err("field label not supported: spec.foo".to_string())
        );
        assert!(p("metadata.name").is_err());
    }
}
