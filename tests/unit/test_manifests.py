"""The Kubernetes manifests under infra/k8s/, validated offline.

Core kinds with kubernetes-validate (strict: no unknown field); custom resources against the
openAPIV3Schema of their CRDs vendored under infra/k8s/crds/ (made strict the same way); and the
manifests against the worker itself: every variable they set is a Settings variable with a valid
value, the grace period covers the revoke grace and one commit, the topics and ACLs are the ones the
worker creates and needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.kafka.topics import wanted_topics
from pipeline.kafka.transactions import transactional_id
from pipeline.settings import KAFKA_SECURITY_FIELDS, Settings, env_name

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
K8S_VERSION = "1.33"
CUSTOM = {
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("kafka.strimzi.io", "KafkaTopic"): "kafka.strimzi.io_kafkatopics.yaml",
    ("kafka.strimzi.io", "KafkaUser"): "kafka.strimzi.io_kafkausers.yaml",
}
SETTINGS_VARIABLES = {env_name(name) for name in Settings.model_fields}
COMMIT_MARGIN_S = 5.0


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in documents() if d["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    (doc,) = of_kind(kind)
    return doc


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever properties are listed and unknown
    fields are not explicitly preserved (what the API server's structural pruning would drop)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((K8S / "crds" / CUSTOM[(group, kind)]).read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return strict(schema)


def test_the_vendored_crds_carry_their_licences() -> None:
    for name in ("prometheus-operator", "keda", "strimzi"):
        assert "Apache License" in (K8S / "crds" / f"LICENSE.{name}").read_text()
    readme = (K8S / "crds" / "README.md").read_text()
    for file in CUSTOM.values():
        assert file in readme


@pytest.mark.parametrize(("file", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_each_manifest_validates(file: str, doc: dict[str, Any]) -> None:
    group, _, version = doc["apiVersion"].rpartition("/")
    if (group, doc["kind"]) in CUSTOM:
        jsonschema.validate(doc, crd_schema(group, doc["kind"], version))
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_crd_check_rejects_an_unknown_field() -> None:
    monitor = one("ServiceMonitor")
    bad = {**monitor, "spec": {**monitor["spec"], "endpionts": monitor["spec"]["endpoints"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("monitoring.coreos.com", "ServiceMonitor", "v1"))


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def container() -> dict[str, Any]:
    (worker,) = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return worker


def configured() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def settings() -> Settings:
    """The ConfigMap's values through the worker's own validation (the security block without its
    files, which exist only in the pod)."""
    security = {env_name(f) for f in KAFKA_SECURITY_FIELDS}
    return Settings.load(env={k: v for k, v in configured().items() if k not in security})


def test_every_variable_a_manifest_sets_is_a_settings_variable() -> None:
    names = set(configured()) | {e["name"] for e in container()["env"]}
    assert names <= SETTINGS_VARIABLES, names - SETTINGS_VARIABLES
    settings()  # and every value is valid


def test_the_pod_name_is_the_static_group_instance_id() -> None:
    (instance,) = [e for e in container()["env"] if e["name"] == "STT_GROUP_INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "STT_GROUP_INSTANCE_ID" not in configured()


def test_the_grace_period_covers_revoke_grace_and_one_commit() -> None:
    config = settings()
    grace = one("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.revoke_grace_s + config.producer_request_timeout_ms / 1000 + COMMIT_MARGIN_S


def test_probes_and_service_use_the_worker_http_port() -> None:
    config = settings()
    worker = container()
    (port,) = worker["ports"]
    assert port["name"] == "http" and port["containerPort"] == config.http_port
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert worker["resources"]["requests"]["cpu"] and worker["resources"]["requests"]["memory"]
    (service_port,) = one("Service")["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["port"] == config.http_port
    (endpoint,) = one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint == {**endpoint, "port": "http", "path": "/metrics"}


def test_secrets_are_files_from_mounted_secrets() -> None:
    worker = container()
    volumes = {v["name"]: v for v in one("StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    env = {e["name"]: e.get("value") for e in worker["env"]}
    for variable in ("CARTESIA_API_KEY_FILE", "KAFKA_SASL_PASSWORD_FILE"):
        path = env[variable]
        (mount,) = [m for m in worker["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert "secret" in volumes[mount["name"]] and mount["readOnly"]
    assert not {"CARTESIA_API_KEY", "KAFKA_SASL_PASSWORD"} & (set(env) | set(configured()))
    (user,) = of_kind("KafkaUser")
    assert volumes["kafka-password"]["secret"]["secretName"] == user["metadata"]["name"]


def test_the_kafka_topics_are_the_ones_the_worker_creates() -> None:
    config = settings()
    declared = {t["spec"].get("topicName", t["metadata"]["name"]): t["spec"] for t in of_kind("KafkaTopic")}
    wanted = {t.name: t for t in wanted_topics(config)}
    assert set(declared) == set(wanted)
    for name, topic in wanted.items():
        spec = declared[name]
        assert spec["partitions"] == topic.num_partitions == config.topic_partitions
        assert spec["replicas"] == topic.replication_factor
        assert {k: str(v) for k, v in spec["config"].items()} == topic.topic_configs
    scaled = one("ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] <= config.topic_partitions


def test_the_kafka_user_has_exactly_the_acls_the_worker_needs() -> None:
    config = settings()
    (user,) = of_kind("KafkaUser")
    assert user["metadata"]["name"] == configured()["KAFKA_SASL_USERNAME"]
    granted: dict[tuple[str, str | None, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        key = (resource["type"], resource.get("name"), resource.get("patternType", "literal"))
        granted.setdefault(key, set()).update(acl["operations"])
    prefix = f"stt-pipeline.{config.group_id}."
    assert transactional_id(config.group_id, config.audio_topic, 3).startswith(prefix)
    topic_ops = {"Read", "Write", "Describe", "DescribeConfigs"}
    needed = {
        **{("topic", t.name, "literal"): topic_ops for t in wanted_topics(config)},
        ("group", config.group_id, "literal"): {"Read"},
        ("transactionalId", prefix, "prefix"): {"Write", "Describe"},
        ("cluster", None, "literal"): {"IdempotentWrite"},
    }
    assert granted == needed


def test_the_autoscaler_scales_the_statefulset_on_open_sessions() -> None:
    scaled = one("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", one("StatefulSet")["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert "stt_open_sessions" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) <= settings().max_sessions
