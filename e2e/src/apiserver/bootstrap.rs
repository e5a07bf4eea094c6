//! Objects every cluster has without anyone creating them: the
//! `default/kubernetes` Service that kube-apiserver's bootstrap controller
//! keeps (the physical cluster only; a KCP workspace has none), and the
//! `default` ServiceAccount that kube-controller-manager's serviceaccounts
//! controller creates in every namespace (and recreates when it is deleted).
//! The test bed creates them at once, in the same write as what causes them.

use serde_json::{Value, json};

use super::object;

/// The name of the ServiceAccount every namespace gets.
pub(crate) const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The ClusterIP kubeadm and kind give the `kubernetes` Service (the first
/// address of the default service range 10.96.0.0/12).
const KUBERNETES_CLUSTER_IP: &str = "10.96.0.1";

/// The `default` ServiceAccount of `namespace`, as the controller creates it
/// (no token secrets since Kubernetes 1.24).
pub(crate) fn default_service_account(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": DEFAULT_SERVICE_ACCOUNT,
            "namespace": namespace,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": object::now_rfc3339(),
        },
    })
}

/// The `default/kubernetes` Service pointing at this API server's port.
pub(crate) fn kubernetes_service(apiserver_port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": object::now_rfc3339(),
            "labels": { "component": "apiserver", "provider": "kubernetes" },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": KUBERNETES_CLUSTER_IP,
            "clusterIPs": [KUBERNETES_CLUSTER_IP],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": apiserver_port }],
        },
        "status": { "loadBalancer": {} },
    })
}
