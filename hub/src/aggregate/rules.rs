//! Field rules: how the values clusters report at one JSON path under
//! `status` become one value (`sum`, `min`, `max`, `union`, `newest`,
//! `priority`, `conditions`). A rule is a merge, not a dispute: it never
//! raises a conflict itself. When the values do not fit the rule (a `sum` of
//! strings), the field falls back to the strategy, which may.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use super::Merger;
use super::conditions;

/// A path under an object's `status`, written `status.a.b` (also accepted:
/// `.status.a.b`, `$.status.a.b`). The bare `status` names the whole status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// The whole status.
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// `status.<segments...>`.
    pub fn of(segments: &[&str]) -> Self {
        FieldPath(segments.iter().map(|s| (*s).to_owned()).collect())
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    pub fn child(&self, segment: &str) -> FieldPath {
        let mut path = self.0.clone();
        path.push(segment.to_owned());
        FieldPath(path)
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The value at this path in `status`.
    pub fn lookup<'v>(&self, status: &'v Value) -> Option<&'v Value> {
        self.0
            .iter()
            .try_fold(status, |value, segment| value.as_object()?.get(segment))
    }

    /// Removes the value at this path from `status` (the root cannot be
    /// removed; parents are left in place).
    pub fn remove(&self, status: &mut Value) -> Option<Value> {
        let (last, parents) = self.0.split_last()?;
        let mut value = status;
        for segment in parents {
            value = value.as_object_mut()?.get_mut(segment)?;
        }
        value.as_object_mut()?.remove(last)
    }

    /// Sets the value at this path in `status`, creating missing parents.
    /// A parent that exists and is not an object is left alone.
    pub fn insert(&self, status: &mut Value, new: Value) {
        let Some((last, parents)) = self.0.split_last() else {
            *status = new;
            return;
        };
        let mut value = status;
        for segment in parents {
            let Some(object) = value.as_object_mut() else {
                return;
            };
            value = object
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Default::default()));
        }
        if let Some(object) = value.as_object_mut() {
            object.insert(last.clone(), new);
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("status")?;
        for segment in &self.0 {
            write!(f, ".{segment}")?;
        }
        Ok(())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for FieldPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let rest = trimmed
            .strip_prefix("$.")
            .or_else(|| trimmed.strip_prefix('.'))
            .unwrap_or(trimmed);
        let mut parts = rest.split('.');
        if parts.next() != Some("status") {
            return Err(format!(
                "field path {text:?} must start with status (like status.readyReplicas)"
            ));
        }
        let segments: Vec<String> = parts.map(str::to_owned).collect();
        for segment in &segments {
            let valid = !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "field path {text:?} has an invalid segment {segment:?} (letters, digits, _ and - only)"
                ));
            }
        }
        Ok(FieldPath(segments))
    }
}

/// How one field's values from several clusters become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    /// The sum of the numbers (a cluster without the field adds 0).
    Sum,
    /// The smallest number, or the earliest timestamp / first string.
    Min,
    /// The largest number, or the latest timestamp / last string.
    Max,
    /// Lists: every distinct element once; objects: every key, merged.
    Union,
    /// The value of the newest report that has the field.
    Newest,
    /// The value of the highest-priority cluster that has the field.
    Priority,
    /// Kubernetes conditions combined per type (see [`conditions`]).
    Conditions,
    /// The largest value, only when every contributing cluster has one
    /// (a Job's `completionTime`). Built in, not configurable.
    #[serde(skip)]
    MaxWhenAll,
}

/// One rule for one path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldRule {
    pub path: FieldPath,
    pub rule: Rule,
}

impl FieldRule {
    pub fn new(path: &[&str], rule: Rule) -> Self {
        Self {
            path: FieldPath::of(path),
            rule,
        }
    }
}

/// Values reported for one path: (index of the report, value), in cluster
/// name order. Only clusters that have the field are in it.
pub(crate) type Votes<'v> = [(usize, &'v Value)];

impl Merger<'_> {
    /// The value `rule` makes of `votes` at `path`; `None` leaves the field out.
    pub(crate) fn apply(
        &mut self,
        rule: Rule,
        path: &FieldPath,
        votes: &Votes<'_>,
    ) -> Option<Value> {
        if votes.is_empty() {
            return None;
        }
        match rule {
            Rule::Sum => match sum(votes) {
                Some(total) => Some(total),
                None => self.decide(path, votes),
            },
            Rule::Min | Rule::Max => {
                let want = if rule == Rule::Min {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                match extreme(votes, want) {
                    Some(value) => Some(value.clone()),
                    None => self.decide(path, votes),
                }
            }
            Rule::MaxWhenAll => {
                if votes.len() < self.reports.len() {
                    return None;
                }
                match extreme(votes, Ordering::Greater) {
                    Some(value) => Some(value.clone()),
                    None => self.decide(path, votes),
                }
            }
            Rule::Union => Some(self.union(path, votes)),
            Rule::Newest => self.newest(votes).map(|(_, v)| v.clone()),
            Rule::Priority => self.first_by_priority(votes).map(|(_, v)| v.clone()),
            Rule::Conditions => {
                if votes.iter().all(|(_, v)| v.is_array()) {
                    Some(conditions::combine(&self.reports, votes))
                } else {
                    self.decide(path, votes)
                }
            }
        }
    }
}

/// The sum of `votes` when all are numbers: an integer if all are.
fn sum(votes: &Votes<'_>) -> Option<Value> {
    let numbers: Vec<&Number> = votes
        .iter()
        .map(|(_, v)| v.as_number())
        .collect::<Option<_>>()?;
    if let Some(ints) = numbers
        .iter()
        .map(|n| n.as_i64())
        .collect::<Option<Vec<i64>>>()
    {
        return Some(Value::from(
            ints.into_iter().fold(0i64, i64::saturating_add),
        ));
    }
    let total: f64 = numbers.iter().filter_map(|n| n.as_f64()).sum();
    Number::from_f64(total).map(Value::Number)
}

/// The smallest (`Less`) or largest (`Greater`) of `votes`, when they can be
/// compared; ties go to the first cluster by name.
fn extreme<'v>(votes: &Votes<'v>, want: Ordering) -> Option<&'v Value> {
    let (_, mut best) = *votes.first()?;
    for (_, value) in &votes[1..] {
        if compare(value, best)? == want {
            best = value;
        }
    }
    Some(best)
}

/// Numbers by value; strings as timestamps when both are, else as text.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => {
            match (x.parse::<jiff::Timestamp>(), y.parse::<jiff::Timestamp>()) {
                (Ok(x), Ok(y)) => Some(x.cmp(&y)),
                _ => Some(x.cmp(y)),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_parse_print_and_edit() {
        for text in ["status.a.b", ".status.a.b", "$.status.a.b"] {
            let path: FieldPath = text.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(path, FieldPath::of(&["a", "b"]));
            assert_eq!(path.to_string(), "status.a.b");
        }
        assert!("spec.a".parse::<FieldPath>().is_err());
        assert!("status..a".parse::<FieldPath>().is_err());
        assert!("status.a b".parse::<FieldPath>().is_err());
        assert_eq!("status".parse::<FieldPath>(), Ok(FieldPath::root()));

        let path = FieldPath::of(&["loadBalancer", "ingress"]);
        let mut status = json!({"loadBalancer": {"ingress": [1]}, "x": 1});
        assert_eq!(path.lookup(&status), Some(&json!([1])));
        assert_eq!(path.remove(&mut status), Some(json!([1])));
        assert_eq!(status, json!({"loadBalancer": {}, "x": 1}));
        FieldPath::of(&["a", "b"]).insert(&mut status, json!(2));
        assert_eq!(status, json!({"loadBalancer": {}, "x": 1, "a": {"b": 2}}));
    }

    #[test]
    fn numbers_and_times_compare() {
        assert_eq!(sum(&[(0, &json!(2)), (1, &json!(3))]), Some(json!(5)));
        assert_eq!(sum(&[(0, &json!(2)), (1, &json!(0.5))]), Some(json!(2.5)));
        assert_eq!(sum(&[(0, &json!(2)), (1, &json!("x"))]), None);
        let (a, b) = (
            json!("2024-01-01T00:00:09Z"),
            json!("2024-01-01T00:00:10+00:00"),
        );
        assert_eq!(compare(&a, &b), Some(Ordering::Less));
        assert_eq!(extreme(&[(0, &a), (1, &b)], Ordering::Greater), Some(&b));
        assert_eq!(compare(&json!(1), &json!("1")), None);
    }
}
