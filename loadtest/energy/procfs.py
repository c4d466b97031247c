"""Reading ``/proc`` and ``/sys/class/powercap``: per-process CPU time, machine jiffies, RAPL.

Everything here returns plain numbers read at one instant; ``sampler`` keeps the time series.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """One process at one instant: CPU time is ``utime + stime`` in seconds."""

    pid: int
    comm: str
    ppid: int
    cpu_s: float
    # Jiffies after boot at which the process started: tells a pid reused by a new process.
    start_ticks: int


def parse_pid_stat(text: str) -> ProcStat:
    """Parse ``/proc/<pid>/stat``; ``comm`` may hold spaces and parentheses, so split at the last ')'."""
    pid_part, _, rest = text.partition(" (")
    comm, _, tail = rest.rpartition(") ")
    fields = tail.split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22 (proc(5)).
    utime, stime = int(fields[11]), int(fields[12])
    return ProcStat(
        pid=int(pid_part),
        comm=comm,
        ppid=int(fields[1]),
        cpu_s=(utime + stime) / CLK_TCK,
        start_ticks=int(fields[19]),
    )


def read_pid(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """The process ``pid`` now, or ``None`` once it is gone."""
    try:
        return parse_pid_stat((proc / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def all_pids(proc: Path = Path("/proc")) -> list[int]:
    return [int(p) for p in os.listdir(proc) if p.isdigit()]


@dataclass(frozen=True)
class MachineStat:
    """``/proc/stat``'s ``cpu`` line: busy and total jiffies over every CPU, and the CPU count."""

    busy: int
    total: int
    ncpu: int


def parse_proc_stat(text: str) -> MachineStat:
    """Busy = user + nice + system + irq + softirq + steal; idle and iowait are not busy.

    guest and guest_nice are already inside user and nice, so they are not added again.
    """
    total_line = None
    ncpu = 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            total_line = line
        elif line.startswith("cpu") and line[3:4].isdigit():
            ncpu += 1
    if total_line is None:
        raise ValueError("no 'cpu' line in /proc/stat")
    values = [int(v) for v in total_line.split()[1:]]
    values += [0] * (8 - len(values))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq + steal
    return MachineStat(busy=busy, total=busy + idle + iowait, ncpu=ncpu)


def read_machine(proc: Path = Path("/proc")) -> MachineStat:
    return parse_proc_stat((proc / "stat").read_text())


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
