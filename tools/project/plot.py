"""The projection's two plots from target/project/project.json (``make project``).

(a) ΔE % over mean gap × tenants, with the zero contour (and those at P_idle/P_max 0.2 and 0.6);
(b) one simulated day of nodes and watts, always-on and scale-to-zero.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def grid_plot(report: dict, path: Path) -> None:
    cells = report["grid"]
    gaps = sorted({c["gap_s"] for c in cells})
    tenants = sorted({c["tenants"] for c in cells})
    ratios = report["grid_idle_ratios"]

    def surface(index: int) -> np.ndarray:
        z = np.full((len(tenants), len(gaps)), np.nan)
        for c in cells:
            z[tenants.index(c["tenants"]), gaps.index(c["gap_s"])] = c["delta_e_percent"][index]
        return z

    x, y = np.meshgrid(np.array(gaps) / 60, tenants)
    main = surface(0)
    limit = max(1.0, float(np.nanmax(np.abs(main))))
    fig, ax = plt.subplots(figsize=(8, 5))
    mesh = ax.pcolormesh(x, y, main, cmap="RdBu_r", vmin=-limit, vmax=limit, shading="nearest")
    fig.colorbar(mesh, ax=ax, label="ΔE % (scale-to-zero vs always-on; < 0 saves)")
    ax.contour(x, y, main, levels=[0], colors="black", linewidths=2)
    for ratio, style in ((0.2, "dotted"), (0.6, "dashed")):
        if ratio in ratios:
            ax.contour(x, y, surface(1 + ratios.index(ratio)), levels=[0], colors="black", linestyles=style)
    for c in cells:
        ax.annotate(f"{c['delta_e_percent'][0]:+.0f}", (c["gap_s"] / 60, c["tenants"]), ha="center",
                    va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("mean gap between a tenant's bursts, min")
    ax.set_ylabel("tenants")
    curve = report["scenario"]["curve"]
    ax.set_title("ΔE % — zero contour solid (main curve), P_idle/P_max 0.2 dotted, 0.6 dashed\n"
                 f"{report['scenario']['strategy']}, {curve['kind']} power, "
                 f"{report['scenario']['sweep_hours']:g} h per cell", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def day_plot(report: dict, path: Path) -> None:
    main = report["main"]
    fig, (nodes, watts) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for mode, label in (("always_on", "always-on"), ("scale_to_zero", "scale-to-zero")):
        minutes = np.array(main[mode]["minutes"])
        hours = np.arange(len(minutes)) / 60
        nodes.plot(hours, minutes[:, 0], label=label, drawstyle="steps-post")
        watts.plot(hours, minutes[:, 1], label=label, linewidth=0.8)
    s = report["summary"]
    scenario = report["scenario"]
    nodes.set_ylabel("nodes")
    nodes.legend(loc="upper right")
    nodes.set_title(f"{scenario['tenants']} tenants, one simulated day: ΔE {s['delta_e_percent']:+.1f} %, "
                    f"node-hours {s['node_hours'][0]:.0f} → {s['node_hours'][1]:.0f}", fontsize=10)
    watts.set_ylabel("W (× PUE), per-minute mean")
    watts.set_xlabel("hour")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("target/project/project.json")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent
    report = json.loads(source.read_text())
    grid_plot(report, out / "projection-grid.png")
    day_plot(report, out / "projection-day.png")
    print(f"Wrote {out / 'projection-grid.png'} and {out / 'projection-day.png'}")


if __name__ == "__main__":
    main()
