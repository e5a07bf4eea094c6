//! Where an object lives upstream, without its version and kind: what a
//! placement is keyed by (a report names version and kind too, and those
//! are checked against the placed type, not part of the identity).
//!
//! A report is judged once per delta, so the lookup must not allocate: an
//! [`ObjectKey`] is looked up in a map of [`Address`]es through
//! [`AddressParts`], the borrowed form both share (the usual trick for
//! composite keys with `std`'s `HashMap`: both hash and compare the same
//! tuple of string slices).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::store::{KeyParts, ObjectKey};

/// An object's address upstream.
#[derive(Debug, Clone)]
pub struct Address {
    pub group: String,
    pub resource: String,
    pub workspace: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// The parts of an address, borrowed.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Parts<'a> {
    group: &'a str,
    resource: &'a str,
    workspace: &'a str,
    namespace: Option<&'a str>,
    name: &'a str,
}

/// Anything that names an object's address.
pub trait AddressParts {
    fn parts(&self) -> Parts<'_>;
}

impl AddressParts for Address {
    fn parts(&self) -> Parts<'_> {
        Parts {
            group: &self.group,
            resource: &self.resource,
            workspace: &self.workspace,
            namespace: self.namespace.as_deref(),
            name: &self.name,
        }
    }
}

impl AddressParts for ObjectKey {
    fn parts(&self) -> Parts<'_> {
        Parts {
            group: &self.group,
            resource: &self.resource,
            workspace: &self.workspace,
            namespace: self.namespace.as_deref(),
            name: &self.name,
        }
    }
}

impl Address {
    /// The address of `key`.
    pub fn of(key: &ObjectKey) -> Self {
        Self {
            group: key.group.clone(),
            resource: key.resource.clone(),
            workspace: key.workspace.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }

    /// The full key of the object at this address, of `version` and `kind`.
    pub fn key(&self, version: &str, kind: &str) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: self.workspace.clone(),
            group: self.group.clone(),
            version: version.to_owned(),
            resource: self.resource.clone(),
            kind: kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        })
    }
}

impl Hash for Address {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Address {}

impl Hash for dyn AddressParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn AddressParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn AddressParts + '_ {}

impl<'a> Borrow<dyn AddressParts + 'a> for Address {
    fn borrow(&self) -> &(dyn AddressParts + 'a) {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn key(version: &str, kind: &str) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: "root:org".into(),
            group: "apps".into(),
            version: version.into(),
            resource: "deployments".into(),
            kind: kind.into(),
            namespace: Some("shop".into()),
            name: "web".into(),
        })
    }

    #[test]
    fn keys_of_any_version_and_kind_find_their_address() {
        let mut map = HashMap::new();
        map.insert(Address::of(&key("v1", "Deployment")), 1);
        let probe = key("v1beta1", "Job");
        assert_eq!(map.get(&probe as &dyn AddressParts), Some(&1));
        let other = ObjectKey::new(KeyParts {
            namespace: None,
            ..key("v1", "Deployment").parts().clone()
        });
        assert_eq!(map.get(&other as &dyn AddressParts), None);
        assert_eq!(
            Address::of(&probe).key("v1", "Deployment"),
            key("v1", "Deployment")
        );
    }
}
