//! Bodies encoded by hand the way Go's generated marshallers write them.

use serde_json::json;

use super::*;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = u8::try_from(v & 0x7f).unwrap_or(0);
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A length-delimited field.
fn field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(u64::from(number) << 3 | 2);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// A varint field.
fn int(number: u32, value: u64) -> Vec<u8> {
    let mut out = varint(u64::from(number) << 3);
    out.extend(varint(value));
    out
}

fn body(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
    [MAGIC.to_vec(), field(1, &type_meta), field(2, raw)].concat()
}

fn decoded(api_version: &str, kind: &str, raw: &[u8]) -> Value {
    decode(&body(api_version, kind, raw)).unwrap_or_else(|e| panic!("{e}"))
}

fn entry(key: &str, value: &[u8]) -> Vec<u8> {
    [field(1, key.as_bytes()), field(2, value)].concat()
}

#[test]
fn decodes_a_config_map() {
    let meta = [field(1, b"c1"), field(11, &entry("app", b"web"))].concat();
    let raw = [field(1, &meta), field(2, &entry("k", b"v"))].concat();
    assert_eq!(
        decoded("v1", "ConfigMap", &raw),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "labels": {"app": "web"}}, "data": {"k": "v"}})
    );
}

/// What `kubectl create deployment web --image=nginx --replicas=0 --port=80` sends.
#[test]
fn decodes_a_deployment_as_kubectl_creates_it() {
    let labels = field(11, &entry("app", b"web"));
    let container = [
        field(1, b"nginx"),
        field(2, b"nginx"),
        field(
            6,
            &[field(1, b""), int(2, 0), int(3, 80), field(4, b"")].concat(),
        ),
        field(8, b""),
        field(5, b""),
        int(16, 0),
    ]
    .concat();
    let pod_spec = [field(2, &container), int(11, 0), field(3, b"")].concat();
    let template = [field(1, &labels), field(2, &pod_spec)].concat();
    let spec = [
        int(1, 0),
        field(2, &field(1, &entry("app", b"web"))),
        field(3, &template),
        field(4, b""),
        int(5, 0),
    ]
    .concat();
    let meta = [field(1, b"web"), labels.clone(), field(8, b"")].concat();
    let raw = [field(1, &meta), field(2, &spec), field(3, &int(2, 0))].concat();
    let d = decoded("apps/v1", "Deployment", &raw);
    assert_eq!(d["spec"]["replicas"], 0, "a pointer's zero is kept: {d}");
    assert_eq!(
        d["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(d["spec"]["strategy"], json!({}));
    assert!(
        d["spec"].get("minReadySeconds").is_none(),
        "omitempty zero dropped: {d}"
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["ports"], json!([{"containerPort": 80}]));
    assert_eq!(c["resources"], json!({}));
    assert!(c.get("stdin").is_none() && c.get("workingDir").is_none());
    assert!(d["spec"]["template"]["spec"].get("hostNetwork").is_none());
    assert!(
        d["metadata"].get("creationTimestamp").is_none(),
        "the zero time is omitted"
    );
    assert_eq!(d["status"], json!({}));
}

#[test]
fn rbac_rules_keep_the_core_group_and_bindings_their_subjects() {
    let rule = [
        field(1, b"get"),
        field(1, b"list"),
        field(2, b""),
        field(3, b"pods"),
        field(4, b"one"),
    ]
    .concat();
    let role = decoded(
        "rbac.authorization.k8s.io/v1",
        "Role",
        &[field(1, &field(1, b"r")), field(2, &rule)].concat(),
    );
    assert_eq!(
        role["rules"],
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["one"]}])
    );
    let subject = [
        field(1, b"ServiceAccount"),
        field(2, b""),
        field(3, b"sa"),
        field(4, b"ns"),
    ]
    .concat();
    let role_ref = [
        field(1, b"rbac.authorization.k8s.io"),
        field(2, b"ClusterRole"),
        field(3, b"view"),
    ]
    .concat();
    let binding = decoded(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        &[
            field(1, &field(1, b"b")),
            field(2, &subject),
            field(3, &role_ref),
        ]
        .concat(),
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}])
    );
    assert_eq!(binding["roleRef"]["name"], "view");
}

#[test]
fn int_or_string_quantities_times_and_byte_maps() {
    let pdb_spec = [
        field(1, &[int(1, 1), field(3, b"50%")].concat()),
        field(3, &[int(1, 0), int(2, 2)].concat()),
    ]
    .concat();
    let pdb = decoded("policy/v1", "PodDisruptionBudget", &field(2, &pdb_spec));
    assert_eq!(pdb["spec"]["minAvailable"], "50%");
    assert_eq!(pdb["spec"]["maxUnavailable"], 2);

    let quota = decoded(
        "v1",
        "ResourceQuota",
        &field(2, &field(1, &entry("pods", &field(1, b"10")))),
    );
    assert_eq!(quota["spec"]["hard"], json!({"pods": "10"}));

    let meta = field(8, &int(1, 1_700_000_000));
    let secret = decoded(
        "v1",
        "Secret",
        &[field(1, &meta), field(2, &entry("k", b"\x00\xff"))].concat(),
    );
    assert_eq!(
        secret["metadata"]["creationTimestamp"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(secret["data"]["k"], "AP8=");

    let priority = decoded(
        "scheduling.k8s.io/v1",
        "PriorityClass",
        &[int(2, 0), int(3, 0)].concat(),
    );
    assert_eq!(priority["value"], 0, "value has no omitempty: {priority}");
    assert!(priority.get("globalDefault").is_none());
}

#[test]
fn reviews_decode_their_spec_and_ignore_their_status() {
    let attrs = [
        field(1, b"ns"),
        field(2, b"list"),
        field(3, b"apps"),
        field(5, b"deployments"),
    ]
    .concat();
    let status = [int(1, 0), field(3, b"")].concat();
    let review = decoded(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &[
            field(1, b""),
            field(2, &field(1, &attrs)),
            field(3, &status),
        ]
        .concat(),
    );
    assert_eq!(
        review["spec"]["resourceAttributes"],
        json!({"namespace": "ns", "verb": "list", "group": "apps", "resource": "deployments"})
    );
    assert!(review.get("status").is_none());
    let extra = entry("scopes", &[field(1, b"a"), field(1, b"b")].concat());
    let sar = decoded(
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        &field(2, &[field(3, b"alice"), field(5, &extra)].concat()),
    );
    assert_eq!(sar["spec"]["extra"], json!({"scopes": ["a", "b"]}));
}

#[test]
fn packed_and_unpacked_repeated_integers() {
    let packed = field(4, &[varint(1000), varint(2000)].concat());
    let unpacked = [int(4, 1000), int(4, 2000)].concat();
    for groups in [packed, unpacked] {
        let job = decoded(
            "batch/v1",
            "Job",
            &field(2, &field(6, &field(2, &field(14, &groups)))),
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000])
        );
    }
}

#[test]
fn unknown_fields_are_refused_by_number_unless_they_hold_only_zeros() {
    // PodSpec field 18 (affinity) is not in the tables.
    let affinity = field(18, &field(1, &field(1, b"zone")));
    let pod_spec = field(2, &affinity);
    let err = decode(&body("batch/v1", "Job", &field(2, &field(6, &pod_spec))))
        .err()
        .unwrap_or_default();
    assert!(err.contains("field 18 of PodSpec"), "{err}");
    let zeros = field(18, &[int(1, 0), field(2, b"")].concat());
    assert!(
        decode(&body(
            "batch/v1",
            "Job",
            &field(2, &field(6, &field(2, &zeros)))
        ))
        .is_ok()
    );
}

#[test]
fn rejects_unknown_kinds_and_garbage() {
    assert!(decode(&body("apps/v1", "StatefulSet", b"")).is_err());
    assert!(decode(b"k8s\0\xff\xff").is_err());
    assert!(decode(b"nope").is_err());
    let truncated = [MAGIC.to_vec(), vec![0x12, 0x05, 0x0a]].concat();
    assert!(decode(&truncated).is_err());
}
