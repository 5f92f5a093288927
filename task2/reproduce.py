"""The Python half of run_all.sh: run a list of jobs in one process, pick the best runs, write the report.

    python task2/reproduce.py jobs FILE            # run every job of FILE (one command line each), skipping finished ones
    python task2/reproduce.py best OUT KIND        # print the run folder of the best grid run of KIND (any|sgd|adam)
    python task2/reproduce.py report OUT [--update-readme --profile P]   # OUT/tables.md and OUT/figures/

Jobs run in-process (runpy), so a profile of many short runs pays for one Python start, not one per run.
A training job whose result.json is complete is skipped, an interrupted one resumed; a landscape job
whose surface.json is complete is skipped. Model selection uses validation accuracy only.
"""
import argparse
import os
import runpy
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

FINISHED = ("completed", "diverged")  # diverged is a result, not a failure


def option(args, name):
    return args[args.index(name) + 1] if name in args else None


def job_state(script, args):
    """'done', or the extra flags with which to (re)start the job."""
    out = option(args, "--out")
    if out is None:
        return []
    if script.endswith("train.py"):
        result = os.path.join(out, "result.json")
        if os.path.exists(result) and common.load_json(result)["status"] in FINISHED:
            return "done"
        return ["--resume"] if os.path.exists(os.path.join(out, "last.pt")) else ["--overwrite"]
    if script.endswith("landscape.py"):
        info = os.path.join(out, "surface.json")
        if os.path.exists(info) and common.load_json(info)["status"] == "complete":
            return "done"
        return ["--resume"] if os.path.exists(os.path.join(out, "surface.npz")) else ["--overwrite"]
    return []


def run_jobs(job_file, worker=""):
    with open(job_file) as f:
        jobs = [shlex.split(line) for line in f if line.strip() and not line.startswith("#")]
    failures = []
    for k, (script, *args) in enumerate(jobs, 1):
        name = option(args, "--out") or script
        state = job_state(script, args)
        if state == "done":
            print(f"{worker}[{k}/{len(jobs)}] {name}: already complete, skipped", flush=True)
            continue
        print(f"{worker}[{k}/{len(jobs)}] {name}: python {script} {' '.join(args + state)}", flush=True)
        started = time.time()
        sys.argv = [script, *args, *state]
        try:
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except Exception as e:  # one broken run must not stop the others
            code = 1
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
        if code == 130:  # Ctrl-C: the run saved its state; stop here instead of starting the next one
            print(f"{worker}interrupted; rerun the same command to resume", flush=True)
            raise SystemExit(130)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{worker}[{k}/{len(jobs)}] {name}: {status} in {time.time() - started:.0f} s", flush=True)
        if code != 0:
            failures.append(name)
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("jobs")
    j.add_argument("file")
    j.add_argument("--worker", default="", help="a prefix for progress lines (e.g. the GPU)")
    j.add_argument("--failures", help="append the failed jobs' names to this file")
    b = sub.add_parser("best")
    b.add_argument("out")
    b.add_argument("kind", choices=["any", "sgd", "adam"])
    b.add_argument("--flags", action="store_true", help="print its --arch/--act/--opt flags instead of its folder")
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("--profile", default="")
    r.add_argument("--update-readme", action="store_true", help="replace README's results section with tables.md")
    args = p.parse_args()
    if args.command == "jobs":
        failures = run_jobs(args.file, args.worker)
        if args.failures and failures:
            with open(args.failures, "a") as f:
                f.writelines(name + "\n" for name in failures)
        return 1 if failures else 0
    if args.command == "best":
        best = common.best_grid_run(args.out, None if args.kind == "any" else args.kind)
        if best is None:
            sys.exit(f"error: no finished grid run of kind {args.kind} in {args.out}")
        cfg = common.read_result(best)["config"]
        print(f"--arch {cfg['arch']} --act {cfg['act']} --opt {cfg['opt']}" if args.flags else best)
        return 0
    tables = common.write_report(args.out, args.profile)
    print(f"wrote {os.path.join(args.out, 'tables.md')} and {os.path.join(args.out, 'figures')}/")
    if args.update_readme:
        common.update_readme(os.path.join(ROOT, "README.md"), tables, args.out)
        print("README.md results section updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
