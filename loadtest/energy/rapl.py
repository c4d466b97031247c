"""RAPL's energy counters from ``/sys/class/powercap``, which psutil does not read.

Everything here returns plain numbers read at one instant; ``sampler`` keeps the time series and
``accounting.rapl_delta_uj`` takes differences across the counter's wraparound.
"""

from __future__ import annotations

from pathlib import Path


def rapl_zones(powercap: Path = Path("/sys/class/powercap")) -> list[Path]:
    """The RAPL package zones whose counters this user can read (``intel-rapl:N``, not sub-zones)."""
    zones = []
    if not powercap.is_dir():
        return zones
    for zone in sorted(powercap.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue  # intel-rapl:0:0 (core, dram) is inside intel-rapl:0
        try:
            int((zone / "energy_uj").read_text())
            int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        zones.append(zone)
    return zones


def read_rapl(zones: list[Path]) -> dict[str, dict[str, int]]:
    """``{zone: {"energy_uj": …, "max_energy_range_uj": …}}`` for each readable zone."""
    out = {}
    for zone in zones:
        try:
            out[zone.name] = {
                "energy_uj": int((zone / "energy_uj").read_text()),
                "max_energy_range_uj": int((zone / "max_energy_range_uj").read_text()),
            }
        except (OSError, ValueError):
            continue
    return out
