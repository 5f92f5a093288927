"""summary.md and summary.json of a bench/gpu_check.sh run, from the files its steps left in WORK; copies
the other six result files into OUT (8 files in all, no checkpoints).

    python bench/gpu_summary.py WORK OUT --data-dir DATA_DIR [--dry-run]

A training step that hit its time cap was stopped with SIGTERM and saved its state: its row says how many
epochs it ran, and the test accuracy of its best-validation checkpoint is measured here.
"""
import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402


def load(path):
    return common.load_json(path) if os.path.exists(path) else None


def run_summary(folder, data_dir, device):
    """What one training run reached, measured on the test set at its best-validation epoch."""
    result = load(os.path.join(folder, "result.json"))
    if result is None:
        return dict(status="missing")
    test_acc = result["test_acc_at_best_val"]
    if test_acc is None and os.path.exists(os.path.join(folder, "best.pt")):  # stopped at its cap
        model, _ = common.load_checkpoint(os.path.join(folder, "best.pt"), device)
        data = common.load_cifar10(data_dir, download=False)
        n = result["config"].get("test_subset") or None
        _, test_acc = common.evaluate(model, data["test_x"][:n].to(device), data["test_y"][:n].to(device),
                                      common.loss_fn(result["config"]["loss"]), device)
    return dict(status=result["status"], epochs_run=result["epochs_run"], epochs=result["epochs"],
                best_epoch=result["best_epoch"], test_acc_at_best_val=test_acc,
                convergence_epoch=result["convergence_epoch"], train_seconds=result["train_seconds"],
                img_per_s=common.read_metrics(folder)[-1]["img_per_s"] if result["epochs_run"] else None)


def surface_summary(work):
    info = load(os.path.join(work, "surface", "surface.json")) or {}
    pair = [os.path.join(work, name, "surface.npz") for name in ("surface_5x5", "torchrun_5x5")]
    equal, max_diff = None, None  # compared only when both surfaces are complete
    if all(os.path.exists(p) for p in pair) and all(
            (load(p.replace(".npz", ".json")) or {}).get("status") == "complete" for p in pair):
        with np.load(pair[0]) as a, np.load(pair[1]) as b:
            max_diff = float(np.nanmax(np.abs(a["loss"] - b["loss"])))
            equal = bool(np.allclose(a["loss"], b["loss"], rtol=0, atol=1e-6) and np.array_equal(a["acc"], b["acc"]))
    return dict(status=info.get("status", "missing"), points=info.get("points"), points_done=info.get("points_done"),
                seconds=info.get("seconds"), points_per_s=info.get("points_per_s"),
                torchrun_equals_single=equal, torchrun_max_loss_diff=max_diff)


def throughput(work):
    rows = []
    for name in sorted(os.listdir(work)):
        if name.startswith("tp_") and name.endswith(".json"):
            rows += common.load_json(os.path.join(work, name))
    return rows


def fmt(v, digits=4):
    if v is None:
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def markdown(summary):
    env = summary["env"].strip().splitlines()
    md = [f"# GPU check{' (dry run on the CPU)' if summary['dry_run'] else ''}", "",
          f"Device and versions: `{env[-1] if env else 'unknown'}`", "", "## Steps", "",
          "| step | outcome | seconds | command |", "|---|---|---|---|"]
    md += [f"| {s['name']} | {s['status']} | {s['seconds']} | `{s['command'][:150]}` |" for s in summary["steps"]]
    md += ["", f"CUDA checks: {summary['cuda_checks']}", "", "## Training throughput (batch 128)", "",
           "| arch | pipeline | img/s | TFLOP/s | % of bf16 peak |", "|---|---|---|---|---|"]
    md += [f"| {r['arch']} | {r['pipeline']} | {r['img_per_s']:.0f} | {fmt(r['tflop_per_s'])} | "
           f"{fmt(r['mfu_percent'])} |" for r in summary["throughput"]]
    md += ["", "## Runs", "", "| run | status | epochs run | test acc % at best val | convergence epoch | img/s | "
           "train seconds |", "|---|---|---|---|---|---|---|"]
    for name, r in summary["runs"].items():
        md.append(f"| {name} | {r['status']} | {r.get('epochs_run', '–')}/{r.get('epochs', '–')} | "
                  f"{common.percent(r.get('test_acc_at_best_val'))} | {fmt(r.get('convergence_epoch'))} | "
                  f"{fmt(r.get('img_per_s'), 5)} | {fmt(r.get('train_seconds'))} |")
    s = summary["surface"]
    md += ["", "## Landscape", "", f"Surface: {s['status']}, {fmt(s['points_done'])}/{fmt(s['points'])} points in "
           f"{fmt(s['seconds'])} s ({fmt(s['points_per_s'])} points/s). torchrun (1 process, NCCL on CUDA) equals "
           f"the single-process 5x5: {fmt(s['torchrun_equals_single'])} (max loss difference "
           f"{fmt(s['torchrun_max_loss_diff'])})."]
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work")
    p.add_argument("out")
    p.add_argument("--data-dir", required=True, help="for the test accuracy of runs stopped at their cap")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    work, out = args.work, args.out
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    with open(os.path.join(work, "steps.tsv")) as f:
        steps = [dict(zip(("name", "status", "seconds", "command"), line.rstrip("\n").split("\t"))) for line in f]
    checks = open(os.path.join(work, "cuda_checks.log")).read().strip().splitlines() \
        if os.path.exists(os.path.join(work, "cuda_checks.log")) else []
    env = os.path.join(work, "env.log")
    summary = dict(dry_run=args.dry_run, steps=steps, cuda_checks=checks[-1] if checks else "no output",
                   env=open(env).read() if os.path.exists(env) else "",
                   throughput=throughput(work), surface=surface_summary(work),
                   runs={name: run_summary(os.path.join(work, name), args.data_dir, device)
                         for name in ("default", "vgg_a", "vgg_a_bn")})
    common.write_json(os.path.join(out, "summary.json"), summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(summary))
    with open(os.path.join(out, "throughput.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in summary["throughput"])
    for src, dst in (("env.log", "env.txt"), ("cuda_checks.log", "cuda_checks.log"), ("steps.log", "steps.log"),
                     ("default/curves.png", "default_curves.png"), ("surface/surface_3d.png", "surface_3d.png")):
        if os.path.exists(os.path.join(work, src)):
            shutil.copy(os.path.join(work, src), os.path.join(out, dst))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
