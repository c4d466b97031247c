"""Consistency of the deployment files: every setting a function reads is set or deliberately
left at its default, and names, images, ports, env and scaling agree across knative/base,
functions/*/func.yaml and knative/deploy-kn.sh; the NetworkPolicies (knative/base and
knative/cluster) admit exactly Knative's data plane and the scrapers, on the ports Knative uses.
The list of functions is the Knative Services that knative/base/kustomization.yaml lists.
Schemas are knative/validate's job; func.yaml is checked here against knative/func's JSON schema
(knative/schemas), and the NetworkPolicy values the API server (not the schema) would reject are
checked here."""

import copy
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
# Knative sets PORT; HOST, RUST_LOG and KAFKA_DEBUG (librdkafka debug contexts) are for troubleshooting.
LEFT_AT_DEFAULT = {"PORT", "HOST", "RUST_LOG", "KAFKA_DEBUG"}
SECRETS = {"ingest": {"REDIS_URL"}, "counter": {"REDIS_URL"}, "archiver": {"MONGODB_URI"}}


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
    binary = ROOT / "target" / "release" / name
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run cargo build --workspace --bins")
    return subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout


def env_read(name):
    """Variable → default, from `<function> --help` (clap's `[env: NAME=] [default: …]`, or
    `[env: NAME]` for a secret, whose value --help hides)."""
    text = " ".join(help_text(name).split())
    found = {
        m.group(1): m.group(2) for m in re.finditer(r"\[env: (\w+)(?:=[^\]]*)?\](?: \[default: ([^\]]*)\])?", text)
    }
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
        value = e.get("value", "")
        assert "://" not in value or "@" not in value, f"{var} looks like a URL with credentials"


@pytest.mark.parametrize("name", NAMES)
def test_service_shape(name):
    svc, c = service(name), container(name)
    labels = {"labels": svc["metadata"]["labels"]} if name != "ingest" else {}
    assert svc["metadata"] == {"name": name, "namespace": "weather", **labels}
    visibility = svc["metadata"].get("labels", {}).get("networking.knative.dev/visibility")
    assert visibility == (None if name == "ingest" else "cluster-local")
    assert c["image"] == IMAGE.format(name)
    # The container port is the function's default PORT, which Knative sets anyway; its name is
    # one of the two Knative understands (h2c: Knative proxies HTTP/2 cleartext).
    (port,) = c["ports"]
    assert port["name"] in QUEUE_PORT
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
    (callee,) = callees("ingest")
    assert container(callee)["ports"][0]["name"] == "h2c", "gRPC needs HTTP/2 end to end"


def test_kafka_settings_agree_with_strimzi_and_the_sources():
    (kafka,) = [d for d in docs(ROOT / "strimzi" / "kafka.yaml") if d["kind"] == "Kafka"]
    topics = {d["metadata"]["name"]: d for d in docs(ROOT / "strimzi" / "topics.yaml")}
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka['metadata']['namespace']}:9092"
    # counter asks Kafka for the partitions and high watermarks of what it consumes.
    for s in ("producer", "counter"):
        assert service_env(s)["KAFKA_BROKERS"]["value"] == bootstrap, s
    service_topics = [service_env(s)["KAFKA_TOPIC"]["value"] for s in ("producer", "counter")]
    assert service_topics == ["messages", "messages"]
    assert topics["messages"]["spec"]["partitions"] >= 3
    # counter accepts positions of its topic and of that topic's dead-letter topic.
    sinks = [d for d in docs(BASE / "dead-letters.yaml") if d["kind"] == "KafkaSink"]
    assert [d["spec"]["topic"] for d in sinks] == [service_env("counter")["KAFKA_DEAD_LETTER_TOPIC"]["value"]]
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
        assert "autoscaling.knative.dev/target" not in annotations, "each Service sets its own"
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
    target = int(service(name)["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/target"])
    assert target == {"ingest": 10, "producer": 10, "counter": 100, "archiver": 100}[name]
    assert f["deploy"]["options"]["scale"] == {"min": 0, "max": 10, "metric": "concurrency", "target": target}
    assert f["deploy"]["annotations"] == {"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "30s"}


@pytest.mark.parametrize("name", NAMES)
def test_kn_script_matches_the_service(name):
    flags = kn_calls()[name]
    c = container(name)
    assert flag_values(flags, "--port") == [f"{c['ports'][0]['name']}:{c['ports'][0]['containerPort']}"]
    assert ("--cluster-local" in flags) == (name != "ingest")
    annotations = service(name)["spec"]["template"]["metadata"]["annotations"]
    assert flag_values(flags, "--scale-target") == [annotations["autoscaling.knative.dev/target"]]
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
                 "--scale-max 10", "--scale-metric concurrency",
                 "autoscaling.knative.dev/scale-to-zero-pod-retention-period=30s",
                 "readOnlyRootFilesystem: true", "seccompProfile:"):
        assert flag in text, flag
    assert re.search(r"scale-to-zero\) min_scale=0", text) and re.search(r"always-on\) min_scale=1", text)


# Who may call the functions: the NetworkPolicies of knative/base (namespace weather) and of
# knative/cluster (the Kourier gateway and the activator). knative/README.md, "Who may call the
# functions", says why each rule exists; the facts about Knative below come from its 1.23
# release (each comment names the file).

# queue-proxy's serving port by the Service's port name: BackendHTTPPort / BackendHTTP2Port in
# serving pkg/networking/constants.go; queue.go picks 8013 for h2c.
QUEUE_PORT = {"http1": 8012, "h2c": 8013}
AUTOSCALER_METRICS_PORT = 9090  # AutoscalingQueueMetricsPort, scraped by the autoscaler
USER_METRICS_PORT = 9091  # UserQueueMetricsPort (http-usermetric), scraped by Prometheus
ACTIVATOR_METRICS_PORT = 9090  # serving config/core/deployments/activator.yaml, port `metrics`
# net-kourier pkg/reconciler/ingress/config/config.go: HTTPPortExternal, HTTPSPortExternal, HTTPPortLocal.
GATEWAY_EXTERNAL_PORTS = {8080, 8443}
GATEWAY_INTERNAL_PORT = 8081
# The pods a policy may name, as (namespace, pod labels).
PEERS = {
    # net-kourier config/300-gateway.yaml, config/300-controller.yaml
    "gateway": ("kourier-system", {"app": "3scale-kourier-gateway"}),
    "kourier-controller": ("knative-serving", {"app": "net-kourier-controller"}),
    # serving config/core/deployments/activator.yaml, autoscaler.yaml
    "activator": ("knative-serving", {"app": "activator"}),
    "autoscaler": ("knative-serving", {"app": "autoscaler"}),
    # eventing-kafka-broker data-plane/config/source/500-dispatcher.yaml
    "dispatcher": ("knative-eventing", {"app": "kafka-source-dispatcher"}),
    # the dead-letter replay Job of knative/replay/job.yaml
    "replay": ("weather", {"app.kubernetes.io/name": "weather-replay"}),
    # prometheus-operator's pod labels; kube-prometheus-stack installed in monitoring (README)
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
}
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
SERVICE_LABEL = "serving.knative.dev/service"  # set by Knative on every pod of a Service


def policies(folder):
    return {d["metadata"]["name"]: d for d in kustomization_docs(folder) if d["kind"] == "NetworkPolicy"}


def visibility(name):
    return service(name)["metadata"].get("labels", {}).get("networking.knative.dev/visibility")


def callees(name):
    """The Services of the base whose cluster address `name` is configured to call."""
    namespace = service(name)["metadata"]["namespace"]
    pattern = rf"https?://([a-z0-9-]+)\.{namespace}\.svc\.cluster\.local(:\d+)?/?"
    found = [m.group(1) for e in container(name).get("env", []) if (m := re.fullmatch(pattern, e.get("value", "")))]
    assert set(found) <= set(NAMES), f"{name} calls a Service the base does not define: {found}"
    return found


def peer(entry):
    """The PEERS key or function name a `from` entry selects, or None if it is none of them."""
    if set(entry) != {"namespaceSelector", "podSelector"}:
        return None  # a whole namespace, an ipBlock, or any pod of our own namespace
    ns, pods = entry["namespaceSelector"], entry["podSelector"]
    if set(ns) != {"matchLabels"} or set(ns["matchLabels"]) != {NAMESPACE_LABEL} or set(pods) != {"matchLabels"}:
        return None
    selected = (ns["matchLabels"][NAMESPACE_LABEL], pods["matchLabels"])
    for key, known in PEERS.items():
        if selected == known:
            return key
    for name in NAMES:
        if selected == (service(name)["metadata"]["namespace"], {SERVICE_LABEL: name}):
            return name
    return None


def policy_problems(doc):
    """What kubectl-validate lets through (it checks field names and types, not values) but
    would make the policy wrong: what the API server would reject, or a selector that names no
    pod we know of (a typo there silently blocks Knative)."""
    problems = []
    if doc.get("apiVersion") != "networking.k8s.io/v1" or doc.get("kind") != "NetworkPolicy":
        problems.append("not a networking.k8s.io/v1 NetworkPolicy")
    spec = doc.get("spec", {})
    # Ingress only: an Egress entry would cut the functions off DNS, Kafka, Redis and MongoDB.
    if spec.get("policyTypes") != ["Ingress"]:
        problems.append(f"policyTypes {spec.get('policyTypes')} is not [Ingress]")
    for i, rule in enumerate(spec.get("ingress", [])):
        for p in rule.get("ports", []):
            if p.get("protocol") != "TCP":
                problems.append(f"ingress[{i}]: protocol {p.get('protocol')!r} is not TCP")
            # A string is a named port: "8O12" would be one, and match nothing.
            if not isinstance(p.get("port"), int) or not 0 < p["port"] < 65536 or "endPort" in p:
                problems.append(f"ingress[{i}]: port {p.get('port')!r} is not one port number")
        for entry in rule.get("from", []):
            if peer(entry) is None:
                problems.append(f"ingress[{i}]: {entry} selects no known pod")
    return problems


def allowed(doc):
    """The policy's rules as a set of (peer, port); "*" is anyone or any port."""
    pairs = set()
    for rule in doc["spec"].get("ingress", []):
        peers = [peer(e) for e in rule.get("from", [])] or ["*"]
        ports = [p["port"] for p in rule.get("ports", [])] or ["*"]
        pairs |= {(who, port) for who in peers for port in ports}
    return pairs


def test_network_policies_are_well_formed():
    for folder in (BASE, CLUSTER):
        for name, doc in policies(folder).items():
            assert policy_problems(doc) == [], f"{folder.name}/{name}"


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


# Each is a typo that passes kubectl-validate (right field names and types, wrong values).
BROKEN = {
    "policyTypes Ingres": _set(["spec", "policyTypes"], ["Ingres"]),
    "an Egress type too": _set(["spec", "policyTypes"], ["Ingress", "Egress"]),
    "port 8O12": _set(["spec", "ingress", 0, "ports", 0, "port"], "8O12"),
    "protocol TPC": _set(["spec", "ingress", 0, "ports", 0, "protocol"], "TPC"),
    "label app: activtor": _set(["spec", "ingress", 0, "from", 1, "podSelector", "matchLabels", "app"], "activtor"),
    "namespace knative-servng": _set(
        ["spec", "ingress", 0, "from", 1, "namespaceSelector", "matchLabels", NAMESPACE_LABEL], "knative-servng"
    ),
    "a whole namespace": _set(
        ["spec", "ingress", 0, "from", 1], {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "knative-serving"}}}
    ),
    "an ipBlock": _set(["spec", "ingress", 0, "from", 1], {"ipBlock": {"cidr": "0.0.0.0/0"}}),
}


@pytest.mark.parametrize("typo", BROKEN)
def test_a_broken_network_policy_is_rejected(typo):
    (sink, *_) = [n for n in NAMES if visibility(n) == "cluster-local"]
    doc = copy.deepcopy(policies(BASE)[sink])
    assert policy_problems(doc) == []
    BROKEN[typo](doc)
    assert policy_problems(doc), f"{typo} was accepted"


def test_every_function_has_its_policy_and_the_rest_is_closed():
    found = policies(BASE)
    assert all(d["metadata"]["namespace"] == "weather" for d in found.values())
    # Everything not opened below is closed, including pods added later.
    assert found.pop("default-deny-ingress")["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, doc in found.items():
        # Each remaining policy is named after, and selects the pods of, a Service of the base.
        assert doc["spec"]["podSelector"] == {"matchLabels": {SERVICE_LABEL: name}}, name
        assert name in NAMES, f"policy {name} selects no Knative Service of the base"
    assert set(found) == set(NAMES), f"functions without a policy: {set(NAMES) - set(found)}"


def test_the_public_function_is_open_to_anyone_and_only_it():
    for name in NAMES:
        rules = policies(BASE)[name]["spec"].get("ingress", [])
        if visibility(name) is None:
            assert rules == [{}], name
        else:
            assert visibility(name) == "cluster-local"
            assert all(r.get("from") and r.get("ports") for r in rules), f"{name} opens a port to anyone"


@pytest.mark.parametrize("name", [n for n in NAMES if visibility(n) == "cluster-local"])
def test_a_cluster_local_function_admits_knatives_data_plane_and_the_scrapers(name):
    (port,) = container(name)["ports"]
    queue = QUEUE_PORT[port["name"]]
    assert allowed(policies(BASE)[name]) == {
        # requests: the gateway (revision serving), the activator (scaled to zero or short of
        # burst capacity; also its probes of each pod), the autoscaler (its probe before
        # scaling to zero)
        ("gateway", queue),
        ("activator", queue),
        ("autoscaler", queue),
        ("autoscaler", AUTOSCALER_METRICS_PORT),
        ("prometheus", port["containerPort"]),
        ("prometheus", USER_METRICS_PORT),
    }


def test_prometheus_may_scrape_what_the_pod_monitors_scrape():
    monitors = {d["metadata"]["name"]: d for d in docs(ROOT / "kepler" / "servicemonitor.yaml")}
    functions = monitors["weather-functions"]
    assert functions["metadata"]["namespace"] == "weather"
    (expr,) = functions["spec"]["selector"]["matchExpressions"]
    assert expr["key"] == SERVICE_LABEL and expr["operator"] == "In" and set(expr["values"]) == set(NAMES)
    for name in NAMES:
        # Knative names the user container's port user-port, whatever the Service calls it.
        number = {"user-port": container(name)["ports"][0]["containerPort"], "http-usermetric": USER_METRICS_PORT}
        rules = allowed(policies(BASE)[name])
        for endpoint in functions["spec"]["podMetricsEndpoints"]:
            assert ("*", "*") in rules or ("prometheus", number[endpoint["port"]]) in rules, (name, endpoint["port"])
    serving = monitors["knative-serving"]
    assert [e["port"] for e in serving["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert ("prometheus", ACTIVATOR_METRICS_PORT) in allowed(policies(CLUSTER)["weather-activator"])
    # The dispatcher the gateway admits is the one Prometheus watches.
    dispatcher = monitors["kafka-source-dispatcher"]
    assert (dispatcher["metadata"]["namespace"], dispatcher["spec"]["selector"]["matchLabels"]) == PEERS["dispatcher"]


def test_the_gateway_admits_exactly_the_callers_of_cluster_local_services():
    gateway = policies(CLUSTER)["weather-kourier-gateway"]
    assert (gateway["metadata"]["namespace"], gateway["spec"]["podSelector"]) == (
        PEERS["gateway"][0], {"matchLabels": PEERS["gateway"][1]})
    cluster_local = {n for n in NAMES if visibility(n) == "cluster-local"}
    sinks = {d["spec"]["sink"]["ref"]["name"] for d in kustomization_docs(BASE) if d["kind"] == "KafkaSource"}
    assert sinks and sinks <= cluster_local
    # Who calls a cluster-local Service, read from the manifests: the dispatcher of the
    # KafkaSources, the dead-letter replay Job (it posts to the sinks), every function configured
    # with a cluster-local address, and net-kourier's controller, which probes the internal
    # listener before it marks a route ready.
    (job,) = docs(ROOT / "knative" / "replay" / "job.yaml")
    assert (job["metadata"]["namespace"], job["spec"]["template"]["metadata"]["labels"]) == PEERS["replay"]
    callers = {"dispatcher", "kourier-controller", "replay"} | {
        n for n in NAMES if set(callees(n)) & cluster_local
    }
    assert callers == {"dispatcher", "kourier-controller", "replay", "ingest"}
    rules = allowed(gateway)
    assert {who for who, port in rules if port == GATEWAY_INTERNAL_PORT} == callers
    assert {port for who, port in rules if who == "*"} == GATEWAY_EXTERNAL_PORTS
    assert ("*", "*") not in rules


def test_the_activator_admits_only_the_gateway_and_the_autoscaler():
    activator = policies(CLUSTER)["weather-activator"]
    assert (activator["metadata"]["namespace"], activator["spec"]["podSelector"]) == (
        PEERS["activator"][0], {"matchLabels": PEERS["activator"][1]})
    assert allowed(activator) == {
        (who, port) for who in ("gateway", "autoscaler") for port in QUEUE_PORT.values()
    } | {("prometheus", ACTIVATOR_METRICS_PORT)}


def test_the_policies_are_deployed_with_the_functions():
    for folder in (BASE, CLUSTER):
        on_disk = {
            d["metadata"]["name"] for p in folder.glob("*.yaml") for d in docs(p) if d["kind"] == "NetworkPolicy"
        }
        assert set(policies(folder)) == on_disk, f"{folder} has a NetworkPolicy its kustomization leaves out"
    # The kn path applies the base's policies before its first Service.
    text = (ROOT / "knative" / "deploy-kn.sh").read_text()
    line = 'kubectl apply -f "$here/base/network-policies.yaml"'
    assert line in text and text.index(line) < re.search(r"^apply \w+", text, re.M).start()
