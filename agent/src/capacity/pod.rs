//! A pod's effective resource request, computed as the Kubernetes scheduler
//! does (`k8s.io/component-helpers/resource.PodRequests`, with the options
//! the scheduler passes in 1.34: status resources and pod-level resources
//! on):
//!
//! 1. the app containers' requests are summed; while a resize is in
//!    progress a container counts the larger of its spec and its status
//!    requests (only the status ones when the resize is infeasible);
//! 2. init containers in order: a sidecar (`restartPolicy: Always`) is added
//!    to that sum and to a running sidecar total, and itself weighs that
//!    running total; a regular init container weighs its own request plus
//!    the sidecars started before it; the largest weight per resource is the
//!    init requirement;
//! 3. the request is the larger of the sum and the init requirement, per
//!    resource;
//! 4. pod-level `spec.resources.requests` replace CPU and memory when set;
//! 5. `spec.overhead` is added.
//!
//! Every sum is exact (nano-units); only the result is rounded up, to
//! millicores for CPU and whole units for the rest, as the scheduler reads
//! it. A pod's `pods` amount is 1.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};

use super::amounts::{Amounts, CPU, MEMORY, ResourceNanos};
use super::quantity::QuantityError;

/// `status.phase` values.
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";

/// Whether the pod has finished for good (`Succeeded` or `Failed`): the
/// scheduler no longer counts its requests.
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some(SUCCEEDED | FAILED)
    )
}

/// The node the pod is bound to, if it is scheduled.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The pod's effective request in the scheduler's units (`pods` = 1), and
/// the first malformed quantity met, if any (counted as zero).
pub fn pod_requests(pod: &Pod) -> (Amounts, Option<QuantityError>) {
    let (nanos, error) = pod_request_nanos(pod);
    let mut amounts = nanos.to_amounts();
    amounts.pods = 1;
    (amounts, error)
}

/// The exact effective request; see the module documentation.
pub fn pod_request_nanos(pod: &Pod) -> (ResourceNanos, Option<QuantityError>) {
    let mut error = None;
    let Some(spec) = &pod.spec else {
        return (ResourceNanos::default(), None);
    };
    let status = pod.status.as_ref();
    let infeasible = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "PodResizePending" && c.reason.as_deref() == Some("Infeasible"))
        });
    let app_statuses = status.and_then(|s| s.container_statuses.as_deref());
    let init_statuses = status.and_then(|s| s.init_container_statuses.as_deref());
    let container_requests = |container: &Container,
                              statuses: Option<&[ContainerStatus]>,
                              error: &mut Option<QuantityError>| {
        let spec_requests = parse(requests_of(container), error);
        let status_requests = statuses
            .and_then(|all| all.iter().find(|s| s.name == container.name))
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref());
        match status_requests {
            None => spec_requests,
            Some(list) if infeasible => parse(Some(list), error),
            Some(list) => {
                let mut larger = spec_requests;
                larger.max(&parse(Some(list), error));
                larger
            }
        }
    };

    let mut requests = ResourceNanos::default();
    for container in &spec.containers {
        requests.add(&container_requests(container, app_statuses, &mut error));
    }

    let mut sidecars = ResourceNanos::default();
    let mut init = ResourceNanos::default();
    for container in spec.init_containers.iter().flatten() {
        if container.restart_policy.as_deref() == Some("Always") {
            let own = container_requests(container, init_statuses, &mut error);
            requests.add(&own);
            sidecars.add(&own);
            init.max(&sidecars);
        } else {
            let mut weight = parse(requests_of(container), &mut error);
            weight.add(&sidecars);
            init.max(&weight);
        }
    }
    requests.max(&init);

    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let supported: BTreeMap<String, _> = pod_level
            .iter()
            .filter(|(name, _)| matches!(name.as_str(), CPU | MEMORY))
            .map(|(n, q)| (n.clone(), q.clone()))
            .collect();
        if !supported.is_empty() {
            let pod_level = parse(Some(&supported), &mut error);
            if supported.contains_key(CPU) {
                requests.cpu = pod_level.cpu;
            }
            if supported.contains_key(MEMORY) {
                requests.memory = pod_level.memory;
            }
        }
    }

    requests.add(&parse(spec.overhead.as_ref(), &mut error));
    (requests, error)
}

/// Parses `list`, keeping the first error in `error`.
fn parse(list: Option<&ResourceList>, error: &mut Option<QuantityError>) -> ResourceNanos {
    let (nanos, e) = ResourceNanos::from_list(list);
    if let Some(e) = e {
        error.get_or_insert(e);
    }
    nanos
}

type ResourceList = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

fn requests_of(container: &Container) -> Option<&ResourceList> {
    container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn container(name: &str, cpu: &str, memory: &str) -> serde_json::Value {
        json!({"name": name, "resources": {"requests": {"cpu": cpu, "memory": memory}}})
    }

    fn sidecar(name: &str, cpu: &str, memory: &str) -> serde_json::Value {
        let mut c = container(name, cpu, memory);
        c["restartPolicy"] = json!("Always");
        c
    }

    fn cpu_mem(p: &Pod) -> (u64, u64) {
        let (a, e) = pod_requests(p);
        assert!(e.is_none());
        (a.cpu_millis, a.memory_bytes)
    }

    #[test]
    fn app_containers_are_summed() {
        let p = pod(json!({"spec": {"containers": [
            container("a", "100m", "64Mi"),
            container("b", "0.25", "1Gi"),
        ]}}));
        assert_eq!(cpu_mem(&p), (350, (64 << 20) + (1 << 30)));
        assert_eq!(pod_requests(&p).0.pods, 1);
    }

    #[test]
    fn the_largest_init_container_wins_when_larger_than_the_app_sum() {
        let p = pod(json!({"spec": {
            "initContainers": [container("i1", "2", "100Mi"), container("i2", "500m", "1Gi")],
            "containers": [container("a", "1", "200Mi")],
        }}));
        // cpu: max(2, 0.5) = 2 > 1; memory: max(100Mi, 1Gi) = 1Gi > 200Mi.
        assert_eq!(cpu_mem(&p), (2000, 1 << 30));
    }

    #[test]
    fn sidecars_add_to_the_sum_and_weigh_on_later_init_containers() {
        // sidecar s (300m) starts first, then init i (1000m) runs beside it:
        // init weight = 1300m; app sum = 500m + 300m (sidecar) = 800m.
        let p = pod(json!({"spec": {
            "initContainers": [
                sidecar("s", "300m", "100Mi"),
                container("i", "1", "50Mi"),
            ],
            "containers": [container("a", "500m", "400Mi")],
        }}));
        // cpu: max(800, 1300) = 1300; memory: max(500Mi, 150Mi) = 500Mi.
        assert_eq!(cpu_mem(&p), (1300, 500 << 20));

        // An init container before the sidecar does not run beside it.
        let p = pod(json!({"spec": {
            "initContainers": [
                container("i", "1", "50Mi"),
                sidecar("s", "300m", "100Mi"),
            ],
            "containers": [container("a", "500m", "400Mi")],
        }}));
        assert_eq!(cpu_mem(&p), (1000, 500 << 20));
    }

    #[test]
    fn overhead_is_added_and_pod_level_requests_replace_cpu_and_memory() {
        let p = pod(json!({"spec": {
            "containers": [container("a", "100m", "100Mi")],
            "overhead": {"cpu": "250m", "memory": "120Mi"},
        }}));
        assert_eq!(cpu_mem(&p), (350, 220 << 20));
        let p = pod(json!({"spec": {
            "containers": [container("a", "100m", "100Mi")],
            "resources": {"requests": {"cpu": "2"}},
            "overhead": {"cpu": "10m"},
        }}));
        assert_eq!(cpu_mem(&p), (2010, 100 << 20));
    }

    #[test]
    fn sums_are_exact_and_only_the_result_is_rounded_up() {
        // 3 × 0.3333m would be 0 per container if each were rounded down,
        // 3m if each were rounded up; exactly it is 0.9999m → 1m.
        let p = pod(json!({"spec": {"containers": [
            container("a", "333300n", "1.5"),
            container("b", "333300n", "1.5"),
            container("c", "333300n", "0"),
        ]}}));
        assert_eq!(cpu_mem(&p), (1, 3));
    }

    #[test]
    fn extended_resources_and_ephemeral_storage_are_counted() {
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"nvidia.com/gpu": "2", "ephemeral-storage": "1Gi", "storage": "5Gi"}}},
            {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
        ]}}));
        let (a, _) = pod_requests(&p);
        assert_eq!(a.ephemeral_storage_bytes, 1 << 30);
        assert_eq!(a.scalars().collect::<Vec<_>>(), [("nvidia.com/gpu", 3)]);
    }

    #[test]
    fn a_resize_in_progress_counts_the_larger_request() {
        let mut p = pod(json!({
            "spec": {"containers": [container("a", "500m", "1Gi")]},
            "status": {"containerStatuses": [{
                "name": "a", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                "resources": {"requests": {"cpu": "1", "memory": "512Mi"}},
            }]},
        }));
        assert_eq!(cpu_mem(&p), (1000, 1 << 30));
        p.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({
                "type": "PodResizePending", "status": "True", "reason": "Infeasible",
            }))
            .unwrap(),
        ]);
        assert_eq!(cpu_mem(&p), (1000, 512 << 20));
    }

    #[test]
    fn a_malformed_quantity_counts_as_zero_and_is_reported() {
        let p = pod(json!({"spec": {"containers": [
            container("a", "1.2.3", "1Gi"),
            container("b", "100m", "1Mi"),
        ]}}));
        let (a, e) = pod_requests(&p);
        assert_eq!((a.cpu_millis, a.memory_bytes), (100, (1 << 30) + (1 << 20)));
        assert_eq!(e.unwrap().input, "1.2.3");
    }

    #[test]
    fn terminated_and_unscheduled_pods_are_recognised() {
        let phase = |p: &str| pod(json!({"spec": {"containers": []}, "status": {"phase": p}}));
        assert!(is_terminated(&phase("Succeeded")));
        assert!(is_terminated(&phase("Failed")));
        assert!(!is_terminated(&phase("Running")));
        assert!(!is_terminated(&phase("Pending")));
        assert_eq!(node_name(&phase("Pending")), None);
        let bound = pod(json!({"spec": {"containers": [], "nodeName": "n1"}}));
        assert_eq!(node_name(&bound), Some("n1"));
    }
}
