//! Feature gates in Kubernetes syntax (`--feature-gates=Name=bool,...`):
//! switches that turn stages of upstream sync off without a new build.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The hub's feature gates. Every gate defaults to on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FeatureGates {
    /// `UpstreamSync`: write statuses into KCP at all. Off, the hub still
    /// stores, merges and reports conflicts, and writes nothing.
    pub upstream_sync: bool,
    /// `UpstreamSyncAggregation`: merge what several clusters report. Off,
    /// an object's status is the whole status of one cluster, chosen by
    /// priority.
    pub upstream_sync_aggregation: bool,
    /// `UpstreamSyncConflictResolution`: let the strategy resolve conflicts.
    /// Off, every strategy behaves like `Manual`: conflicts are reported and
    /// nothing disputed is written.
    pub upstream_sync_conflict_resolution: bool,
}

impl Default for FeatureGates {
    fn default() -> Self {
        Self {
            upstream_sync: true,
            upstream_sync_aggregation: true,
            upstream_sync_conflict_resolution: true,
        }
    }
}

/// The gates this hub knows, in the order they are listed.
pub const GATES: [&str; 3] = [
    "UpstreamSync",
    "UpstreamSyncAggregation",
    "UpstreamSyncConflictResolution",
];

/// Why a `--feature-gates` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("unknown feature gate {0:?} (known: {known})", known = GATES.join(", "))]
    Unknown(String),
    #[error("feature gate {gate}: {value:?} is not true or false")]
    Value { gate: String, value: String },
    #[error("{0:?} is not Name=true|false")]
    Syntax(String),
}

impl FeatureGates {
    fn slot(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "UpstreamSync" => Some(&mut self.upstream_sync),
            "UpstreamSyncAggregation" => Some(&mut self.upstream_sync_aggregation),
            "UpstreamSyncConflictResolution" => Some(&mut self.upstream_sync_conflict_resolution),
            _ => None,
        }
    }
}

impl FromStr for FeatureGates {
    type Err = GateError;

    /// Parses `Name=bool` pairs separated by commas, starting from the
    /// defaults; an empty string keeps them. Like Kubernetes, values are
    /// case-insensitive `true` / `false` and a later pair wins.
    fn from_str(text: &str) -> Result<Self, GateError> {
        let mut gates = FeatureGates::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| GateError::Syntax(pair.to_owned()))?;
            let (name, value) = (name.trim(), value.trim());
            let enabled = match value.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(GateError::Value {
                        gate: name.to_owned(),
                        value: value.to_owned(),
                    });
                }
            };
            *gates
                .slot(name)
                .ok_or_else(|| GateError::Unknown(name.to_owned()))? = enabled;
        }
        Ok(gates)
    }
}

impl fmt::Display for FeatureGates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UpstreamSync={},UpstreamSyncAggregation={},UpstreamSyncConflictResolution={}",
            self.upstream_sync,
            self.upstream_sync_aggregation,
            self.upstream_sync_conflict_resolution
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_syntax_over_the_defaults() {
        let gates: FeatureGates = "UpstreamSyncAggregation=false, UpstreamSync=TRUE"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            gates,
            FeatureGates {
                upstream_sync_aggregation: false,
                ..FeatureGates::default()
            }
        );
        assert_eq!("".parse(), Ok(FeatureGates::default()));
        let round_trip: Result<FeatureGates, _> = gates.to_string().parse();
        assert_eq!(round_trip, Ok(gates));
    }

    #[test]
    fn names_the_unknown_gate_and_bad_values() {
        let err = "UpstreamSync=true,Upsync=false".parse::<FeatureGates>();
        assert_eq!(err, Err(GateError::Unknown("Upsync".into())));
        assert!(
            err.map_err(|e| e.to_string())
                .err()
                .is_some_and(|m| m.contains("\"Upsync\""))
        );
        assert!(matches!(
            "UpstreamSync=maybe".parse::<FeatureGates>(),
            Err(GateError::Value { .. })
        ));
        assert!(matches!(
            "UpstreamSync".parse::<FeatureGates>(),
            Err(GateError::Syntax(_))
        ));
    }
}
