"""Turns every Knative Service in the given manifests into a core/v1 PodTemplate, printed as
YAML documents, so that kubectl-validate checks the pod part strictly against Kubernetes' own
schemas.

Why: Knative's Service CRD marks `spec.template.metadata` and several PodSpec fields
(securityContext, affinity, tolerations, …) `x-kubernetes-preserve-unknown-fields`, so a typo
there passes CRD validation. Knative's PodSpec is a subset of Kubernetes' PodSpec; the few
fields it adds are removed here (the CRD types them strictly), and probe ports are filled in
the way Knative defaults them (the container's port).

    python podtemplates.py FILE.yaml... > podtemplates.yaml
"""

import sys

import yaml

# RevisionSpec fields that are not PodSpec fields; the Service CRD types them (no unknown
# fields there), so they are checked by the CRD validation.
KNATIVE_ONLY = ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds")
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


def pod_template(service: dict) -> dict:
    template = dict(service.get("spec", {}).get("template", {}))
    spec = {k: v for k, v in (template.get("spec") or {}).items() if k not in KNATIVE_ONLY}
    for container in spec.get("containers", []):
        container.setdefault("name", "user-container")
        ports = container.get("ports") or [{"containerPort": 8080}]
        for probe in PROBES:
            for action in ("httpGet", "tcpSocket", "grpc"):
                handler = (container.get(probe) or {}).get(action)
                if isinstance(handler, dict):
                    handler.setdefault("port", ports[0].get("containerPort", 8080))
    template["spec"] = spec
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": service["metadata"]["name"], "namespace": service["metadata"].get("namespace")},
        "template": template,
    }


def main(paths: list[str]) -> None:
    out = []
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                knative = doc and doc.get("apiVersion", "").startswith("serving.knative.dev/")
                if knative and doc.get("kind") == "Service":
                    out.append(pod_template(doc))
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main(sys.argv[1:])
