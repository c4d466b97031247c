"""Command line: ``python -m loadtest.energy run|report|k8s`` (``make energy`` calls ``run``).

``run`` runs both modes on this machine and writes the report; ``report`` rewrites it from the
raw data left in ``target/energy/<mode>/``; ``k8s`` is the same experiment on Kubernetes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import accounting, experiment, report
from .tools import ToolsError


def add_energy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("energy model and CO2e")
    g.add_argument("--idle-w", type=float, default=accounting.IDLE_W_PER_VCPU,
                   help="watts per vCPU at 0 %% utilisation (default: Cloud Carbon Footprint, GCP median)")
    g.add_argument("--max-w", type=float, default=accounting.MAX_W_PER_VCPU,
                   help="watts per vCPU at 100 %% utilisation (default: Cloud Carbon Footprint, GCP median)")
    g.add_argument("--pue", type=float, default=accounting.PUE,
                   help="power usage effectiveness (default: GCP's, per CCF)")
    g.add_argument("--grid-g-per-kwh", type=float, default=accounting.GRID_G_PER_KWH,
                   help="grid intensity, gCO2e/kWh (default: world average 2023, Ember)")
    g.add_argument("--grid-source", default=accounting.GRID_SOURCE, help="where --grid-g-per-kwh comes from (printed)")


def add_shape_options(p: argparse.ArgumentParser, defaults) -> None:
    g = p.add_argument_group("load shape")
    g.add_argument("--users", type=int, default=defaults.users, help="Locust users during a burst")
    g.add_argument("--user-rps", type=float, default=defaults.user_rps, help="requests/s per user (0 = no wait)")
    g.add_argument("--burst-seconds", type=int, default=defaults.burst_seconds, help="seconds per burst")
    g.add_argument("--gap-seconds", type=int, default=defaults.gap_seconds,
                   help="idle seconds between bursts; keep it longer than the scale-to-zero window")
    g.add_argument("--bursts", "--repetitions", dest="bursts", type=int, default=defaults.bursts,
                   help="number of bursts (repetitions of burst + gap)")
    g.add_argument("--pre-idle-seconds", type=float, default=defaults.pre_idle_seconds,
                   help="measured idle time before the first burst")
    g.add_argument("--post-idle-seconds", type=float, default=defaults.post_idle_seconds,
                   help="measured idle time after the last burst")


def model_of(args) -> accounting.PowerModel:
    return accounting.PowerModel(idle_w=args.idle_w, max_w=args.max_w, pue=args.pue)


def shape_text(s) -> str:
    return (f"{s.bursts} bursts of {s.burst_seconds:.0f} s, {s.users} Locust users at {s.user_rps} req/s each "
            f"(≈ {s.users * s.user_rps:.0f} tweets/s), {s.gap_seconds:.0f} s gaps, "
            f"{s.pre_idle_seconds:.0f} s idle before and {s.post_idle_seconds:.0f} s after; "
            f"scale-to-zero idle period {s.idle_period_ms / 1000:.0f} s; sampling every {s.interval} s.")


def local_report(out: Path, modes, args, settings) -> Path:
    results = [experiment.analyse_run(out / m, model_of(args), args.grid_g_per_kwh) for m in modes]
    context = report.Context(
        where="One machine, the local runner playing Knative (`make energy`).",
        machine=experiment.machine_description(),
        shape=shape_text(settings),
        grid_source=args.grid_source,
        model_source=accounting.CCF_SOURCE,
    )
    return report.write(results, out, context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.energy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = experiment.Settings()

    run = sub.add_parser("run", help="run both modes on this machine, then write the report")
    add_shape_options(run, d)
    run.add_argument("--idle-period-ms", type=int, default=d.idle_period_ms, help="scale-to-zero idle period")
    run.add_argument("--modes", default=",".join(d.modes), help="comma-separated, in order")
    run.add_argument("--interval", type=float, default=d.interval, help="sampling interval, s")
    run.add_argument("--runner", type=Path, default=d.runner, help="the runner binary (`runner up`)")
    run.add_argument("--tools", type=Path, default=d.tools,
                     help="the tools binary (`tools reset`, `tools counts`, `tools load`)")
    run.add_argument("--locust", type=Path, default=d.locust)
    run.add_argument("--out", type=Path, default=d.out)
    run.add_argument("--run-id", default=d.run_id)
    run.add_argument("--base-port", type=int, default=d.base_port)
    add_energy_options(run)

    rep = sub.add_parser("report", help="rewrite the report from target/energy/<mode>/")
    rep.add_argument("--out", type=Path, default=d.out)
    rep.add_argument("--modes", default=",".join(d.modes))
    add_energy_options(rep)

    from . import k8s

    k8s.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "run":
        settings = experiment.Settings(
            runner=args.runner, tools=args.tools, locust=args.locust, out=args.out, modes=tuple(args.modes.split(",")),
            users=args.users, user_rps=args.user_rps, burst_seconds=args.burst_seconds,
            gap_seconds=args.gap_seconds, bursts=args.bursts, idle_period_ms=args.idle_period_ms,
            pre_idle_seconds=args.pre_idle_seconds, post_idle_seconds=args.post_idle_seconds,
            interval=args.interval, run_id=args.run_id, base_port=args.base_port,
        )
        try:
            experiment.run(settings)
        except (experiment.ExperimentError, ToolsError) as e:
            print(f"energy: {e}", file=sys.stderr)
            return 2
        path = local_report(args.out, settings.modes, args, settings)
        print(f"Report: {path}")
        return 0 if all_delivered(args.out, settings.modes) else 1
    if args.command == "report":
        modes = tuple(args.modes.split(","))
        settings = experiment.Run.read(args.out / modes[0] / "run.json").settings
        print(f"Report: {local_report(args.out, modes, args, settings)}")
        return 0
    return k8s.main(args)


def all_delivered(out: Path, modes) -> bool:
    ok = True
    for m in modes:
        c = experiment.Run.read(out / m / "run.json").counts
        if not c.delivered:
            print(f"energy: {m}: accepted {c.accepted}, counted {c.counted}, archived {c.archived}", file=sys.stderr)
            ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
