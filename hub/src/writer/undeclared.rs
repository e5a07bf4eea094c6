//! Status fields KCP's schema of a type does not declare, learned from
//! refused applies and left out of later ones.
//!
//! A cluster may run a newer Kubernetes than the schema KCP serves for the
//! same type (a Deployment's `status.terminatingReplicas`, new in 1.33,
//! reported to an older KCP). A merge patch has such a field pruned
//! silently; a server-side apply is refused whole, with kube-apiserver's
//! `failed to create typed patch object (…): .status.x: field not declared
//! in schema`, which names the first undeclared field of each object in
//! the configuration (a 500, as the error is no API status error: the
//! words count here, not the code). The writer reads the fields from that
//! answer, remembers them per workspace and resource type until the hub
//! restarts, and leaves them out of every apply of that type: what a merge
//! patch would have stored, without the refusals.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;

use crate::aggregate::FieldPath;
use crate::store::ObjectKey;

/// kube-apiserver's (structured-merge-diff's) words for an undeclared field.
const UNDECLARED: &str = ": field not declared in schema";

/// The workspace and resource type whose schema lacks the fields.
type TypeKey = (String, String, String, String);

/// Undeclared status fields, per workspace and resource type.
#[derive(Debug, Default)]
pub struct UndeclaredFields {
    by_type: Mutex<HashMap<TypeKey, BTreeSet<FieldPath>>>,
}

fn type_key(key: &ObjectKey) -> TypeKey {
    (
        key.workspace.clone(),
        key.group.clone(),
        key.version.clone(),
        key.resource.clone(),
    )
}

impl UndeclaredFields {
    /// Removes from `status` the fields `key`'s type is known not to declare.
    pub fn strip(&self, key: &ObjectKey, status: &mut Value) {
        let by_type = self.by_type.lock().unwrap_or_else(PoisonError::into_inner);
        for path in by_type.get(&type_key(key)).into_iter().flatten() {
            path.remove(status);
        }
    }

    /// Learns the status fields a refusal of an apply of `key` names as
    /// undeclared; returns those not known before.
    pub fn learn(&self, key: &ObjectKey, message: &str) -> Vec<FieldPath> {
        let named = undeclared_fields(message);
        if named.is_empty() {
            return named;
        }
        let mut by_type = self.by_type.lock().unwrap_or_else(PoisonError::into_inner);
        let known = by_type.entry(type_key(key)).or_default();
        named
            .into_iter()
            .filter(|path| known.insert(path.clone()))
            .collect()
    }
}

/// The status fields an error message names as not declared in the schema
/// (plain field paths only; a list item's field cannot be left out alone).
pub fn undeclared_fields(message: &str) -> Vec<FieldPath> {
    let mut fields = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find(UNDECLARED) {
        let before = &rest[..at];
        let path = before.rsplit(char::is_whitespace).next().unwrap_or(before);
        if let Ok(path) = path.parse::<FieldPath>()
            && !path.segments().is_empty()
            && !fields.contains(&path)
        {
            fields.push(path);
        }
        rest = &rest[at + UNDECLARED.len()..];
    }
    fields
}

#[cfg(test)]
mod tests {
    use crate::store::KeyParts;
    use serde_json::json;

    use super::*;

    fn key(workspace: &str) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: workspace.into(),
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        })
    }

    #[test]
    fn reads_the_fields_kube_apiserver_names() {
        let one = "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .status.terminatingReplicas: field not declared in schema";
        assert_eq!(
            undeclared_fields(one),
            vec![FieldPath::of(&["terminatingReplicas"])]
        );
        let many = "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): errors:\n  .status.a.b: field not declared in schema\n  .status.c: field not declared in schema";
        assert_eq!(
            undeclared_fields(many),
            vec![FieldPath::of(&["a", "b"]), FieldPath::of(&["c"])]
        );
        // A list item's field, a spec field, other errors: nothing to leave out.
        for other in [
            ".status.conditions[type=\"Ready\"].extra: field not declared in schema",
            ".spec.x: field not declared in schema",
            "etcdserver: request timed out",
        ] {
            assert_eq!(undeclared_fields(other), vec![], "{other}");
        }
    }

    #[test]
    fn learned_fields_are_left_out_of_that_types_status_only() {
        let fields = UndeclaredFields::default();
        let message = ".status.terminatingReplicas: field not declared in schema";
        assert_eq!(
            fields.learn(&key("root:a"), message),
            vec![FieldPath::of(&["terminatingReplicas"])]
        );
        assert_eq!(fields.learn(&key("root:a"), message), vec![], "known now");
        let mut status = json!({"replicas": 2, "terminatingReplicas": 1});
        fields.strip(&key("root:a"), &mut status);
        assert_eq!(status, json!({"replicas": 2}));
        // Another workspace may bind a newer schema of the type.
        let mut status = json!({"replicas": 2, "terminatingReplicas": 1});
        fields.strip(&key("root:b"), &mut status);
        assert_eq!(status, json!({"replicas": 2, "terminatingReplicas": 1}));
    }
}
