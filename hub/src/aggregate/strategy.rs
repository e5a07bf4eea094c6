//! What the strategy does with a field that clusters disagree on and no
//! rule merges.
//!
//! A cluster that does not report a field has no opinion on it: a field is
//! disputed only when two clusters report different values. Every choice
//! depends only on the set of reports: times are skew-corrected, priority
//! ranks are unique and ties go to the first cluster by name.

use serde_json::{Map, Value};

use super::Merger;
use super::config::Strategy;
use super::conflict::Conflict;
use super::rules::{FieldPath, Votes};

impl Merger<'_> {
    /// The value of a field reported as `votes`; `None` leaves it out
    /// (nobody reports it, or the dispute stays open).
    pub(crate) fn decide(&mut self, path: &FieldPath, votes: &Votes<'_>) -> Option<Value> {
        let groups = distinct(votes);
        match groups.as_slice() {
            [] => return None,
            [(value, _)] => return Some((*value).clone()),
            _ => {}
        }
        let chosen = match self.strategy {
            Strategy::Newest => self.newest(votes).map(|(_, v)| v.clone()),
            Strategy::Oldest => self.oldest(votes).map(|(_, v)| v.clone()),
            Strategy::Priority => self.first_by_priority(votes).map(|(_, v)| v.clone()),
            Strategy::Quorum => groups
                .iter()
                .find(|(_, clusters)| clusters.len() * 2 > self.reports.len())
                .map(|(v, _)| (*v).clone()),
            Strategy::Union => {
                // Resolves its own nested disputes, field by field.
                return Some(self.union(path, votes));
            }
            Strategy::All | Strategy::Manual => None,
        };
        let resolved_by = chosen.as_ref().map(|_| self.strategy);
        let conflict =
            Conflict::field_disagreement(path, &self.grouped_names(&groups), resolved_by);
        self.conflicts.push(conflict);
        if chosen.is_none() {
            self.disputed.push(path.clone());
        }
        chosen
    }

    /// Union of `votes`: objects key by key, lists element by element (in
    /// cluster name order, each distinct element once); scalars that still
    /// differ go to the highest-priority cluster.
    pub(crate) fn union(&mut self, path: &FieldPath, votes: &Votes<'_>) -> Value {
        let groups = distinct(votes);
        if let [(value, _)] = groups.as_slice() {
            return (*value).clone();
        }
        if votes.iter().all(|(_, v)| v.is_object()) {
            let mut keys: Vec<&String> = votes
                .iter()
                .filter_map(|(_, v)| v.as_object())
                .flat_map(|o| o.keys())
                .collect();
            keys.sort();
            keys.dedup();
            let mut merged = Map::new();
            for key in keys {
                let sub: Vec<(usize, &Value)> = votes
                    .iter()
                    .filter_map(|(i, v)| Some((*i, v.get(key)?)))
                    .collect();
                merged.insert(key.clone(), self.union(&path.child(key), &sub));
            }
            return Value::Object(merged);
        }
        if votes.iter().all(|(_, v)| v.is_array()) {
            let mut elements: Vec<Value> = Vec::new();
            for element in votes.iter().filter_map(|(_, v)| v.as_array()).flatten() {
                if !elements.contains(element) {
                    elements.push(element.clone());
                }
            }
            return Value::Array(elements);
        }
        let chosen = self
            .first_by_priority(votes)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null);
        let conflict =
            Conflict::field_disagreement(path, &self.grouped_names(&groups), Some(Strategy::Union));
        self.conflicts.push(conflict);
        chosen
    }

    /// The vote of the newest report (latest corrected time; ties: first by name).
    pub(crate) fn newest<'v>(&self, votes: &Votes<'v>) -> Option<(usize, &'v Value)> {
        votes.iter().copied().reduce(|best, next| {
            if self.reports[next.0].time_ms > self.reports[best.0].time_ms {
                next
            } else {
                best
            }
        })
    }

    /// The vote of the oldest report (earliest corrected time; ties: first by name).
    pub(crate) fn oldest<'v>(&self, votes: &Votes<'v>) -> Option<(usize, &'v Value)> {
        votes.iter().copied().reduce(|best, next| {
            if self.reports[next.0].time_ms < self.reports[best.0].time_ms {
                next
            } else {
                best
            }
        })
    }

    /// The vote of the highest-priority cluster.
    pub(crate) fn first_by_priority<'v>(&self, votes: &Votes<'v>) -> Option<(usize, &'v Value)> {
        votes
            .iter()
            .copied()
            .min_by_key(|(i, _)| self.reports[*i].rank)
    }

    /// Each distinct value with the names of the clusters reporting it.
    fn grouped_names<'v>(
        &self,
        groups: &[(&'v Value, Vec<usize>)],
    ) -> Vec<(&'v Value, Vec<String>)> {
        groups
            .iter()
            .map(|(value, indices)| {
                let names = indices
                    .iter()
                    .map(|i| self.reports[*i].cluster.to_owned())
                    .collect();
                (*value, names)
            })
            .collect()
    }
}

/// The distinct values of `votes`, each with the reports that have it, in
/// order of first appearance (cluster name order).
pub(crate) fn distinct<'v>(votes: &Votes<'v>) -> Vec<(&'v Value, Vec<usize>)> {
    let mut groups: Vec<(&Value, Vec<usize>)> = Vec::new();
    for (index, value) in votes {
        match groups.iter_mut().find(|(v, _)| *v == *value) {
            Some((_, indices)) => indices.push(*index),
            None => groups.push((value, vec![*index])),
        }
    }
    groups
}
