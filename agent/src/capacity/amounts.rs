//! Resource lists as numbers: exact per-resource sums while a pod's request
//! is computed ([`ResourceNanos`]), and the scheduler's whole units once it
//! is ([`Amounts`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use uplink_protocol::ResourceAmounts;

use super::quantity::{Quantity, QuantityError};

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// Whether the scheduler accounts for `name` as a "scalar" resource:
/// extended resources (`vendor.example/thing`, `nvidia.com/gpu`), hugepages
/// and prefixed native ones. Other unknown names it ignores.
pub fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-") || name.contains('/')
}

/// A resource list with exact values in nano-units, for the arithmetic of
/// one pod's request (sum, max) before anything is rounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceNanos {
    pub cpu: i128,
    pub memory: i128,
    pub ephemeral_storage: i128,
    /// Scalar resources, by name; few, so a vector.
    pub scalar: Vec<(String, i128)>,
}

impl ResourceNanos {
    /// Parses a Kubernetes resource list. Malformed quantities count as zero
    /// and the first one's error is returned beside the list; names the
    /// scheduler ignores are skipped.
    pub fn from_list(
        list: Option<&BTreeMap<String, K8sQuantity>>,
    ) -> (Self, Option<QuantityError>) {
        let mut out = Self::default();
        let mut error = None;
        for (name, quantity) in list.into_iter().flatten() {
            let nano = match Quantity::parse(&quantity.0) {
                Ok(q) => q.nano(),
                Err(e) => {
                    error.get_or_insert(e);
                    continue;
                }
            };
            out.set_or(name, nano, |old, new| old + new);
        }
        (out, error)
    }

    fn set_or(&mut self, name: &str, value: i128, combine: impl Fn(i128, i128) -> i128) {
        let slot = match name {
            CPU => &mut self.cpu,
            MEMORY => &mut self.memory,
            EPHEMERAL_STORAGE => &mut self.ephemeral_storage,
            other if is_scalar(other) => match self.scalar.iter_mut().find(|(n, _)| n == other) {
                Some((_, slot)) => slot,
                None => {
                    self.scalar.push((other.to_owned(), combine(0, value)));
                    return;
                }
            },
            _ => return,
        };
        *slot = combine(*slot, value);
    }

    /// `self += other`, per resource.
    pub fn add(&mut self, other: &ResourceNanos) {
        self.combine(other, |a, b| a + b);
    }

    /// `self = max(self, other)`, per resource.
    pub fn max(&mut self, other: &ResourceNanos) {
        self.combine(other, i128::max);
    }

    fn combine(&mut self, other: &ResourceNanos, f: impl Fn(i128, i128) -> i128 + Copy) {
        self.cpu = f(self.cpu, other.cpu);
        self.memory = f(self.memory, other.memory);
        self.ephemeral_storage = f(self.ephemeral_storage, other.ephemeral_storage);
        for (name, value) in &other.scalar {
            self.set_or(name, *value, f);
        }
    }

    /// The scheduler's view: CPU in millicores, the rest in whole units,
    /// each rounded up; negative values (invalid in Kubernetes) count as 0.
    pub fn to_amounts(&self) -> Amounts {
        let units = |nano: i128| non_negative(Quantity::from_nano(nano).units_ceil());
        let mut scalar: Vec<(Box<str>, u64)> = self
            .scalar
            .iter()
            .map(|(n, v)| (n.as_str().into(), units(*v)))
            .filter(|(_, v)| *v > 0)
            .collect();
        scalar.sort();
        Amounts {
            cpu_millis: non_negative(Quantity::from_nano(self.cpu).milli_ceil()),
            memory_bytes: units(self.memory),
            ephemeral_storage_bytes: units(self.ephemeral_storage),
            pods: 0,
            scalar: (!scalar.is_empty()).then(|| scalar.into_boxed_slice()),
        }
    }
}

fn non_negative(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

/// Scalar resources of one object, sorted by name.
pub type ScalarAmounts = Box<[(Box<str>, u64)]>;

/// What one object contributes, in the scheduler's units. Small: one per
/// pod is held in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Amounts {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub pods: u64,
    /// Scalar resources, sorted by name; `None` when there are none (the
    /// common case, so no allocation).
    pub scalar: Option<ScalarAmounts>,
}

impl Amounts {
    /// A node's `status.capacity` or `status.allocatable`, with `pods`.
    pub fn from_node_list(
        list: Option<&BTreeMap<String, K8sQuantity>>,
    ) -> (Self, Option<QuantityError>) {
        let (nanos, mut error) = ResourceNanos::from_list(list);
        let mut amounts = nanos.to_amounts();
        if let Some(pods) = list.and_then(|l| l.get(PODS)) {
            match Quantity::parse(&pods.0) {
                Ok(q) => amounts.pods = non_negative(q.units_ceil()),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        (amounts, error)
    }

    pub fn scalars(&self) -> impl Iterator<Item = (&str, u64)> {
        self.scalar
            .iter()
            .flat_map(|s| s.iter())
            .map(|(n, v)| (&**n, *v))
    }
}

/// Running sums of [`Amounts`]: signed and wide, so adding and removing
/// contributions in any order never overflows or goes wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub cpu_millis: i128,
    pub memory_bytes: i128,
    pub ephemeral_storage_bytes: i128,
    pub pods: i128,
    pub scalar: BTreeMap<Box<str>, i128>,
}

impl Totals {
    /// Adds (`sign` 1) or removes (`sign` -1) `amounts`.
    pub fn apply(&mut self, amounts: &Amounts, sign: i128) {
        self.cpu_millis += sign * i128::from(amounts.cpu_millis);
        self.memory_bytes += sign * i128::from(amounts.memory_bytes);
        self.ephemeral_storage_bytes += sign * i128::from(amounts.ephemeral_storage_bytes);
        self.pods += sign * i128::from(amounts.pods);
        for (name, value) in amounts.scalars() {
            let slot = self.scalar.entry(name.into()).or_default();
            *slot += sign * i128::from(value);
            if *slot == 0 {
                self.scalar.remove(name);
            }
        }
    }

    /// The wire form of the standard resources.
    pub fn to_wire(&self) -> ResourceAmounts {
        let clamp = |v: i128| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
        ResourceAmounts {
            cpu_millis: clamp(self.cpu_millis),
            memory_bytes: clamp(self.memory_bytes),
            ephemeral_storage_bytes: clamp(self.ephemeral_storage_bytes),
            pods: clamp(self.pods),
        }
    }

    pub fn scalar_u64(&self, name: &str) -> u64 {
        self.scalar
            .get(name)
            .map_or(0, |v| u64::try_from((*v).max(0)).unwrap_or(u64::MAX))
    }
}
