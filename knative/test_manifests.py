"""Consistency of the deployment files: every setting a function reads is set or deliberately
left at its default, and names, images, ports, env and scaling agree across knative/base,
functions/*/func.yaml and knative/deploy-kn.sh. The list of functions is the Knative Services
that knative/base/kustomization.yaml lists. Schemas are knative/validate's job; func.yaml is
checked here against knative/func's JSON schema (knative/schemas)."""

import json
import pathlib
import re
import shlex
import subprocess

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = ROOT / "knative" / "base"
CLUSTER = ROOT / "knative" / "cluster"
IMAGE = "ghcr.io/weather-tweets/{}:0.1.0"
# Read by every function but deliberately not set: Knative sets PORT (to the container port),
# HOST's default 0.0.0.0 is right inside a pod, RUST_LOG (read by telemetry.rs, not clap)
# defaults to info.
LEFT_AT_DEFAULT = {"PORT", "HOST", "RUST_LOG"}
SECRETS = {"counter": {"REDIS_URL"}, "archiver": {"MONGODB_URI"}}


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomization_docs(folder):
    """Every document of the resources a kustomization.yaml lists, in its order."""
    (k,) = docs(folder / "kustomization.yaml")
    return [d for resource in k["resources"] for d in docs(folder / resource)]


def is_knative_service(d):
    return d["kind"] == "Service" and d["apiVersion"].startswith("serving.knative.dev/")


# The functions: the Knative Services of the base, in the order the kustomization lists them.
SERVICES = {d["metadata"]["name"]: d for d in kustomization_docs(BASE) if is_knative_service(d)}
NAMES = list(SERVICES)


def service(name):
    return SERVICES[name]


def container(name):
    (c,) = service(name)["spec"]["template"]["spec"]["containers"]
    return c


def help_text(name):
    binary = ROOT / "target" / "debug" / name
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run cargo build --workspace --bins")
    return subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout


def env_read(name):
    """Variable → default, from `<function> --help` (clap's `[env: NAME=] [default: …]`)."""
    text = " ".join(help_text(name).split())
    found = {m.group(1): m.group(2) for m in re.finditer(r"\[env: (\w+)=[^\]]*\](?: \[default: ([^\]]*)\])?", text)}
    assert found, f"no [env: …] in {name} --help"
    return found


def service_env(name):
    return {e["name"]: e for e in container(name).get("env", [])}


def func_yaml(name):
    return yaml.safe_load((ROOT / "functions" / name / "func.yaml").read_text())


def kn_calls():
    """`apply NAME flags…` calls of deploy-kn.sh, as NAME → list of flags."""
    text = (ROOT / "knative" / "deploy-kn.sh").read_text().replace("\\\n", " ")
    calls = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) > 1 and words[0] == "apply" and words[1] in NAMES:
            calls[words[1]] = words[2:]
    return calls


def flag_values(flags, flag):
    return [flags[i + 1] for i, f in enumerate(flags) if f == flag]


def test_the_functions_are_the_services_of_the_base():
    # Each Service has its own file, and every other place that deploys a function (func.yaml)
    # exists for exactly these Services.
    assert NAMES, "knative/base lists no Knative Service"
    for name in NAMES:
        assert [d for d in docs(BASE / f"{name}.yaml") if is_knative_service(d)] == [service(name)]
    with_func_yaml = {p.parent.name for p in (ROOT / "functions").glob("*/func.yaml")}
    assert with_func_yaml == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_variable_read_is_set_or_deliberately_defaulted(name):
    read = set(env_read(name))
    set_in_service = set(service_env(name))
    assert set_in_service <= read, f"{name} sets variables it does not read: {set_in_service - read}"
    assert read - set_in_service <= LEFT_AT_DEFAULT, f"{name} does not set {read - set_in_service - LEFT_AT_DEFAULT}"
    assert "PORT" not in set_in_service, "Knative sets PORT"


@pytest.mark.parametrize("name", NAMES)
def test_credentials_come_from_the_secret(name):
    env = service_env(name)
    for var in SECRETS.get(name, ()):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "weather-credentials", "key": var}
        assert "value" not in env[var]
    for var, e in env.items():
        assert "://" not in e.get("value", "") or "@" not in e.get("value", ""), f"{var} looks like a URL with credentials"


@pytest.mark.parametrize("name", NAMES)
def test_service_shape(name):
    svc, c = service(name), container(name)
    assert svc["metadata"] == {"name": name, "namespace": "weather", **({"labels": svc["metadata"]["labels"]} if name != "ingest" else {})}
    visibility = svc["metadata"].get("labels", {}).get("networking.knative.dev/visibility")
    assert visibility == (None if name == "ingest" else "cluster-local")
    assert c["image"] == IMAGE.format(name)
    # The container port is the function's default PORT, which Knative sets anyway; its name is
    # one of the two Knative understands (h2c: Knative proxies HTTP/2 cleartext).
    (port,) = c["ports"]
    assert port["name"] in ("http1", "h2c")
    assert port == {"name": port["name"], "containerPort": int(env_read(name)["PORT"])}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert set(c["resources"]) == {"requests", "limits"}


def test_ingest_reaches_producer_through_its_cluster_local_address():
    assert service_env("ingest")["PRODUCER_URL"]["value"] == "http://producer.weather.svc.cluster.local"


def test_the_grpc_callee_speaks_h2c():
    callee = re.fullmatch(r"http://(\w+)\.weather\.svc\.cluster\.local", service_env("ingest")["PRODUCER_URL"]["value"]).group(1)
    assert container(callee)["ports"][0]["name"] == "h2c", "gRPC needs HTTP/2 end to end"


def test_kafka_settings_agree_with_strimzi_and_the_sources():
    (kafka,) = [d for d in docs(ROOT / "strimzi" / "kafka.yaml") if d["kind"] == "Kafka"]
    topics = {d["metadata"]["name"]: d for d in docs(ROOT / "strimzi" / "topics.yaml")}
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka['metadata']['namespace']}:9092"
    assert service_env("producer")["KAFKA_BROKERS"]["value"] == bootstrap
    assert service_env("producer")["KAFKA_TOPIC"]["value"] == service_env("counter")["KAFKA_TOPIC"]["value"] == "messages"
    assert topics["messages"]["spec"]["partitions"] >= 3
    for path in BASE.glob("*.yaml"):
        for d in docs(path):
            if d["kind"] in ("KafkaSource", "KafkaSink"):
                assert d["spec"]["bootstrapServers"] == [bootstrap], path
            if d["kind"] == "KafkaSource":
                assert set(d["spec"]["topics"]) <= set(topics), path
            if d["kind"] == "KafkaSink":
                assert d["spec"]["topic"] in topics, path


def test_free_form_config_keys_are_the_expected_ones():
    # Strimzi's CRD lets any key into .spec.kafka.config and KafkaTopic .spec.config (they are
    # Kafka's own settings), so a misspelt key would pass the schema; pin them here.
    (kafka,) = [d for d in docs(ROOT / "strimzi" / "kafka.yaml") if d["kind"] == "Kafka"]
    assert set(kafka["spec"]["kafka"]["config"]) == {
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    }
    for topic in docs(ROOT / "strimzi" / "topics.yaml"):
        assert set(topic["spec"]["config"]) == {"retention.ms", "min.insync.replicas"}


def test_overlay_annotation_keys_are_knatives():
    # Annotation keys are free-form to every schema; a misspelt one would silently do nothing.
    known = {
        "autoscaling.knative.dev/metric",
        "autoscaling.knative.dev/target",
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
    }
    for mode in ("scale-to-zero", "always-on"):
        (k,) = docs(ROOT / "knative" / "overlays" / mode / "kustomization.yaml")
        (patch,) = k["patches"]
        annotations = yaml.safe_load(patch["patch"])["spec"]["template"]["metadata"]["annotations"]
        assert set(annotations) <= known, set(annotations) - known
        assert annotations["autoscaling.knative.dev/target"] == "100"
        assert annotations["autoscaling.knative.dev/min-scale"] == {"scale-to-zero": "0", "always-on": "1"}[mode]


@pytest.mark.parametrize("name", NAMES)
def test_func_yaml_matches_its_schema_and_the_service(name):
    schema = json.loads((ROOT / "knative" / "schemas" / "func_yaml-schema.json").read_text())
    f = func_yaml(name)
    jsonschema.validate(f, schema)
    c = container(name)
    assert f["name"] == name and f["runtime"] == "rust"
    assert f["image"] == f["deploy"]["image"] == c["image"] == IMAGE.format(name)
    assert f["deploy"]["namespace"] == "weather"
    labels = {label["key"]: label.get("value") for label in f["deploy"].get("labels", [])}
    assert labels == service(name)["metadata"].get("labels", {})
    envs = {e["name"]: e["value"] for e in f["run"]["envs"]}
    expected = {}
    for var, e in service_env(name).items():
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            expected[var] = f"{{{{ secret:{ref['name']}:{ref['key']} }}}}"
        else:
            expected[var] = e["value"]
    assert envs == expected
    assert f["deploy"]["healthEndpoints"] == {"liveness": "/health/liveness", "readiness": "/health/readiness"}
    assert f["deploy"]["options"]["resources"] == c["resources"]
    assert f["deploy"]["options"]["scale"] == {"min": 0, "max": 10, "metric": "concurrency", "target": 100}
    assert f["deploy"]["annotations"] == {"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "30s"}


@pytest.mark.parametrize("name", NAMES)
def test_kn_script_matches_the_service(name):
    flags = kn_calls()[name]
    c = container(name)
    assert flag_values(flags, "--port") == [f"{c['ports'][0]['name']}:{c['ports'][0]['containerPort']}"]
    assert ("--cluster-local" in flags) == (name != "ingest")
    env = dict(v.split("=", 1) for v in flag_values(flags, "--env"))
    secret_env = dict(v.split("=", 1) for v in flag_values(flags, "--env-value-from"))
    expected_env, expected_secrets = {}, {}
    for var, e in service_env(name).items():
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            expected_secrets[var] = f"secret:{ref['name']}:{ref['key']}"
        else:
            expected_env[var] = e["value"]
    assert env == expected_env
    assert secret_env == expected_secrets

    def quantities(flag, kind):
        (value,) = flag_values(flags, flag)
        return dict(q.split("=") for q in value.split(",")) == {k: str(v) for k, v in c["resources"][kind].items()}

    assert quantities("--request", "requests") and quantities("--limit", "limits")


def test_kn_script_shared_settings():
    text = (ROOT / "knative" / "deploy-kn.sh").read_text()
    assert "image: $registry/$1:$tag" in text and "${IMAGE_REGISTRY:-ghcr.io/weather-tweets}" in text
    assert "${IMAGE_TAG:-0.1.0}" in text
    for flag in ("--probe-readiness http:::/health/readiness", "--probe-liveness http:::/health/liveness",
                 "--scale-max 10", "--scale-metric concurrency", "--scale-target 100",
                 "autoscaling.knative.dev/scale-to-zero-pod-retention-period=30s",
                 "readOnlyRootFilesystem: true", "seccompProfile:"):
        assert flag in text, flag
    assert re.search(r"scale-to-zero\) min_scale=0", text) and re.search(r"always-on\) min_scale=1", text)

