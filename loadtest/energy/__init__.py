"""Energy experiment of Weather Tweets: scale-to-zero vs always-on under Locust bursts.

``sampler`` reads CPU time through psutil (and RAPL, ``rapl``, where readable), ``accounting``
turns the samples into CPU seconds, joules and CO2e per component, ``experiment`` runs both
modes on this machine (``make energy``) through the ``runner`` and ``tools`` binaries
(``tools``), ``k8s`` runs them on Kubernetes and reads Kepler through Prometheus, and ``report``
writes ``report.md``, ``report.json`` and the PNG plots. The functions are the Knative Services
of ``knative/base`` (``manifests``).
"""
