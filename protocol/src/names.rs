//! Which names the hub can use as they are: every part of an [`ObjectRef`]
//! becomes one segment of a URL path upstream
//! (`/clusters/<workspace>/apis/<group>/<version>/namespaces/<namespace>/<resource>/<name>`).
//! The agent checks with the same rules before it sends, so it never sends
//! what the hub refuses.

use crate::frame::ObjectRef;

/// True when `value` can be one segment of a URL path as it is: not empty,
/// not `.` or `..`, and only ASCII letters, digits and `-._:~` (the
/// characters Kubernetes names and KCP workspace paths use).
pub fn is_valid_path_segment(value: &str) -> bool {
    !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '~'))
}

/// The first part of `object` that is not a valid path segment, as
/// (field, value): `group` may be empty (the core group), `namespace` absent
/// (cluster-scoped), and `workspace` empty unless `require_workspace` (an
/// upstream with workspaces, like KCP). `kind` and `uid` are not part of a
/// path and are not checked.
pub fn invalid_name(object: &ObjectRef, require_workspace: bool) -> Option<(&'static str, &str)> {
    let optional = |value: &str, required: bool| !required && value.is_empty();
    [
        ("group", object.group.as_str(), false),
        ("version", object.version.as_str(), true),
        ("resource", object.resource.as_str(), true),
        ("name", object.name.as_str(), true),
        (
            "namespace",
            object.namespace.as_deref().unwrap_or("-"),
            true,
        ),
        ("workspace", object.workspace.as_str(), require_workspace),
    ]
    .into_iter()
    .find(|(_, value, required)| !optional(value, *required) && !is_valid_path_segment(value))
    .map(|(field, value, _)| (field, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments() {
        for good in ["web", "root:org:team-a", "v1", "apps.example.com", "a_b~c"] {
            assert!(is_valid_path_segment(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", "a?b", "a%2Fb", "a#b"] {
            assert!(!is_valid_path_segment(bad), "{bad:?}");
        }
    }

    fn object() -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            workspace: "root:org".into(),
            namespace: Some("default".into()),
            name: "web".into(),
            uid: "any thing/goes".into(),
        }
    }

    #[test]
    fn object_names() {
        assert_eq!(invalid_name(&object(), true), None);
        let core = ObjectRef {
            group: String::new(),
            namespace: None,
            workspace: String::new(),
            ..object()
        };
        assert_eq!(invalid_name(&core, false), None);
        assert_eq!(invalid_name(&core, true), Some(("workspace", "")));
        let bad = ObjectRef {
            namespace: Some("a/b".into()),
            ..object()
        };
        assert_eq!(invalid_name(&bad, false), Some(("namespace", "a/b")));
        let bad = ObjectRef {
            name: "..".into(),
            ..object()
        };
        assert_eq!(invalid_name(&bad, false), Some(("name", "..")));
    }
}
