//! Field tables of the kinds kubectl's typed clients send as protobuf, from
//! the `generated.proto` files of k8s.io/api and k8s.io/apimachinery: field
//! number, JSON name, encoding. Go pointer fields (and fields whose JSON has
//! no `omitempty`) are `IntKeep`/`BoolKeep`, so their zero values survive.
//! Only what kubectl's generators and commands send is listed, plus the
//! common pod template fields; anything else is refused by number.

use super::Field::{
    Bool, BoolKeep, Bytes, Inline, Int, IntKeep, IntOrString, Map, Msg, Quantity, Repeated, Skip,
    Str, StrList, Time,
};
use super::{Message, msg};

// ---------------------------------------------------------------------------
// meta/v1

const OWNER_REFERENCE: Message = msg(
    "OwnerReference",
    &[
        (1, "kind", Str),
        (3, "name", Str),
        (4, "uid", Str),
        (5, "apiVersion", Str),
        (6, "controller", BoolKeep),
        (7, "blockOwnerDeletion", BoolKeep),
    ],
);

const OBJECT_META: Message = msg(
    "ObjectMeta",
    &[
        (1, "name", Str),
        (2, "generateName", Str),
        (3, "namespace", Str),
        (4, "selfLink", Str),
        (5, "uid", Str),
        (6, "resourceVersion", Str),
        (7, "generation", Int),
        (8, "creationTimestamp", Time),
        (9, "deletionTimestamp", Time),
        (10, "deletionGracePeriodSeconds", IntKeep),
        (11, "labels", Map(&Str)),
        (12, "annotations", Map(&Str)),
        (13, "ownerReferences", Repeated(&Msg(&OWNER_REFERENCE))),
        (14, "finalizers", Repeated(&Str)),
    ],
);

const LABEL_SELECTOR_REQUIREMENT: Message = msg(
    "LabelSelectorRequirement",
    &[
        (1, "key", Str),
        (2, "operator", Str),
        (3, "values", Repeated(&Str)),
    ],
);

const LABEL_SELECTOR: Message = msg(
    "LabelSelector",
    &[
        (1, "matchLabels", Map(&Str)),
        (
            2,
            "matchExpressions",
            Repeated(&Msg(&LABEL_SELECTOR_REQUIREMENT)),
        ),
    ],
);

const CONDITION: Message = msg(
    "Condition",
    &[
        (1, "type", Str),
        (2, "status", Str),
        (3, "observedGeneration", Int),
        (4, "lastTransitionTime", Time),
        (5, "reason", Str),
        (6, "message", Str),
    ],
);

// ---------------------------------------------------------------------------
// core/v1: references, config, namespaces, service accounts

const OBJECT_REFERENCE: Message = msg(
    "ObjectReference",
    &[
        (1, "kind", Str),
        (2, "namespace", Str),
        (3, "name", Str),
        (4, "uid", Str),
        (5, "apiVersion", Str),
        (6, "resourceVersion", Str),
        (7, "fieldPath", Str),
    ],
);

const LOCAL_OBJECT_REFERENCE: Message = msg("LocalObjectReference", &[(1, "name", Str)]);

const NAMESPACE: Message = msg(
    "Namespace",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg("NamespaceSpec", &[(1, "finalizers", Repeated(&Str))])),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "NamespaceStatus",
                &[
                    (1, "phase", Str),
                    (2, "conditions", Repeated(&Msg(&CONDITION))),
                ],
            )),
        ),
    ],
);

const CONFIG_MAP: Message = msg(
    "ConfigMap",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "data", Map(&Str)),
        (3, "binaryData", Map(&Bytes)),
        (4, "immutable", BoolKeep),
    ],
);

const SECRET: Message = msg(
    "Secret",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "data", Map(&Bytes)),
        (3, "type", Str),
        (4, "stringData", Map(&Str)),
        (5, "immutable", BoolKeep),
    ],
);

const SERVICE_ACCOUNT: Message = msg(
    "ServiceAccount",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "secrets", Repeated(&Msg(&OBJECT_REFERENCE))),
        (
            3,
            "imagePullSecrets",
            Repeated(&Msg(&LOCAL_OBJECT_REFERENCE)),
        ),
        (4, "automountServiceAccountToken", BoolKeep),
    ],
);

const RESOURCE_QUOTA: Message = msg(
    "ResourceQuota",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "ResourceQuotaSpec",
                &[
                    (1, "hard", Map(&Quantity)),
                    (2, "scopes", Repeated(&Str)),
                    (
                        3,
                        "scopeSelector",
                        Msg(&msg(
                            "ScopeSelector",
                            &[(
                                1,
                                "matchExpressions",
                                Repeated(&Msg(&msg(
                                    "ScopedResourceSelectorRequirement",
                                    &[
                                        (1, "scopeName", Str),
                                        (2, "operator", Str),
                                        (3, "values", Repeated(&Str)),
                                    ],
                                ))),
                            )],
                        )),
                    ),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "ResourceQuotaStatus",
                &[(1, "hard", Map(&Quantity)), (2, "used", Map(&Quantity))],
            )),
        ),
    ],
);

// ---------------------------------------------------------------------------
// core/v1: services

const PORT_STATUS: Message = msg(
    "PortStatus",
    &[
        (1, "port", IntKeep),
        (2, "protocol", Str),
        (3, "error", Str),
    ],
);

const SERVICE_PORT: Message = msg(
    "ServicePort",
    &[
        (1, "name", Str),
        (2, "protocol", Str),
        (6, "appProtocol", Str),
        (3, "port", IntKeep),
        (4, "targetPort", IntOrString),
        (5, "nodePort", Int),
    ],
);

const SERVICE: Message = msg(
    "Service",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "ServiceSpec",
                &[
                    (1, "ports", Repeated(&Msg(&SERVICE_PORT))),
                    (2, "selector", Map(&Str)),
                    (3, "clusterIP", Str),
                    (18, "clusterIPs", Repeated(&Str)),
                    (4, "type", Str),
                    (5, "externalIPs", Repeated(&Str)),
                    (7, "sessionAffinity", Str),
                    (8, "loadBalancerIP", Str),
                    (9, "loadBalancerSourceRanges", Repeated(&Str)),
                    (10, "externalName", Str),
                    (11, "externalTrafficPolicy", Str),
                    (12, "healthCheckNodePort", Int),
                    (13, "publishNotReadyAddresses", Bool),
                    (
                        14,
                        "sessionAffinityConfig",
                        Msg(&msg(
                            "SessionAffinityConfig",
                            &[(
                                1,
                                "clientIP",
                                Msg(&msg("ClientIPConfig", &[(1, "timeoutSeconds", IntKeep)])),
                            )],
                        )),
                    ),
                    (19, "ipFamilies", Repeated(&Str)),
                    (17, "ipFamilyPolicy", Str),
                    (20, "allocateLoadBalancerNodePorts", BoolKeep),
                    (21, "loadBalancerClass", Str),
                    (22, "internalTrafficPolicy", Str),
                    (23, "trafficDistribution", Str),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "ServiceStatus",
                &[
                    (
                        1,
                        "loadBalancer",
                        Msg(&msg(
                            "LoadBalancerStatus",
                            &[(
                                1,
                                "ingress",
                                Repeated(&Msg(&msg(
                                    "LoadBalancerIngress",
                                    &[
                                        (1, "ip", Str),
                                        (2, "hostname", Str),
                                        (3, "ipMode", Str),
                                        (4, "ports", Repeated(&Msg(&PORT_STATUS))),
                                    ],
                                ))),
                            )],
                        )),
                    ),
                    (2, "conditions", Repeated(&Msg(&CONDITION))),
                ],
            )),
        ),
    ],
);

// ---------------------------------------------------------------------------
// core/v1: pod templates

const KEY_TO_PATH: Message = msg(
    "KeyToPath",
    &[(1, "key", Str), (2, "path", Str), (3, "mode", IntKeep)],
);

const OBJECT_FIELD_SELECTOR: Message = msg(
    "ObjectFieldSelector",
    &[(1, "apiVersion", Str), (2, "fieldPath", Str)],
);

const RESOURCE_FIELD_SELECTOR: Message = msg(
    "ResourceFieldSelector",
    &[
        (1, "containerName", Str),
        (2, "resource", Str),
        (3, "divisor", Quantity),
    ],
);

/// ConfigMapKeySelector and SecretKeySelector.
const KEY_SELECTOR: Message = msg(
    "KeySelector",
    &[
        (1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        (2, "key", Str),
        (3, "optional", BoolKeep),
    ],
);

/// ConfigMapEnvSource and SecretEnvSource.
const ENV_SOURCE: Message = msg(
    "EnvSource",
    &[
        (1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        (2, "optional", BoolKeep),
    ],
);

const ENV_VAR: Message = msg(
    "EnvVar",
    &[
        (1, "name", Str),
        (2, "value", Str),
        (
            3,
            "valueFrom",
            Msg(&msg(
                "EnvVarSource",
                &[
                    (1, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
                    (2, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)),
                    (3, "configMapKeyRef", Msg(&KEY_SELECTOR)),
                    (4, "secretKeyRef", Msg(&KEY_SELECTOR)),
                ],
            )),
        ),
    ],
);

const ENV_FROM_SOURCE: Message = msg(
    "EnvFromSource",
    &[
        (1, "prefix", Str),
        (2, "configMapRef", Msg(&ENV_SOURCE)),
        (3, "secretRef", Msg(&ENV_SOURCE)),
    ],
);

const RESOURCE_REQUIREMENTS: Message = msg(
    "ResourceRequirements",
    &[
        (1, "limits", Map(&Quantity)),
        (2, "requests", Map(&Quantity)),
        (
            3,
            "claims",
            Repeated(&Msg(&msg(
                "ResourceClaim",
                &[(1, "name", Str), (2, "request", Str)],
            ))),
        ),
    ],
);

const EXEC_ACTION: Message = msg("ExecAction", &[(1, "command", Repeated(&Str))]);

const HTTP_GET_ACTION: Message = msg(
    "HTTPGetAction",
    &[
        (1, "path", Str),
        (2, "port", IntOrString),
        (3, "host", Str),
        (4, "scheme", Str),
        (
            5,
            "httpHeaders",
            Repeated(&Msg(&msg(
                "HTTPHeader",
                &[(1, "name", Str), (2, "value", Str)],
            ))),
        ),
    ],
);

const TCP_SOCKET_ACTION: Message = msg(
    "TCPSocketAction",
    &[(1, "port", IntOrString), (2, "host", Str)],
);

const PROBE: Message = msg(
    "Probe",
    &[
        (
            1,
            "handler",
            Inline(&msg(
                "ProbeHandler",
                &[
                    (1, "exec", Msg(&EXEC_ACTION)),
                    (2, "httpGet", Msg(&HTTP_GET_ACTION)),
                    (3, "tcpSocket", Msg(&TCP_SOCKET_ACTION)),
                    (
                        4,
                        "grpc",
                        Msg(&msg(
                            "GRPCAction",
                            &[(1, "port", IntKeep), (2, "service", Str)],
                        )),
                    ),
                ],
            )),
        ),
        (2, "initialDelaySeconds", Int),
        (3, "timeoutSeconds", Int),
        (4, "periodSeconds", Int),
        (5, "successThreshold", Int),
        (6, "failureThreshold", Int),
        (7, "terminationGracePeriodSeconds", IntKeep),
    ],
);

const LIFECYCLE_HANDLER: Message = msg(
    "LifecycleHandler",
    &[
        (1, "exec", Msg(&EXEC_ACTION)),
        (2, "httpGet", Msg(&HTTP_GET_ACTION)),
        (3, "tcpSocket", Msg(&TCP_SOCKET_ACTION)),
        (
            4,
            "sleep",
            Msg(&msg("SleepAction", &[(1, "seconds", IntKeep)])),
        ),
    ],
);

const PROFILE: Message = msg(
    "SeccompProfile",
    &[(1, "type", Str), (2, "localhostProfile", Str)],
);

const SECURITY_CONTEXT: Message = msg(
    "SecurityContext",
    &[
        (
            1,
            "capabilities",
            Msg(&msg(
                "Capabilities",
                &[(1, "add", Repeated(&Str)), (2, "drop", Repeated(&Str))],
            )),
        ),
        (2, "privileged", BoolKeep),
        (4, "runAsUser", IntKeep),
        (8, "runAsGroup", IntKeep),
        (5, "runAsNonRoot", BoolKeep),
        (6, "readOnlyRootFilesystem", BoolKeep),
        (7, "allowPrivilegeEscalation", BoolKeep),
        (9, "procMount", Str),
        (11, "seccompProfile", Msg(&PROFILE)),
        (12, "appArmorProfile", Msg(&PROFILE)),
    ],
);

const POD_SECURITY_CONTEXT: Message = msg(
    "PodSecurityContext",
    &[
        (2, "runAsUser", IntKeep),
        (6, "runAsGroup", IntKeep),
        (3, "runAsNonRoot", BoolKeep),
        (4, "supplementalGroups", Repeated(&Int)),
        (12, "supplementalGroupsPolicy", Str),
        (5, "fsGroup", IntKeep),
        (
            7,
            "sysctls",
            Repeated(&Msg(&msg("Sysctl", &[(1, "name", Str), (2, "value", Str)]))),
        ),
        (9, "fsGroupChangePolicy", Str),
        (10, "seccompProfile", Msg(&PROFILE)),
        (11, "appArmorProfile", Msg(&PROFILE)),
        (13, "seLinuxChangePolicy", Str),
    ],
);

/// Container, and the inline common part of EphemeralContainer.
const CONTAINER: Message = msg(
    "Container",
    &[
        (1, "name", Str),
        (2, "image", Str),
        (3, "command", Repeated(&Str)),
        (4, "args", Repeated(&Str)),
        (5, "workingDir", Str),
        (
            6,
            "ports",
            Repeated(&Msg(&msg(
                "ContainerPort",
                &[
                    (1, "name", Str),
                    (2, "hostPort", Int),
                    (3, "containerPort", IntKeep),
                    (4, "protocol", Str),
                    (5, "hostIP", Str),
                ],
            ))),
        ),
        (19, "envFrom", Repeated(&Msg(&ENV_FROM_SOURCE))),
        (7, "env", Repeated(&Msg(&ENV_VAR))),
        (8, "resources", Msg(&RESOURCE_REQUIREMENTS)),
        (
            23,
            "resizePolicy",
            Repeated(&Msg(&msg(
                "ContainerResizePolicy",
                &[(1, "resourceName", Str), (2, "restartPolicy", Str)],
            ))),
        ),
        (24, "restartPolicy", Str),
        (
            9,
            "volumeMounts",
            Repeated(&Msg(&msg(
                "VolumeMount",
                &[
                    (1, "name", Str),
                    (2, "readOnly", Bool),
                    (7, "recursiveReadOnly", Str),
                    (3, "mountPath", Str),
                    (4, "subPath", Str),
                    (5, "mountPropagation", Str),
                    (6, "subPathExpr", Str),
                ],
            ))),
        ),
        (
            21,
            "volumeDevices",
            Repeated(&Msg(&msg(
                "VolumeDevice",
                &[(1, "name", Str), (2, "devicePath", Str)],
            ))),
        ),
        (10, "livenessProbe", Msg(&PROBE)),
        (11, "readinessProbe", Msg(&PROBE)),
        (22, "startupProbe", Msg(&PROBE)),
        (
            12,
            "lifecycle",
            Msg(&msg(
                "Lifecycle",
                &[
                    (1, "postStart", Msg(&LIFECYCLE_HANDLER)),
                    (2, "preStop", Msg(&LIFECYCLE_HANDLER)),
                    (3, "stopSignal", Str),
                ],
            )),
        ),
        (13, "terminationMessagePath", Str),
        (20, "terminationMessagePolicy", Str),
        (14, "imagePullPolicy", Str),
        (15, "securityContext", Msg(&SECURITY_CONTEXT)),
        (16, "stdin", Bool),
        (17, "stdinOnce", Bool),
        (18, "tty", Bool),
    ],
);

const EPHEMERAL_CONTAINER: Message = msg(
    "EphemeralContainer",
    &[
        (1, "ephemeralContainerCommon", Inline(&CONTAINER)),
        (2, "targetContainerName", Str),
    ],
);

const DOWNWARD_API_FILE: Message = msg(
    "DownwardAPIVolumeFile",
    &[
        (1, "path", Str),
        (2, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
        (3, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)),
        (4, "mode", IntKeep),
    ],
);

/// ConfigMapProjection and SecretProjection.
const PROJECTION: Message = msg(
    "Projection",
    &[
        (1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        (2, "items", Repeated(&Msg(&KEY_TO_PATH))),
        (4, "optional", BoolKeep),
    ],
);

const VOLUME_SOURCE: Message = msg(
    "VolumeSource",
    &[
        (
            1,
            "hostPath",
            Msg(&msg(
                "HostPathVolumeSource",
                &[(1, "path", Str), (2, "type", Str)],
            )),
        ),
        (
            2,
            "emptyDir",
            Msg(&msg(
                "EmptyDirVolumeSource",
                &[(1, "medium", Str), (2, "sizeLimit", Quantity)],
            )),
        ),
        (
            6,
            "secret",
            Msg(&msg(
                "SecretVolumeSource",
                &[
                    (1, "secretName", Str),
                    (2, "items", Repeated(&Msg(&KEY_TO_PATH))),
                    (3, "defaultMode", IntKeep),
                    (4, "optional", BoolKeep),
                ],
            )),
        ),
        (
            10,
            "persistentVolumeClaim",
            Msg(&msg(
                "PersistentVolumeClaimVolumeSource",
                &[(1, "claimName", Str), (2, "readOnly", Bool)],
            )),
        ),
        (
            16,
            "downwardAPI",
            Msg(&msg(
                "DownwardAPIVolumeSource",
                &[
                    (1, "items", Repeated(&Msg(&DOWNWARD_API_FILE))),
                    (2, "defaultMode", IntKeep),
                ],
            )),
        ),
        (
            19,
            "configMap",
            Msg(&msg(
                "ConfigMapVolumeSource",
                &[
                    (1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
                    (2, "items", Repeated(&Msg(&KEY_TO_PATH))),
                    (3, "defaultMode", IntKeep),
                    (4, "optional", BoolKeep),
                ],
            )),
        ),
        (
            26,
            "projected",
            Msg(&msg(
                "ProjectedVolumeSource",
                &[
                    (
                        1,
                        "sources",
                        Repeated(&Msg(&msg(
                            "VolumeProjection",
                            &[
                                (1, "secret", Msg(&PROJECTION)),
                                (
                                    2,
                                    "downwardAPI",
                                    Msg(&msg(
                                        "DownwardAPIProjection",
                                        &[(1, "items", Repeated(&Msg(&DOWNWARD_API_FILE)))],
                                    )),
                                ),
                                (3, "configMap", Msg(&PROJECTION)),
                                (
                                    4,
                                    "serviceAccountToken",
                                    Msg(&msg(
                                        "ServiceAccountTokenProjection",
                                        &[
                                            (1, "audience", Str),
                                            (2, "expirationSeconds", IntKeep),
                                            (3, "path", Str),
                                        ],
                                    )),
                                ),
                            ],
                        ))),
                    ),
                    (2, "defaultMode", IntKeep),
                ],
            )),
        ),
    ],
);

const POD_SPEC: Message = msg(
    "PodSpec",
    &[
        (
            1,
            "volumes",
            Repeated(&Msg(&msg(
                "Volume",
                &[
                    (1, "name", Str),
                    (2, "volumeSource", Inline(&VOLUME_SOURCE)),
                ],
            ))),
        ),
        (20, "initContainers", Repeated(&Msg(&CONTAINER))),
        (2, "containers", Repeated(&Msg(&CONTAINER))),
        (
            34,
            "ephemeralContainers",
            Repeated(&Msg(&EPHEMERAL_CONTAINER)),
        ),
        (3, "restartPolicy", Str),
        (4, "terminationGracePeriodSeconds", IntKeep),
        (5, "activeDeadlineSeconds", IntKeep),
        (6, "dnsPolicy", Str),
        (7, "nodeSelector", Map(&Str)),
        (8, "serviceAccountName", Str),
        (9, "serviceAccount", Str),
        (21, "automountServiceAccountToken", BoolKeep),
        (10, "nodeName", Str),
        (11, "hostNetwork", Bool),
        (12, "hostPID", Bool),
        (13, "hostIPC", Bool),
        (27, "shareProcessNamespace", BoolKeep),
        (14, "securityContext", Msg(&POD_SECURITY_CONTEXT)),
        (
            15,
            "imagePullSecrets",
            Repeated(&Msg(&LOCAL_OBJECT_REFERENCE)),
        ),
        (16, "hostname", Str),
        (17, "subdomain", Str),
        (19, "schedulerName", Str),
        (
            22,
            "tolerations",
            Repeated(&Msg(&msg(
                "Toleration",
                &[
                    (1, "key", Str),
                    (2, "operator", Str),
                    (3, "value", Str),
                    (4, "effect", Str),
                    (5, "tolerationSeconds", IntKeep),
                ],
            ))),
        ),
        (
            23,
            "hostAliases",
            Repeated(&Msg(&msg(
                "HostAlias",
                &[(1, "ip", Str), (2, "hostnames", Repeated(&Str))],
            ))),
        ),
        (24, "priorityClassName", Str),
        (25, "priority", IntKeep),
        (
            28,
            "readinessGates",
            Repeated(&Msg(&msg("PodReadinessGate", &[(1, "conditionType", Str)]))),
        ),
        (29, "runtimeClassName", Str),
        (30, "enableServiceLinks", BoolKeep),
        (31, "preemptionPolicy", Str),
        (32, "overhead", Map(&Quantity)),
        (35, "setHostnameAsFQDN", BoolKeep),
        (36, "os", Msg(&msg("PodOS", &[(1, "name", Str)]))),
        (37, "hostUsers", BoolKeep),
        (
            38,
            "schedulingGates",
            Repeated(&Msg(&msg("PodSchedulingGate", &[(1, "name", Str)]))),
        ),
        (40, "resources", Msg(&RESOURCE_REQUIREMENTS)),
    ],
);

const POD_TEMPLATE_SPEC: Message = msg(
    "PodTemplateSpec",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "spec", Msg(&POD_SPEC)),
    ],
);

// ---------------------------------------------------------------------------
// apps/v1, batch/v1

const DEPLOYMENT: Message = msg(
    "Deployment",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "DeploymentSpec",
                &[
                    (1, "replicas", IntKeep),
                    (2, "selector", Msg(&LABEL_SELECTOR)),
                    (3, "template", Msg(&POD_TEMPLATE_SPEC)),
                    (
                        4,
                        "strategy",
                        Msg(&msg(
                            "DeploymentStrategy",
                            &[
                                (1, "type", Str),
                                (
                                    2,
                                    "rollingUpdate",
                                    Msg(&msg(
                                        "RollingUpdateDeployment",
                                        &[
                                            (1, "maxUnavailable", IntOrString),
                                            (2, "maxSurge", IntOrString),
                                        ],
                                    )),
                                ),
                            ],
                        )),
                    ),
                    (5, "minReadySeconds", Int),
                    (6, "revisionHistoryLimit", IntKeep),
                    (7, "paused", Bool),
                    (9, "progressDeadlineSeconds", IntKeep),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "DeploymentStatus",
                &[
                    (1, "observedGeneration", Int),
                    (2, "replicas", Int),
                    (3, "updatedReplicas", Int),
                    (7, "readyReplicas", Int),
                    (4, "availableReplicas", Int),
                    (5, "unavailableReplicas", Int),
                    (9, "terminatingReplicas", IntKeep),
                    (
                        6,
                        "conditions",
                        Repeated(&Msg(&msg(
                            "DeploymentCondition",
                            &[
                                (1, "type", Str),
                                (2, "status", Str),
                                (6, "lastUpdateTime", Time),
                                (7, "lastTransitionTime", Time),
                                (4, "reason", Str),
                                (5, "message", Str),
                            ],
                        ))),
                    ),
                    (8, "collisionCount", IntKeep),
                ],
            )),
        ),
    ],
);

const JOB_SPEC: Message = msg(
    "JobSpec",
    &[
        (1, "parallelism", IntKeep),
        (2, "completions", IntKeep),
        (3, "activeDeadlineSeconds", IntKeep),
        (7, "backoffLimit", IntKeep),
        (12, "backoffLimitPerIndex", IntKeep),
        (13, "maxFailedIndexes", IntKeep),
        (4, "selector", Msg(&LABEL_SELECTOR)),
        (5, "manualSelector", BoolKeep),
        (6, "template", Msg(&POD_TEMPLATE_SPEC)),
        (8, "ttlSecondsAfterFinished", IntKeep),
        (9, "completionMode", Str),
        (10, "suspend", BoolKeep),
        (14, "podReplacementPolicy", Str),
        (15, "managedBy", Str),
    ],
);

const JOB: Message = msg(
    "Job",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "spec", Msg(&JOB_SPEC)),
        (
            3,
            "status",
            Msg(&msg(
                "JobStatus",
                &[
                    (
                        1,
                        "conditions",
                        Repeated(&Msg(&msg(
                            "JobCondition",
                            &[
                                (1, "type", Str),
                                (2, "status", Str),
                                (3, "lastProbeTime", Time),
                                (4, "lastTransitionTime", Time),
                                (5, "reason", Str),
                                (6, "message", Str),
                            ],
                        ))),
                    ),
                    (2, "startTime", Time),
                    (3, "completionTime", Time),
                    (4, "active", Int),
                    (5, "succeeded", Int),
                    (6, "failed", Int),
                    (11, "terminating", IntKeep),
                    (7, "completedIndexes", Str),
                    (10, "failedIndexes", Str),
                    (
                        8,
                        "uncountedTerminatedPods",
                        Msg(&msg(
                            "UncountedTerminatedPods",
                            &[
                                (1, "succeeded", Repeated(&Str)),
                                (2, "failed", Repeated(&Str)),
                            ],
                        )),
                    ),
                    (9, "ready", IntKeep),
                ],
            )),
        ),
    ],
);

const CRON_JOB: Message = msg(
    "CronJob",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "CronJobSpec",
                &[
                    (1, "schedule", Str),
                    (8, "timeZone", Str),
                    (2, "startingDeadlineSeconds", IntKeep),
                    (3, "concurrencyPolicy", Str),
                    (4, "suspend", BoolKeep),
                    (
                        5,
                        "jobTemplate",
                        Msg(&msg(
                            "JobTemplateSpec",
                            &[
                                (1, "metadata", Msg(&OBJECT_META)),
                                (2, "spec", Msg(&JOB_SPEC)),
                            ],
                        )),
                    ),
                    (6, "successfulJobsHistoryLimit", IntKeep),
                    (7, "failedJobsHistoryLimit", IntKeep),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "CronJobStatus",
                &[
                    (1, "active", Repeated(&Msg(&OBJECT_REFERENCE))),
                    (4, "lastScheduleTime", Time),
                    (5, "lastSuccessfulTime", Time),
                ],
            )),
        ),
    ],
);

// ---------------------------------------------------------------------------
// rbac.authorization.k8s.io/v1

const POLICY_RULE: Message = msg(
    "PolicyRule",
    &[
        (1, "verbs", Repeated(&Str)),
        (2, "apiGroups", Repeated(&Str)),
        (3, "resources", Repeated(&Str)),
        (4, "resourceNames", Repeated(&Str)),
        (5, "nonResourceURLs", Repeated(&Str)),
    ],
);

const ROLE: Message = msg(
    "Role",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "rules", Repeated(&Msg(&POLICY_RULE))),
    ],
);

const CLUSTER_ROLE: Message = msg(
    "ClusterRole",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "rules", Repeated(&Msg(&POLICY_RULE))),
        (
            3,
            "aggregationRule",
            Msg(&msg(
                "AggregationRule",
                &[(1, "clusterRoleSelectors", Repeated(&Msg(&LABEL_SELECTOR)))],
            )),
        ),
    ],
);

/// RoleBinding and ClusterRoleBinding.
const BINDING: Message = msg(
    "RoleBinding",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "subjects",
            Repeated(&Msg(&msg(
                "Subject",
                &[
                    (1, "kind", Str),
                    (2, "apiGroup", Str),
                    (3, "name", Str),
                    (4, "namespace", Str),
                ],
            ))),
        ),
        (
            3,
            "roleRef",
            Msg(&msg(
                "RoleRef",
                &[(1, "apiGroup", Str), (2, "kind", Str), (3, "name", Str)],
            )),
        ),
    ],
);

// ---------------------------------------------------------------------------
// policy/v1, networking.k8s.io/v1, scheduling.k8s.io/v1

const POD_DISRUPTION_BUDGET: Message = msg(
    "PodDisruptionBudget",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "PodDisruptionBudgetSpec",
                &[
                    (1, "minAvailable", IntOrString),
                    (2, "selector", Msg(&LABEL_SELECTOR)),
                    (3, "maxUnavailable", IntOrString),
                    (4, "unhealthyPodEvictionPolicy", Str),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "PodDisruptionBudgetStatus",
                &[
                    (1, "observedGeneration", Int),
                    (2, "disruptedPods", Map(&Time)),
                    (3, "disruptionsAllowed", IntKeep),
                    (4, "currentHealthy", IntKeep),
                    (5, "desiredHealthy", IntKeep),
                    (6, "expectedPods", IntKeep),
                    (7, "conditions", Repeated(&Msg(&CONDITION))),
                ],
            )),
        ),
    ],
);

const INGRESS_BACKEND: Message = msg(
    "IngressBackend",
    &[
        (
            4,
            "service",
            Msg(&msg(
                "IngressServiceBackend",
                &[
                    (1, "name", Str),
                    (
                        2,
                        "port",
                        Msg(&msg(
                            "ServiceBackendPort",
                            &[(1, "name", Str), (2, "number", Int)],
                        )),
                    ),
                ],
            )),
        ),
        (
            3,
            "resource",
            Msg(&msg(
                "TypedLocalObjectReference",
                &[(1, "apiGroup", Str), (2, "kind", Str), (3, "name", Str)],
            )),
        ),
    ],
);

const INGRESS: Message = msg(
    "Ingress",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "IngressSpec",
                &[
                    (4, "ingressClassName", Str),
                    (1, "defaultBackend", Msg(&INGRESS_BACKEND)),
                    (
                        2,
                        "tls",
                        Repeated(&Msg(&msg(
                            "IngressTLS",
                            &[(1, "hosts", Repeated(&Str)), (2, "secretName", Str)],
                        ))),
                    ),
                    (
                        3,
                        "rules",
                        Repeated(&Msg(&msg(
                            "IngressRule",
                            &[
                                (1, "host", Str),
                                (
                                    2,
                                    "ingressRuleValue",
                                    Inline(&msg(
                                        "IngressRuleValue",
                                        &[(
                                            1,
                                            "http",
                                            Msg(&msg(
                                                "HTTPIngressRuleValue",
                                                &[(
                                                    1,
                                                    "paths",
                                                    Repeated(&Msg(&msg(
                                                        "HTTPIngressPath",
                                                        &[
                                                            (1, "path", Str),
                                                            (3, "pathType", Str),
                                                            (2, "backend", Msg(&INGRESS_BACKEND)),
                                                        ],
                                                    ))),
                                                )],
                                            )),
                                        )],
                                    )),
                                ),
                            ],
                        ))),
                    ),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "IngressStatus",
                &[(
                    1,
                    "loadBalancer",
                    Msg(&msg(
                        "IngressLoadBalancerStatus",
                        &[(
                            1,
                            "ingress",
                            Repeated(&Msg(&msg(
                                "IngressLoadBalancerIngress",
                                &[
                                    (1, "ip", Str),
                                    (2, "hostname", Str),
                                    (4, "ports", Repeated(&Msg(&PORT_STATUS))),
                                ],
                            ))),
                        )],
                    )),
                )],
            )),
        ),
    ],
);

const PRIORITY_CLASS: Message = msg(
    "PriorityClass",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (2, "value", IntKeep),
        (3, "globalDefault", Bool),
        (4, "description", Str),
        (5, "preemptionPolicy", Str),
    ],
);

// ---------------------------------------------------------------------------
// authentication.k8s.io/v1, authorization.k8s.io/v1, certificates.k8s.io/v1

const TOKEN_REQUEST: Message = msg(
    "TokenRequest",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "TokenRequestSpec",
                &[
                    (1, "audiences", Repeated(&Str)),
                    (4, "expirationSeconds", IntKeep),
                    (
                        3,
                        "boundObjectRef",
                        Msg(&msg(
                            "BoundObjectReference",
                            &[
                                (1, "kind", Str),
                                (2, "apiVersion", Str),
                                (3, "name", Str),
                                (4, "uid", Str),
                            ],
                        )),
                    ),
                ],
            )),
        ),
        (3, "status", Skip),
    ],
);

const TOKEN_REVIEW: Message = msg(
    "TokenReview",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "TokenReviewSpec",
                &[(1, "token", Str), (2, "audiences", Repeated(&Str))],
            )),
        ),
        (3, "status", Skip),
    ],
);

const SELF_SUBJECT_REVIEW: Message = msg(
    "SelfSubjectReview",
    &[(1, "metadata", Msg(&OBJECT_META)), (2, "status", Skip)],
);

const RESOURCE_ATTRIBUTES: Message = msg(
    "ResourceAttributes",
    &[
        (1, "namespace", Str),
        (2, "verb", Str),
        (3, "group", Str),
        (4, "version", Str),
        (5, "resource", Str),
        (6, "subresource", Str),
        (7, "name", Str),
        (
            8,
            "fieldSelector",
            Msg(&msg(
                "FieldSelectorAttributes",
                &[
                    (1, "rawSelector", Str),
                    (
                        2,
                        "requirements",
                        Repeated(&Msg(&LABEL_SELECTOR_REQUIREMENT)),
                    ),
                ],
            )),
        ),
        (
            9,
            "labelSelector",
            Msg(&msg(
                "LabelSelectorAttributes",
                &[
                    (1, "rawSelector", Str),
                    (
                        2,
                        "requirements",
                        Repeated(&Msg(&LABEL_SELECTOR_REQUIREMENT)),
                    ),
                ],
            )),
        ),
    ],
);

const NON_RESOURCE_ATTRIBUTES: Message = msg(
    "NonResourceAttributes",
    &[(1, "path", Str), (2, "verb", Str)],
);

const SELF_SUBJECT_ACCESS_REVIEW: Message = msg(
    "SelfSubjectAccessReview",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "SelfSubjectAccessReviewSpec",
                &[
                    (1, "resourceAttributes", Msg(&RESOURCE_ATTRIBUTES)),
                    (2, "nonResourceAttributes", Msg(&NON_RESOURCE_ATTRIBUTES)),
                ],
            )),
        ),
        (3, "status", Skip),
    ],
);

/// SubjectAccessReview and LocalSubjectAccessReview.
const SUBJECT_ACCESS_REVIEW: Message = msg(
    "SubjectAccessReview",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "SubjectAccessReviewSpec",
                &[
                    (1, "resourceAttributes", Msg(&RESOURCE_ATTRIBUTES)),
                    (2, "nonResourceAttributes", Msg(&NON_RESOURCE_ATTRIBUTES)),
                    (3, "user", Str),
                    (4, "groups", Repeated(&Str)),
                    (5, "extra", Map(&StrList)),
                    (6, "uid", Str),
                ],
            )),
        ),
        (3, "status", Skip),
    ],
);

const SELF_SUBJECT_RULES_REVIEW: Message = msg(
    "SelfSubjectRulesReview",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg("SelfSubjectRulesReviewSpec", &[(1, "namespace", Str)])),
        ),
        (3, "status", Skip),
    ],
);

const CERTIFICATE_SIGNING_REQUEST: Message = msg(
    "CertificateSigningRequest",
    &[
        (1, "metadata", Msg(&OBJECT_META)),
        (
            2,
            "spec",
            Msg(&msg(
                "CertificateSigningRequestSpec",
                &[
                    (1, "request", Bytes),
                    (7, "signerName", Str),
                    (8, "expirationSeconds", IntKeep),
                    (5, "usages", Repeated(&Str)),
                    (2, "username", Str),
                    (3, "uid", Str),
                    (4, "groups", Repeated(&Str)),
                    (6, "extra", Map(&StrList)),
                ],
            )),
        ),
        (
            3,
            "status",
            Msg(&msg(
                "CertificateSigningRequestStatus",
                &[
                    (
                        1,
                        "conditions",
                        Repeated(&Msg(&msg(
                            "CertificateSigningRequestCondition",
                            &[
                                (1, "type", Str),
                                (6, "status", Str),
                                (2, "reason", Str),
                                (3, "message", Str),
                                (4, "lastUpdateTime", Time),
                                (5, "lastTransitionTime", Time),
                            ],
                        ))),
                    ),
                    (2, "certificate", Bytes),
                ],
            )),
        ),
    ],
);

/// The table of a kind, by apiVersion and kind.
pub(super) fn kind(api_version: &str, kind: &str) -> Option<&'static Message> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("v1", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("v1", "Service") => &SERVICE,
        ("v1", "ResourceQuota") => &RESOURCE_QUOTA,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("batch/v1", "Job") => &JOB,
        ("batch/v1", "CronJob") => &CRON_JOB,
        ("rbac.authorization.k8s.io/v1", "Role") => &ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => &CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => &BINDING,
        ("policy/v1", "PodDisruptionBudget") => &POD_DISRUPTION_BUDGET,
        ("networking.k8s.io/v1", "Ingress") => &INGRESS,
        ("scheduling.k8s.io/v1", "PriorityClass") => &PRIORITY_CLASS,
        ("authentication.k8s.io/v1", "TokenRequest") => &TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "TokenReview") => &TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &SELF_SUBJECT_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => &SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            &SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => &SELF_SUBJECT_RULES_REVIEW,
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => &CERTIFICATE_SIGNING_REQUEST,
        _ => return None,
    })
}
