"""The functions, from their one home: the Knative Services of ``knative/base``.

``knative/base/kustomization.yaml`` lists the manifests under ``resources``; every document
there with ``kind: Service`` of ``serving.knative.dev`` is a function, named by its
``metadata.name``, in the kustomization's order (the order the runner gives them ports in).
"""

from __future__ import annotations

from pathlib import Path

import yaml

BASE = Path(__file__).resolve().parents[2] / "knative" / "base"


def functions(base: Path = BASE) -> tuple[str, ...]:
    """The names of the Knative Services of ``base``, in the order its kustomization lists them."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    names = []
    for resource in kustomization.get("resources") or []:
        with (base / resource).open() as f:
            for doc in yaml.safe_load_all(f):
                if (doc and doc.get("kind") == "Service"
                        and str(doc.get("apiVersion", "")).startswith("serving.knative.dev/")):
                    names.append(doc["metadata"]["name"])
    if not names:
        raise ValueError(f"{base}: the kustomization lists no Knative Service")
    return tuple(names)


FUNCTIONS = functions()
