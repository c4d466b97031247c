"""Energy experiment of Weather Tweets: scale-to-zero vs always-on under Locust bursts.

``sampler`` reads CPU time from ``/proc`` (and RAPL where readable), ``accounting`` turns the
samples into CPU seconds, joules and CO2e per component, ``experiment`` runs both modes on this
machine (``make energy``), ``k8s`` runs them on Kubernetes and reads Kepler through Prometheus,
and ``report`` writes ``report.md``, ``report.json`` and the PNG plots.
"""
