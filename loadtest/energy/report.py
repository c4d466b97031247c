"""The report: ``report.json`` (every figure), ``report.md`` and PNG plots, from each mode's
figures (``accounting.analyse_mode`` locally, ``k8s.analyse_mode`` on Kubernetes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

# The backend must be chosen before pyplot is imported (no display here).
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import accounting
from .accounting import ModeFigures
from .manifests import FUNCTIONS

COLOURS = {"always-on": "tab:blue", "scale-to-zero": "tab:green"}


@dataclass(frozen=True)
class Context:
    """What the report says besides the figures: where it ran, on what, under which load."""

    where: str = ""
    machine: dict | None = None
    shape: str = ""
    grid_source: str = accounting.GRID_SOURCE
    model_source: str = ""
    # A reading of the result, written by hand for a published report.
    reading: str = ""


def _c(mode: str) -> str:
    return COLOURS.get(mode, "tab:gray")


def plot_processes(results: list[ModeFigures], path: Path, unit: str) -> None:
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        p = r.processes
        names = [k for k in p if k != "t"]
        ax.stackplot(p["t"], *[p[f] for f in names], labels=names, step="post", alpha=0.8)
        ax.set_ylabel(f"running {unit}")
        ax.set_title(f"{r.mode}: running function {unit} and the load")
        most = max((sum(v) for v in zip(*[p[f] for f in names], strict=True)), default=0)
        ax.set_ylim(0, max(len(names), most) + 0.5)
        if r.load:
            ax2 = ax.twinx()
            ax2.plot([h.t for h in r.load], [h.rps for h in r.load], color="black", lw=1.2,
                     label="Locust requests/s")
            ax2.set_ylabel("requests/s")
            ax2.set_ylim(bottom=0)
            ax2.legend(loc="upper right", fontsize=8)
        for t in r.cold_starts.times_s:
            ax.axvline(t, color="red", lw=0.6, alpha=0.5)
        ax.legend(loc="upper left", fontsize=8, ncol=4)
    axes[-1, 0].set_xlabel("seconds since the window's start (red lines: cold starts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replicas(results: list[ModeFigures], path: Path, unit: str) -> None:
    """One panel per function, each mode's replicas as a step line (dashed: the autoscaler's
    desired count), on the same axes so the modes compare."""
    functions = _functions(results)
    fig, axes = plt.subplots(len(functions), 1, figsize=(10, 2.2 * len(functions) + 0.6), sharex=True,
                             squeeze=False)
    top = max((n for r in results for v in r.replicas.steps.values() for _, n in v), default=0)
    top = max([top, *(d for r in results for v in r.replicas.desired.values() for _, d, _ in v)])
    for ax, f in zip(axes[:, 0], functions, strict=True):
        for i, r in enumerate(results):
            steps = r.replicas.steps.get(f)
            if not steps:
                continue
            # The last count holds until the window's end.
            ts = [t for t, _ in steps] + [r.duration_s]
            ns = [n for _, n in steps] + [steps[-1][1]]
            # Each mode narrower than the one before, so equal counts leave both visible.
            ax.step(ts, ns, where="post", color=_c(r.mode), lw=1.4 + 1.6 * (len(results) - 1 - i), alpha=0.85,
                    label=f"{r.mode} ({r.replicas.seconds.get(f, 0.0):,.0f} replica-s, max {r.replicas.max.get(f)})")
            desired = r.replicas.desired.get(f)
            if desired:
                ax.step([t for t, _, _ in desired] + [r.duration_s], [d for _, d, _ in desired] + [desired[-1][1]],
                        where="post", color=_c(r.mode), lw=0.8, ls="--", alpha=0.8)
            for b0, b1 in r.bursts_unix_s:
                ax.axvspan(b0 - r.window_unix_s[0], b1 - r.window_unix_s[0], color=_c(r.mode), alpha=0.06)
        ax.set_ylim(-0.1, top + 0.5)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"{f}\n{unit}")
        ax.legend(loc="best", fontsize=8)
    axes[0, 0].set_title(f"Replicas per function ({unit}; dashed: the autoscaler's desired count)")
    axes[-1, 0].set_xlabel("seconds since the window's start (shaded: bursts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_power(results: list[ModeFigures], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    for r in results:
        ax.plot(r.series.t, r.series.power_w, color=_c(r.mode), lw=1.2,
                label=f"{r.mode} (mean {r.mean_power_w:.2f} W)")
        for b0, b1 in r.bursts_unix_s:
            s = r.window_unix_s[0]
            ax.axvspan(b0 - s, b1 - s, color=_c(r.mode), alpha=0.07)
    ax.set_xlabel("seconds since the window's start (shaded: bursts)")
    ax.set_ylabel("W (estimate)")
    ax.set_title(f"Power over time ({results[0].energy_source})")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_components(results: list[ModeFigures], path: Path) -> None:
    comps = _component_order(results)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [k + i * width for k in range(len(comps))]
        bars = ax.bar(xs, [r.energy_j.get(c, 0.0) for c in comps], width, color=_c(r.mode),
                      label=f"{r.mode} (total {r.total_j:.0f} J)")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([k + width * (len(results) - 1) / 2 for k in range(len(comps))], comps, rotation=30, ha="right")
    ax.set_ylabel("J (estimate)")
    ax.set_title("Energy per component and mode, over the same window")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_mode(results: list[ModeFigures], path: Path) -> None:
    modes = [r.mode for r in results]
    colours = [_c(m) for m in modes]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        (axes[0, 0], "J per 1,000 tweets (whole machine)", [r.j_per_1000_tweets or 0 for r in results]),
        (axes[0, 1], "idle power, W (no load)", [r.idle_power_w or 0 for r in results]),
        (axes[1, 1], "throughput, tweets/s during bursts", [r.tweets_per_s or 0 for r in results]),
    ]
    for ax, title, values in panels:
        bars = ax.bar(modes, values, color=colours)
        ax.bar_label(bars, fmt="%.2f")
        ax.set_title(title)
    ax = axes[1, 0]
    xs = range(len(modes))
    p50 = [(r.locust and r.locust.p50_ms) or 0 for r in results]
    p99 = [(r.locust and r.locust.p99_ms) or 0 for r in results]
    b1 = ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50", color="tab:gray")
    b2 = ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99", color="tab:orange")
    ax.bar_label(b1, fmt="%.0f")
    ax.bar_label(b2, fmt="%.0f")
    ax.set_xticks(list(xs), modes)
    ax.set_title("latency of POST /input, ms (Locust)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cold_starts(results: list[ModeFigures], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        lat = r.cold_starts.latency_ms
        if lat:
            ax1.hist(lat, bins=min(30, max(5, len(lat))), color=_c(r.mode), alpha=0.7,
                     label=f"{r.mode} ({len(lat)})")
    ax1.set_xlabel("request arrival → response, ms")
    ax1.set_ylabel("cold starts")
    ax1.set_title("Cold-start latency")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend()
    else:
        ax1.text(0.5, 0.5, "no cold starts", ha="center", transform=ax1.transAxes)
    functions = list(FUNCTIONS)
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        by = r.cold_starts.by_function
        bars = ax2.bar([k + i * width for k in range(len(functions))], [by.get(f, 0) for f in functions], width,
                       color=_c(r.mode), label=r.mode)
        ax2.bar_label(bars, fontsize=8)
    ax2.set_xticks([k + width * (len(results) - 1) / 2 for k in range(len(functions))], functions)
    ax2.set_title("Cold starts per function")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _functions(results: list[ModeFigures]) -> list[str]:
    """The functions (or services) of any mode: the manifests' order, then any other by name."""
    seen = {f for r in results for f in r.replicas.steps}
    return [f for f in FUNCTIONS if f in seen] + sorted(seen - set(FUNCTIONS))


def _component_order(results: list[ModeFigures]) -> list[str]:
    seen: list[str] = []
    for r in results:
        for c in r.energy_j:
            if c not in seen:
                seen.append(c)
    order = [*accounting.COMPONENTS, accounting.IDLE]
    return sorted(seen, key=lambda c: (order.index(c) if c in order else len(order), c))


def _fmt(v, digits=1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(results: list[ModeFigures], context: Context, unit: str = "processes") -> str:
    """``report.md``: what was run, the sources, the tables and the plots."""
    source = results[0].energy_source
    model = results[0].model
    lines = [f"# Energy experiment: {' vs '.join(r.mode for r in results)}", ""]
    lines += [context.where, ""]
    if context.machine:
        lines += ["**Machine:** " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in context.machine.items()), ""]
    if context.shape:
        lines += [f"**Load:** {context.shape}", ""]
    if source == "model" and model:
        lines += [
            ("**Energy source: linear power model (no readable RAPL).** "
             f"P = n_vcpu × ({model.idle_w} W + ({model.max_w} − {model.idle_w}) W × utilisation) × PUE "
             f"{model.pue}; coefficients: {accounting.CCF_SOURCE}. Utilisation is the machine's busy share from "
             "`/proc/stat`."),
        ]
    elif source == "rapl" and model:
        lines += [f"**Energy source: RAPL** (`/sys/class/powercap`, CPU package), × PUE {model.pue}."]
    else:
        lines += [f"**Energy source: {source}.**"]
    lines += [
        "",
        ("CPU seconds are **measured** (`/proc/<pid>/stat` utime + stime); joules and CO2e are **estimates**. "
         "Attribution as Kepler does: each interval's dynamic energy goes to components by their share of the "
         "machine's busy CPU time (`other` = kernel and untracked processes); idle energy is not attributed and is "
         f"its own row, `{accounting.IDLE}`."),
        f"CO2e = energy × {results[0].grid_g_per_kwh} gCO2e/kWh ({context.grid_source}).",
        "",
        "## Per mode",
        "",
        "| | " + " | ".join(r.mode for r in results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]
    rows = [
        ("window, s", lambda r: _fmt(r.duration_s, 0)),
        ("accepted / counted / archived", lambda r: " / ".join(
            _fmt(v) for v in (r.counts.accepted, r.counts.counted, r.counts.archived)) if r.counts else "–"),
        ("energy, J (estimate)", lambda r: _fmt(r.total_j)),
        ("pipeline energy, J (functions + runner + Kafka + Redis + FerretDB + Jaeger, dynamic)",
         lambda r: _fmt(r.pipeline_j)),
        ("mean power, W", lambda r: _fmt(r.mean_power_w, 2)),
        ("idle power, W (no load)", lambda r: _fmt(r.idle_power_w, 2)),
        ("J per 1,000 tweets (whole machine)", lambda r: _fmt(r.j_per_1000_tweets, 1)),
        ("J per 1,000 tweets (pipeline's own share)", lambda r: _fmt(r.pipeline_j_per_1000_tweets, 1)),
        ("CO2e, g", lambda r: _fmt(r.co2e_g, 4)),
        ("CPU seconds, machine busy (measured)", lambda r: _fmt(r.cpu_s.get("machine (busy)"), 1)),
        ("CPU seconds, functions (measured)", lambda r: _fmt(
            sum(r.cpu_s.get(f, 0.0) for f in FUNCTIONS), 2) if r.cpu_s else "–"),
        ("function process-seconds (sampled)", lambda r: _fmt(sum(r.function_process_seconds.values()), 0)),
        ("function replica-seconds (the autoscaler's replicas)",
         lambda r: _fmt(sum(r.replicas.seconds.values()), 0)),
        ("starts from zero replicas", lambda r: _fmt(sum(r.replicas.from_zero.values()))),
        ("cold starts", lambda r: _fmt(r.cold_starts.count)),
        ("cold-start latency p50 / max, ms", _cold),
        ("process exec → ready p50, ms", lambda r: _fmt(accounting.percentile(r.cold_starts.ready_ms, 0.5), 0)),
        ("throughput, tweets/s in bursts", lambda r: _fmt(r.tweets_per_s, 1)),
        ("latency p50 / p99, ms", lambda r: (f"{_fmt(r.locust.p50_ms, 0)} / {_fmt(r.locust.p99_ms, 0)}"
                                             if r.locust else "– / –")),
    ]
    for name, f in rows:
        lines.append(f"| {name} | " + " | ".join(f(r) for r in results) + " |")
    comps = _component_order(results)
    lines += ["", "## Per component", "",
              ("| component | " + " | ".join(f"{r.mode} CPU s | {r.mode} J | {r.mode} idle W" for r in results)
               + " |"),
              "| --- | " + " | ".join("---: | ---: | ---:" for _ in results) + " |"]
    for c in comps:
        cells = []
        for r in results:
            cells += [_fmt(r.cpu_s.get(c), 2) if c in r.cpu_s else "–", _fmt(r.energy_j.get(c), 1),
                      _fmt(r.idle_component_w.get(c), 3) if r.idle_component_w else "–"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += _per_function(results, unit)
    lines += ["", "Groups (J): " + "; ".join(
        f"{r.mode}: functions {_group(r, FUNCTIONS):.0f}, infrastructure "
        f"{_group(r, accounting.INFRASTRUCTURE):.0f} ({_share(r, accounting.INFRASTRUCTURE)}), "
        f"idle {r.energy_j.get(accounting.IDLE, 0):.0f} ({_share(r, (accounting.IDLE,))})"
        for r in results), ""]
    if len(results) == 2:
        a, b = results
        if a.total_j:
            diff = b.total_j - a.total_j
            lines += [(f"**{b.mode} − {a.mode}: {diff:+.1f} J ({diff / a.total_j * 100:+.1f} %) for the whole "
                       "machine over the same window length.**")]
        if a.pipeline_j:
            diff = b.pipeline_j - a.pipeline_j
            lines += [(f"**Pipeline only: {diff:+.1f} J ({diff / a.pipeline_j * 100:+.1f} %).** The pipeline figure "
                       "is the one to compare when other work shares the machine (it is `other` above)."), ""]
    if context.reading:
        lines += ["## Reading", "", context.reading, ""]
    lines += ["## Plots", ""]
    for name, title in PLOTS:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def _per_function(results: list[ModeFigures], unit: str) -> list[str]:
    """Each function's energy beside its replicas: replica-seconds, the most at once, its starts."""
    if unit == "processes":
        about = ("Replicas are each function's processes alive as the autoscaler ran them, a started one counting "
                 "before it is ready (the runner's scaling events); replica-seconds are their integral over the "
                 "window. Starts count every process started, from zero those that found none alive; cold starts "
                 "are requests that waited for a start.")
    else:
        about = (f"Replicas are each service's {unit} as Knative counts them, sampled; replica-seconds are their "
                 "integral over the window. Single starts are not known; from zero, as cold starts, counts rises "
                 f"from 0 {unit}.")
    lines = ["", "## Per function", "", about, "",
             ("| function | mode | J | CPU s | replica-seconds | J per replica-second | max replicas | starts "
              "| from zero | cold starts |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in _functions(results):
        for r in results:
            rep = r.replicas
            seconds, joules = rep.seconds.get(f), r.energy_j.get(f)
            per = joules / seconds if joules is not None and seconds else None
            cells = [_fmt(joules, 1), _fmt(r.cpu_s.get(f), 2) if f in r.cpu_s else "–", _fmt(seconds, 1),
                     _fmt(per, 3), _fmt(rep.max.get(f)),
                     _fmt(rep.starts.get(f)) if rep.starts is not None else "–", _fmt(rep.from_zero.get(f)),
                     _fmt(r.cold_starts.by_function.get(f))]
            lines.append(f"| {f} | {r.mode} | " + " | ".join(cells) + " |")
    return lines


def _cold(r: ModeFigures) -> str:
    lat = r.cold_starts.latency_ms
    if not lat:
        return "–"
    return f"{accounting.percentile(lat, 0.5):.0f} / {max(lat):.0f}"


def _group(r: ModeFigures, comps) -> float:
    return sum(r.energy_j.get(c, 0.0) for c in comps)


def _share(r: ModeFigures, comps) -> str:
    return f"{_group(r, comps) / r.total_j * 100:.0f} %" if r.total_j else "–"


PLOTS = (
    ("replicas.png", "Replicas per function over time, per mode"),
    ("processes.png", "Running function processes (sampled) over time, with the load"),
    ("power.png", "Power over time per mode"),
    ("energy_components.png", "Energy per component and per mode"),
    ("per_mode.png", "Energy per 1,000 tweets, idle power, latency and throughput"),
    ("cold_starts.png", "Cold starts and their latency"),
)


def write(results: list[ModeFigures], out: Path, context: Context, unit: str = "processes") -> Path:
    """Writes report.json, the PNGs and report.md into ``out``; returns report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    figures = {"context": asdict(context), "modes": [r.to_json() for r in results]}
    (out / "report.json").write_text(json.dumps(figures, indent=1))
    plot_replicas(results, out / "replicas.png", unit)
    plot_processes(results, out / "processes.png", unit)
    plot_power(results, out / "power.png")
    plot_components(results, out / "energy_components.png")
    plot_per_mode(results, out / "per_mode.png")
    plot_cold_starts(results, out / "cold_starts.png")
    (out / "report.md").write_text(markdown(results, context, unit))
    return out / "report.md"
