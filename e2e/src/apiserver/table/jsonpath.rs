//! The JSONPath of CRD printer columns, evaluated as kube-apiserver's table
//! convertor evaluates it: client-go's `util/jsonpath` with
//! `AllowMissingKeys(true)` (k8s.io/client-go/util/jsonpath/{parser,jsonpath}.go).
//!
//! Supported: `.field` (a `\.` in a name is a literal dot), `['key']`
//! (single quotes, as client-go's dict-key form), `[n]` (negative from the
//! end), `[a:b]`, `[*]` / `.*`, and filters `[?(@.path OP literal)]` with
//! `==`, `!=`, `<`, `>`, `<=`, `>=` (literals: `"text"`, `'text'`, integers,
//! decimals, or another `@` path) and `[?(@.path)]` (exists). Unions,
//! recursive descent and ranges are not: such a column's path fails to
//! parse and its cells are empty.
//!
//! What client-go does and this copies: a missing key yields no value (not
//! an error); `null` is skipped by field and index steps; an index out of
//! bounds, indexing or filtering something that is not an array, a filter
//! whose left side has no single value on some element, and a comparison of
//! different types (a string with a number, an integer with a decimal) are
//! errors, which the convertor turns into an empty cell.

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed column path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Wildcard,
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Filter(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: JsonPath,
    /// `None`: the exists filter.
    compare: Option<(Op, Operand)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Literal(Value),
    Path(JsonPath),
}

/// Why evaluation failed (client-go returns an error; the cell is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvalError(pub String);

impl JsonPath {
    /// Parses a printer column's `jsonPath` (`.status.phase`, ...).
    pub(crate) fn parse(text: &str) -> Result<JsonPath, String> {
        let chars: Vec<char> = text.trim().chars().collect();
        let mut pos = 0;
        // `{.a.b}` is what kube-apiserver parses; a CRD's path has no braces.
        let mut steps = Vec::new();
        if chars.first() == Some(&'@') || chars.first() == Some(&'$') {
            pos = 1;
        }
        while pos < chars.len() {
            match chars[pos] {
                '.' => {
                    pos += 1;
                    let mut name = String::new();
                    while pos < chars.len() && chars[pos] != '.' && chars[pos] != '[' {
                        if chars[pos] == '\\' && pos + 1 < chars.len() {
                            pos += 1;
                        }
                        name.push(chars[pos]);
                        pos += 1;
                    }
                    match name.as_str() {
                        "" => return Err(format!("unsupported path {text:?} (recursive descent)")),
                        "*" => steps.push(Step::Wildcard),
                        _ => steps.push(Step::Field(name)),
                    }
                }
                '[' => {
                    let end = closing_bracket(&chars, pos)
                        .ok_or_else(|| format!("unclosed [ in {text:?}"))?;
                    let inner: String = chars[pos + 1..end].iter().collect();
                    steps.push(bracket(&inner).map_err(|e| format!("{e} in {text:?}"))?);
                    pos = end + 1;
                }
                ' ' => pos += 1,
                c => return Err(format!("unexpected {c:?} in {text:?}")),
            }
        }
        Ok(JsonPath { steps })
    }

    /// Every value the path selects in `root`, in order.
    pub(crate) fn find<'a>(&self, root: &'a Value) -> Result<Vec<&'a Value>, EvalError> {
        let mut current = vec![root];
        for step in &self.steps {
            current = step.apply(current)?;
        }
        Ok(current)
    }
}

/// The index of the `]` that closes the `[` at `open`, skipping quoted text
/// and parentheses (filters).
fn closing_bracket(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    let mut i = open + 1;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) => {
                if c == '\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                ']' if depth == 0 => return Some(i),
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// What is between `[` and `]`.
fn bracket(inner: &str) -> Result<Step, String> {
    let inner = inner.trim();
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        return parse_filter(filter).map(|f| Step::Filter(Box::new(f)));
    }
    if inner == "*" {
        return Ok(Step::Wildcard);
    }
    if inner.contains(',') {
        return Err("unions are not supported".into());
    }
    // client-go's dict key: `^'([^']*)'$`, then parsed as `.key` (so `\.`
    // is a literal dot there too).
    if let Some(key) = inner.strip_prefix('\'').and_then(|k| k.strip_suffix('\''))
        && !key.contains('\'')
    {
        return Ok(Step::Field(key.replace('\\', "")));
    }
    if let Some((start, end)) = inner.split_once(':') {
        if end.contains(':') {
            return Err("slices with a step are not supported".into());
        }
        let bound = |s: &str| -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(Some)
                    .map_err(|_| format!("invalid slice bound {s:?}"))
            }
        };
        return Ok(Step::Slice(bound(start)?, bound(end)?));
    }
    inner
        .parse()
        .map(Step::Index)
        .map_err(|_| format!("invalid array index {inner:?}"))
}

/// A filter's body, split as client-go splits it: `^([^!<>=]+)([!<>=]+)(.+?)$`.
fn parse_filter(text: &str) -> Result<Filter, String> {
    let Some(op_start) = text.find(['!', '<', '>', '=']) else {
        return Ok(Filter {
            left: JsonPath::parse(text)?,
            compare: None,
        });
    };
    let rest = &text[op_start..];
    let op_len = rest
        .find(|c: char| !matches!(c, '!' | '<' | '>' | '='))
        .unwrap_or(rest.len());
    let op = match &rest[..op_len] {
        "==" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        ">" => Op::Gt,
        "<=" => Op::Le,
        ">=" => Op::Ge,
        other => return Err(format!("unrecognized filter operator {other}")),
    };
    let left = JsonPath::parse(&text[..op_start])?;
    let right = rest[op_len..].trim();
    let operand = if right.starts_with('@') {
        Operand::Path(JsonPath::parse(right)?)
    } else if let Some(s) = right
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| right.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
    {
        Operand::Literal(Value::String(s.to_owned()))
    } else if let Ok(i) = right.parse::<i64>() {
        Operand::Literal(Value::from(i))
    } else if let Ok(f) = right.parse::<f64>() {
        Operand::Literal(Value::from(f))
    } else {
        return Err(format!("unsupported filter operand {right:?}"));
    };
    Ok(Filter {
        left,
        compare: Some((op, operand)),
    })
}

impl Step {
    fn apply<'a>(&self, input: Vec<&'a Value>) -> Result<Vec<&'a Value>, EvalError> {
        let mut out = Vec::new();
        match self {
            Step::Field(name) => {
                for v in input {
                    if let Some(found) = v.as_object().and_then(|o| o.get(name)) {
                        out.push(found);
                    }
                }
            }
            Step::Wildcard => {
                for v in input {
                    match v {
                        Value::Object(o) => out.extend(o.values()),
                        Value::Array(a) => out.extend(a.iter()),
                        _ => {}
                    }
                }
            }
            Step::Index(i) => {
                for v in input {
                    let Some(items) = array_of(v)? else { continue };
                    let len = items.len() as i64;
                    let at = if *i < 0 { i + len } else { *i };
                    let item = usize::try_from(at)
                        .ok()
                        .and_then(|at| items.get(at))
                        .ok_or_else(|| {
                            EvalError(format!(
                                "array index out of bounds: index {i}, length {len}"
                            ))
                        })?;
                    out.push(item);
                }
            }
            Step::Slice(start, end) => {
                for v in input {
                    let Some(items) = array_of(v)? else { continue };
                    let len = items.len() as i64;
                    let fix = |b: i64| if b < 0 { b + len } else { b };
                    let s = start.map_or(0, fix);
                    let e = end.map_or(len, fix);
                    if s != e && (s >= len || e > len || s < 0 || e < s) {
                        return Err(EvalError(format!(
                            "array index out of bounds: [{s}:{e}], length {len}"
                        )));
                    }
                    let (s, e) = (
                        usize::try_from(s).unwrap_or(0),
                        usize::try_from(e).unwrap_or(0),
                    );
                    out.extend(items.get(s..e).into_iter().flatten());
                }
            }
            Step::Filter(filter) => {
                for v in input {
                    let Value::Array(items) = v else {
                        return Err(EvalError(format!(
                            "{v} is not array or slice and cannot be filtered"
                        )));
                    };
                    for item in items {
                        if filter.passes(item)? {
                            out.push(item);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The elements of an array; `None` for `null` (skipped); an error for
/// anything else.
fn array_of(v: &Value) -> Result<Option<&Vec<Value>>, EvalError> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) => Ok(Some(a)),
        other => Err(EvalError(format!("{other} is not array or slice"))),
    }
}

impl Filter {
    fn passes(&self, item: &Value) -> Result<bool, EvalError> {
        let lefts = self.left.find(item);
        let Some((op, operand)) = &self.compare else {
            return Ok(lefts.is_ok_and(|l| !l.is_empty()));
        };
        let one = |values: Vec<&Value>| -> Result<Value, EvalError> {
            match values.as_slice() {
                [v] => Ok((*v).clone()),
                _ => Err(EvalError("can only compare one element at a time".into())),
            }
        };
        let left = one(lefts?)?;
        let right = match operand {
            Operand::Literal(v) => v.clone(),
            Operand::Path(p) => one(p.find(item)?)?,
        };
        let ordering = compare(&left, &right, *op)?;
        Ok(match op {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Gt => ordering == Ordering::Greater,
            Op::Le => ordering != Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        })
    }
}

/// Go template's comparison (client-go's forked `template.Equal`, `Less`):
/// both strings, both integers, both decimals, or (for `==`, `!=`) both
/// booleans; anything else is an error.
fn compare(left: &Value, right: &Value, op: Op) -> Result<Ordering, EvalError> {
    let incompatible = || EvalError("incompatible types for comparison".into());
    match (left, right) {
        (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => {
            match (a.as_i64(), b.as_i64(), a.is_f64(), b.is_f64()) {
                (Some(a), Some(b), false, false) => Ok(a.cmp(&b)),
                (_, _, true, true) => a
                    .as_f64()
                    .zip(b.as_f64())
                    .and_then(|(a, b)| a.partial_cmp(&b))
                    .ok_or_else(incompatible),
                _ => Err(incompatible()),
            }
        }
        (Value::Bool(a), Value::Bool(b)) if matches!(op, Op::Eq | Op::Ne) => Ok(a.cmp(b)),
        _ => Err(incompatible()),
    }
}

/// A value as client-go's `PrintResults` (util/jsonpath/jsonpath.go)
/// prints it: a map or a list as `encoding/json` marshals it (compact,
/// keys sorted, `<`, `>` and `&` escaped); anything else as Go's
/// `fmt.Fprint` prints what `encoding/json` decoded it to: strings bare,
/// numbers as Go's `%v`; a `null` result itself is `<no value>`
/// (text/template's `printableValue` of an invalid value).
pub(crate) fn go_text(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::Array(_) | Value::Object(_) => go_json(v),
        other => go_fmt(other),
    }
}

/// `json.Marshal` of a decoded value: compact, map keys sorted (Go sorts
/// them), and HTML's `<`, `>`, `&` escaped as `encoding/json` does by
/// default. Those characters only occur inside strings, so escaping the
/// text is escaping the strings.
fn go_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let ordered: std::collections::BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) if !n.is_f64() => i.to_string(),
            (_, Some(u), _) if !n.is_f64() => u.to_string(),
            (_, _, Some(f)) => go_float(f),
            _ => n.to_string(),
        },
        Value::Array(_) | Value::Object(_) => go_json(v),
    }
}

/// A float64 as Go's `%v` prints it: `%g` with the shortest digits, in
/// exponent form when the exponent is below -4 or at least 6 (strconv's
/// `ftoa.go`: "if precision was the shortest possible, use precision 6 for
/// this decision").
fn go_float(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return match f {
            f if f.is_nan() => "NaN".into(),
            f if f == f64::INFINITY => "+Inf".into(),
            f if f == f64::NEG_INFINITY => "-Inf".into(),
            _ => "0".into(),
        };
    }
    let sci = format!("{f:e}"); // shortest digits: "1.5e-7"
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return f.to_string();
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(path: &str, v: &Value) -> Result<Vec<Value>, EvalError> {
        let p = JsonPath::parse(path).map_err(EvalError)?;
        Ok(p.find(v)?.into_iter().cloned().collect())
    }

    #[test]
    fn fields_indexes_and_missing_keys() {
        let v = json!({"spec": {"items": [{"name": "a"}, {"name": "b"}], "n": 3, "z": null},
                       "metadata": {"labels": {"kcp.io/x.y": "v"}}});
        assert_eq!(eval(".spec.n", &v), Ok(vec![json!(3)]));
        assert_eq!(eval(".spec.items[1].name", &v), Ok(vec![json!("b")]));
        assert_eq!(eval(".spec.items[-1].name", &v), Ok(vec![json!("b")]));
        assert_eq!(
            eval(".spec.items[*].name", &v),
            Ok(vec![json!("a"), json!("b")])
        );
        assert_eq!(eval(".spec.items[0:1].name", &v), Ok(vec![json!("a")]));
        assert_eq!(eval(".spec.missing.deeper", &v), Ok(vec![]));
        assert_eq!(eval(".spec.z", &v), Ok(vec![Value::Null]));
        assert_eq!(eval(".spec.z.deeper", &v), Ok(vec![]));
        assert_eq!(
            eval(r".metadata.labels['kcp\.io/x\.y']", &v),
            Ok(vec![json!("v")])
        );
        assert_eq!(
            eval(r".metadata.labels.kcp\.io/x\.y", &v),
            Ok(vec![json!("v")])
        );
        assert!(eval(".spec.items[5].name", &v).is_err(), "out of bounds");
        assert!(eval(".spec.n[0]", &v).is_err(), "not an array");
        assert!(JsonPath::parse(".spec..n").is_err());
        assert!(JsonPath::parse(".spec.items[0,1]").is_err());
    }

    #[test]
    fn filters() {
        let v = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "n": 2},
            {"type": "Healthy", "status": "False", "reason": "Degraded", "n": 5},
        ]}});
        let reason = |path: &str| eval(path, &v);
        assert_eq!(
            reason(r#".status.conditions[?(@.type=="Ready")].status"#),
            Ok(vec![json!("True")])
        );
        assert_eq!(
            reason(r#".status.conditions[?(@.type == 'Healthy')].reason"#),
            Ok(vec![json!("Degraded")])
        );
        assert_eq!(
            reason(r#".status.conditions[?(@.type!="Ready")].reason"#),
            Ok(vec![json!("Degraded")])
        );
        assert_eq!(
            reason(".status.conditions[?(@.n>3)].type"),
            Ok(vec![json!("Healthy")])
        );
        assert_eq!(
            reason(r#".status.conditions[?(@.type=="Gone")].status"#),
            Ok(vec![])
        );
        assert_eq!(
            reason(".status.conditions[?(@.reason)].type").map(|v| v.len()),
            Ok(2)
        );
        // No conditions at all: nothing, not an error.
        assert_eq!(
            eval(
                r#".status.conditions[?(@.type=="Ready")].status"#,
                &json!({})
            ),
            Ok(vec![])
        );
        // A string compared with a number is an error in Go's templates.
        assert!(reason(".status.conditions[?(@.type==3)].status").is_err());
        // An element without the compared key: client-go cannot compare.
        let partial = json!({"c": [{"type": "A"}, {"other": 1}]});
        assert!(eval(r#".c[?(@.type=="A")]"#, &partial).is_err());
    }

    #[test]
    fn go_printing() {
        assert_eq!(go_text(&json!("x")), "x");
        assert_eq!(go_text(&json!(42)), "42");
        assert_eq!(go_text(&json!(1.5)), "1.5");
        assert_eq!(go_text(&json!(true)), "true");
        assert_eq!(go_text(&Value::Null), "<no value>");
        assert_eq!(go_text(&json!({"b": 1, "a": "x"})), r#"{"a":"x","b":1}"#);
        assert_eq!(go_text(&json!(["x", 2, null])), r#"["x",2,null]"#);
        assert_eq!(
            go_text(&json!({"h": "<b>&"})),
            r#"{"h":"\u003cb\u003e\u0026"}"#
        );
        assert_eq!(go_float(1e-7), "1e-07");
        assert_eq!(go_float(2.5e22), "2.5e+22");
        assert_eq!(go_float(1_234_567.0), "1.234567e+06");
        assert_eq!(go_float(999_999.0), "999999");
        assert_eq!(go_float(0.25), "0.25");
    }
}
