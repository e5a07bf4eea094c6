//! A resource type as both sides name it: `resource.version.group`
//! (`deployments.v1.apps`), or `resource.version` for the core group
//! (`pods.v1`), the way kubectl writes it. The agent's and the hub's
//! `--resources` flags parse it; a delta's [`crate::ObjectRef`] carries the
//! same three parts.

use std::fmt;
use std::str::FromStr;

/// One resource type to watch, written like kubectl does:
/// `resource.version.group` (`deployments.v1.apps`), or `resource.version`
/// for the core group (`pods.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceSpec {
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    pub version: String,
    /// API group, empty for the core group.
    pub group: String,
}

impl ResourceSpec {
    /// `deployments.v1.apps`, the default.
    pub fn deployments() -> Self {
        Self {
            resource: "deployments".into(),
            version: "v1".into(),
            group: "apps".into(),
        }
    }
}

/// Why a `--resources` entry is not `resource.version[.group]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid resource {input:?} (expected resource.version.group like deployments.v1.apps, or pods.v1 for the core group): {reason}"
)]
pub struct ResourceSpecError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for ResourceSpec {
    type Err = ResourceSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ResourceSpecError {
            input: input.to_owned(),
            reason,
        };
        // The group may itself contain dots (example.com), so split only twice.
        let mut parts = input.trim().splitn(3, '.');
        let resource = parts.next().unwrap_or_default();
        let version = parts.next().ok_or_else(|| fail("missing version"))?;
        let group = parts.next().unwrap_or_default();
        if !is_dns_label(resource) {
            return Err(fail("resource must be a lowercase DNS label"));
        }
        if !is_version(version) {
            return Err(fail("version must look like v1, v1beta1 or v2alpha3"));
        }
        if input.trim().matches('.').count() >= 2 && !group.split('.').all(is_dns_label) {
            return Err(fail("group must be a DNS subdomain"));
        }
        Ok(Self {
            resource: resource.to_owned(),
            version: version.to_owned(),
            group: group.to_owned(),
        })
    }
}

impl fmt::Display for ResourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}.{}", self.resource, self.version)
        } else {
            write!(f, "{}.{}.{}", self.resource, self.version, self.group)
        }
    }
}

/// Parses a comma-separated `--resources` list.
pub fn parse_resource_list(list: &str) -> Result<Vec<ResourceSpec>, ResourceSpecError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let major_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    if major_len == 0 {
        return false;
    }
    let rest = &rest[major_len..];
    if rest.is_empty() {
        return true;
    }
    let Some(minor) = rest
        .strip_prefix("alpha")
        .or_else(|| rest.strip_prefix("beta"))
    else {
        return false;
    };
    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(input: &str) -> ResourceSpec {
        match input.parse() {
            Ok(spec) => spec,
            Err(e) => panic!("{input}: {e}"),
        }
    }

    #[test]
    fn parses_grouped_core_and_dotted_groups() {
        assert_eq!(spec("deployments.v1.apps"), ResourceSpec::deployments());
        let pods = spec("pods.v1");
        assert_eq!(
            (
                pods.resource.as_str(),
                pods.version.as_str(),
                pods.group.as_str()
            ),
            ("pods", "v1", "")
        );
        let crd = spec("widgets.v1alpha1.example.com");
        assert_eq!(crd.group, "example.com");
        assert_eq!(crd.version, "v1alpha1");
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "deployments.v1.apps",
            "pods.v1",
            "widgets.v2beta3.example.com",
        ] {
            assert_eq!(spec(input).to_string(), input);
        }
    }

    #[test]
    fn errors_name_the_bad_input() {
        for bad in [
            "deployments",
            "Deployments.v1.apps",
            "deployments.apps.v1",
            "deployments.v1.",
            ".v1.apps",
            "pods.v1beta",
        ] {
            let err = bad.parse::<ResourceSpec>().expect_err(bad);
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn resource_lists() {
        let list = parse_resource_list("deployments.v1.apps, pods.v1,").map_err(|e| e.to_string());
        assert_eq!(list.map(|l| l.len()), Ok(2));
        assert!(parse_resource_list("deployments.v1.apps,nope").is_err());
    }
}
