"""Every table and figure of the report: the experiment plan (the one place that names every run), the job
runner behind run_all.sh, and the report.

    python task2/reproduce.py plan PHASE --profile P --out OUT [--data-dir D --seeds N]   # one line per job
    python task2/reproduce.py jobs FILE            # run every job of FILE, skipping finished ones
    python task2/reproduce.py report OUT [--update-readme --profile P]   # OUT/tables.md and OUT/figures/

Phases: train (hyper-parameter search, 24-run grid, Task 2 models), analysis (more seeds and other losses
for the best grid configuration, BN analysis) and landscapes (surfaces, interpolation, filters); later
phases read the earlier phases' results. Seed k > 0 of a run lives in <run name>_s<k>. Jobs run
in-process (runpy), so many short runs pay for one Python start. A training job whose result.json is
finished with the planned config is skipped, an interrupted one resumed, one made with other settings or with
an unreadable result.json refused (listed as failed); a landscape job whose surface.json is complete is
skipped. Model selection uses validation accuracy only.

tables.md: six tables (hyper-parameter search, grid, loss functions, Task 2, BN analysis, sharpness), every
row linking its run folder, cells over several seeds as mean ± sample std (n); figures/ (seed 0): curves of
every run, filters, surfaces, interpolation, BN figures.
"""
import argparse
import collections
import glob
import itertools
import os
import re
import runpy
import shlex
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402

import bn_analysis  # noqa: E402
import common  # noqa: E402

# -- the experiment plan -----------------------------------------------------------------------

PHASES = ["train", "analysis", "landscapes"]
SMOKE = "--device cpu --width 0.125 --subset 200 --val 100 --test-subset 100 --batch-size 32"
PROFILES = {  # flags of Task 1, Task 2, BN-analysis and landscape jobs; surface grid, interpolation range;
    # best_seeds: seeds of the best grid configuration in all (the extra ones run in phase 2); recipes: the
    # grids and Task 2 runs to train, "ours" (ResVGG16, as the report's text describes) and/or "report" (what
    # the report's code ran: plain VGG16 for the grid, the author's Task 2 variant); epochs left out of t1 and
    # t2 come from the recipe (60 ours, 100 report)
    "full": dict(t1="", t2="", bn="--epochs 20 --probe-direction update --sharpness-every 100",
                 bn_paper="--paper --sharpness-every 100",
                 landscape="--n-items 10000 --hessian-iters 20", visualize="", grid="-1:1:51", interp="-0.5:1.5:41",
                 best_seeds=1, recipes=["ours", "report"], trajectory_every=702,
                 spectrum="--n-items 2000 --repeats 3"),
    "quick": dict(t1="--epochs 10", t2="--epochs 10", bn="--epochs 5 --probe-every 25 --probe-direction update "
                  "--sharpness-every 50", bn_paper="--paper --steps 1755 --probe-every 5 --sharpness-every 50",
                  landscape="--n-items 2000 --hessian-iters 20", visualize="", grid="-1:1:21", interp="-0.5:1.5:21",
                  best_seeds=1, recipes=["ours"], trajectory_every=351, spectrum="--n-items 1000 --repeats 3"),
    "cpu": dict(t1="--device cpu --width 0.25 --subset 10000 --epochs 4",
                t2="--device cpu --width 0.5 --subset 10000 --epochs 5",
                bn="--device cpu --width 0.5 --subset 10000 --epochs 5 --probe-every 25 --probe-direction update "
                   "--sharpness-every 100",
                bn_paper="--paper --device cpu --width 0.25 --seeds 2 --sharpness-every 500",
                landscape="--device cpu --n-items 1000 --hessian-iters 20", visualize="--device cpu",
                grid="-1:1:11", interp="-0.5:1.5:21", best_seeds=3, recipes=["ours"], trajectory_every=10,
                spectrum="--n-items 256 --trace-probes 8 --slq-probes 2 --slq-steps 20 --hessian-iters 10 --repeats 2"),
    "smoke": dict(t1=f"{SMOKE} --epochs 1", t2=f"{SMOKE} --epochs 1",
                  bn=f"{SMOKE} --epochs 1 --probe-every 2 --probe-direction update --sharpness-every 3 "
                     "--sharpness-images 32 --sharpness-iters 3",
                  bn_paper=f"--paper {SMOKE} --steps 6 --probe-every 2 --lrs 0.1",
                  landscape="--device cpu --n-items 100 --hessian-iters 3", visualize="--device cpu",
                  grid="-1:1:5", interp="-0.5:1.5:5", best_seeds=1, recipes=["ours", "report"], trajectory_every=2,
                  spectrum="--n-items 16 --trace-probes 2 --slq-probes 2 --slq-steps 4 --repeats 2"),
}
FULL_SCALE_JOBS = [  # the cpu-full profile, in the order it runs: (run name, script, flags, the report's row, its %)
    ("t1_light_leaky_relu_sgd_fast", "task1/train.py", "--arch light --act leaky_relu --opt sgd --recipe fast",
     "best grid config (VGG16-standard, leaky ReLU, SGD; best val acc)", 90.82),
    ("t2_vgg_a_adam", "task2/train.py", "--model vgg_a --opt adam", "VGGA (no BN), Adam 1e-3", 80.77),
    ("t2_vgg_a_bn_adam", "task2/train.py", "--model vgg_a_bn --opt adam", "VGGA (BN), Adam 1e-3", 83.29),
    ("t2_vgg_a_sgd", "task2/train.py", "--model vgg_a --opt sgd", "no such row", None),
    ("t2_vgg_a_bn_sgd", "task2/train.py", "--model vgg_a_bn --opt sgd", "VGGA (BN), SGD 0.01", 81.50),
    ("t2_vgg_a_res_bn_adam", "task2/train.py", "--model vgg_a_res_bn --opt adam", "VGGA (BN + residual), Adam 1e-3",
     86.0),
]
PROFILES["cpu-full"] = dict(jobs=FULL_SCALE_JOBS)  # full width, all 45,000 training images, --val 5000
GRID_ARCHS, GRID_ACTS, GRID_LOSSES, GRID_OPTS = ["standard", "light"], ["relu", "leaky_relu", "tanh"], ["ce", "nll"], \
    ["adam", "sgd"]
GRIDS = {  # recipe: (run-name prefix, flags, what it is)
    "ours": ("grid", [], "ResVGG16 (residual blocks with BN), our recipe: the network the report's text describes"),
    "report": ("grid_vgg16_report", ["--model", "vgg16", "--recipe", "report"],
               "the author's plain VGG16 (no BN, no shortcuts), the author's recipe: what the report's code ran"),
}
T2_MODELS, T2_OPTS = ["vgg_a", "vgg_a_bn", "vgg_a_res_bn"], ["adam", "sgd"]
FINISHED = ("completed", "diverged")  # diverged is a result, not a failure


def grid_name(arch, act, loss, opt, recipe="ours"):
    return f"{GRIDS[recipe][0]}_{arch}_{act}_{loss}_{opt}"


def grid(recipe="ours"):
    """The 24 grid configurations in the report's order: (number, arch, act, loss, opt, run name)."""
    configs = itertools.product(GRID_ARCHS, GRID_ACTS, GRID_LOSSES, GRID_OPTS)
    return [(k, *c, grid_name(*c, recipe)) for k, c in enumerate(configs, 1)]


HP_RUNS = [  # report 4.1: (label, run name, flags); two rows are grid runs with the same config (no flags)
    ("SGD lr 0.1, momentum 0.9, wd 5e-4", "hp_sgd_lr0.1_wd5e-4", "--arch standard --opt sgd --lr 0.1 --wd 5e-4"),
    ("SGD lr 0.05, momentum 0.9, wd 5e-4", "hp_sgd_lr0.05_wd5e-4", "--arch standard --opt sgd --lr 0.05 --wd 5e-4"),
    ("SGD lr 0.01, momentum 0.9, wd 5e-4", grid_name("standard", "relu", "ce", "sgd"), None),
    ("SGD lr 0.01, momentum 0.9, wd 1e-4", "hp_sgd_lr0.01_wd1e-4", "--arch standard --opt sgd --lr 0.01 --wd 1e-4"),
    ("Adam lr 1e-3", "hp_adam_lr1e-3", "--arch standard --opt adam --lr 1e-3"),
    ("Adam lr 1e-4", grid_name("standard", "relu", "ce", "adam"), None),
]
LOSS_RUNS = [  # report beyond 4.3, on the best grid configuration: (label, run name, flags)
    ("mse (softmax vs one-hot)", "loss_mse", "--loss mse"),
    ("ce + label smoothing 0.1", "loss_ce_ls0.1", "--loss ce --label-smoothing 0.1"),
]
SHARPNESS_ROWS = [("best SGD model", "best_sgd"), ("best Adam model", "best_adam"), ("VGG-A (Adam)", "vgg_a"),
                  ("VGG-A + BN (Adam)", "vgg_a_bn")]
INTERP, VISUALIZE, BN_TRAIN_MODE, TRAJECTORY = "interp_sgd_adam", "visualize", "vgg_a_bn_bntrain", "trajectory"
SPECTRA = [("spectrum_vgg_a", "vgg_a", "eval"), ("spectrum_vgg_a_bn_eval", "vgg_a_bn", "eval"),
           ("spectrum_vgg_a_bn_train", "vgg_a_bn", "train")]  # (landscape folder, Task 2 Adam model, BN mode)
SPECTRUM_FLAGS = ["--hessian", "--hessian-trace", "--hessian-density", "--per-block"]
BN_DIR, BN_PAPER_DIR = "bn_analysis", "bn_analysis_paper"  # the course's Adam rates; Santurkar et al.'s SGD


def t2_name(model, opt, recipe="ours"):
    return f"t2_{model}_{opt}" + ("_report" if recipe == "report" else "")


def run_dir(out, name):
    return os.path.join(out, "runs", name)


def seed_name(name, seed):
    """Seed 0 keeps the plain run name, so a one-seed plan and its folders never change."""
    return name if seed == 0 else f"{name}_s{seed}"


def read_result(folder):
    """result.json of a run folder, or None when it has none yet or it is unreadable (said on stderr, so the
    jobs that needed the run are seen to be skipped because of it)."""
    path = os.path.join(folder, "result.json")
    if not os.path.exists(path):
        return None
    try:
        result = common.load_json(path)
        return result if isinstance(result, dict) and "status" in result else None
    except ValueError as e:
        print(f"warning: {path} is unreadable ({e}); that run counts as missing and what needs it is skipped",
              file=sys.stderr)
        return None


def seed_results(out, name):
    """The result.json of every seed of a run that has one, seed 0 first."""
    folders = glob.glob(os.path.join(glob.escape(run_dir(out, name)) + "_s*"))
    seeds = sorted(int(m.group(1)) for m in (re.fullmatch(r".*_s(\d+)", f) for f in folders) if m)
    return [r for r in (read_result(run_dir(out, seed_name(name, k))) for k in [0] + seeds) if r]


def mean_val_acc(results):
    accs = [r["best_val_acc"] for r in results if r["best_val_acc"] is not None]
    return sum(accs) / len(accs) if accs else None


def best_grid_run(out, opt=None):
    """The seed-0 folder of the grid configuration with the highest mean validation accuracy over its seeds
    (never the test set), optionally only `opt` runs; ties go to the earlier row (ce before its nll twin)."""
    best, best_acc = None, -1.0
    for *_, run_opt, name in grid():
        acc = mean_val_acc(seed_results(out, name))
        if (opt is None or run_opt == opt) and read_result(run_dir(out, name)) and acc is not None and acc > best_acc:
            best, best_acc = run_dir(out, name), acc
    return best


def plan(phase, profile, out, data_dir, seeds=1):
    """The job lines of one phase (a script and its flags, --out last); later phases read earlier results.
    Every Task 1 and Task 2 job runs with seeds 0 .. seeds-1, one run folder per seed."""
    p = {k: shlex.split(v) if isinstance(v, str) else v for k, v in PROFILES[profile].items()}
    p.update(data=["--data-dir", data_dir], seeds=range(seeds))
    if "jobs" in p:  # a list of runs and nothing else: every job is in phase 1
        return [job for name, script, flags, *_ in p["jobs"] if phase == "train"
                for job in training_jobs(script, [*p["data"], *shlex.split(flags)], out, name, p["seeds"])]
    return {"train": train_jobs, "analysis": analysis_jobs, "landscapes": landscape_jobs}[phase](p, out)


def training_jobs(script, flags, out, name, seeds):
    """One job per seed; seed 0 runs with the script's default --seed."""
    return [[script, *flags, *(["--seed", str(k)] if k else []), "--out", run_dir(out, seed_name(name, k))]
            for k in seeds]


def train_jobs(p, out):
    """Phase 1: the hyper-parameter search, the 24-configuration grid and the six Task 2 runs, once per recipe
    of the profile."""
    t1, t2 = [*p["data"], *p["t1"]], [*p["data"], *p["t2"]]
    jobs = [job for _, name, flags in HP_RUNS if flags
            for job in training_jobs("task1/train.py", t1 + shlex.split(flags), out, name, p["seeds"])]
    for recipe in p["recipes"]:
        for _, arch, act, loss, opt, name in grid(recipe):
            flags = [*GRIDS[recipe][1], "--arch", arch, "--act", act, "--loss", loss, "--opt", opt]
            jobs += training_jobs("task1/train.py", t1 + flags, out, name, p["seeds"])
    for recipe, model, opt in itertools.product(p["recipes"], T2_MODELS, T2_OPTS):
        flags = ["--model", model, "--opt", opt, "--recipe", recipe]
        jobs += training_jobs("task2/train.py", t2 + flags, out, t2_name(model, opt, recipe), p["seeds"])
    return jobs


def analysis_jobs(p, out):
    """Phase 2: more seeds of the best grid configuration (by mean validation accuracy) up to the profile's
    best_seeds, that configuration with other losses, and the BN analysis."""
    best = best_grid_run(out)
    bn = [["task2/bn_analysis.py", *p["data"], *p[flags], "--out", os.path.join(out, folder)]
          for flags, folder in (("bn", BN_DIR), ("bn_paper", BN_PAPER_DIR))]
    if best is None:
        print("plan: no finished grid run, so no extra seeds and no loss-function runs", file=sys.stderr)
        return bn
    cfg = read_result(best)["config"]
    t1 = [*p["data"], *p["t1"], "--arch", cfg["arch"], "--act", cfg["act"], "--opt", cfg["opt"]]
    extra_seeds = range(len(p["seeds"]), p["best_seeds"])
    jobs = training_jobs("task1/train.py", t1 + ["--loss", cfg["loss"]], out, os.path.basename(best), extra_seeds)
    for _, name, flags in LOSS_RUNS:
        jobs += training_jobs("task1/train.py", t1 + shlex.split(flags), out, name, p["seeds"])
    return jobs + trajectory_jobs(p, out) + bn


def trajectory_jobs(p, out):
    """The best SGD and the best Adam grid configuration trained once more, with the same seed, keeping their
    path (--save-trajectory), so that phase 3 draws it on its own plane; the grid runs keep no snapshots."""
    jobs = []
    for opt in ("sgd", "adam"):
        best = best_grid_run(out, opt)
        if best:
            cfg = read_result(best)["config"]
            flags = [*p["data"], *p["t1"], "--arch", cfg["arch"], "--act", cfg["act"], "--loss", cfg["loss"],
                     "--opt", opt, "--save-trajectory", str(p["trajectory_every"])]
            jobs += training_jobs("task1/train.py", flags, out, f"{TRAJECTORY}_{opt}", [0])
    return jobs


def landscape_jobs(p, out):
    """Phase 3: surfaces with the Hessian of the best SGD / Adam grid models and of VGG-A with and without
    BN, the interpolation from the best SGD model to its Adam twin, the best model's filters (seed 0)."""
    def surface(ckpt, name, *flags):
        return ["task2/landscape.py", *p["data"], *p["landscape"], "--ckpt", ckpt, *flags,
                "--out", os.path.join(out, "landscapes", name)]
    square = ["--x", p["grid"][0], "--y", p["grid"][0], "--hessian"]
    best = {kind: best_grid_run(out, opt) for kind, opt in (("any", None), ("sgd", "sgd"), ("adam", "adam"))}
    jobs = [surface(f"{best[kind]}/best.pt", f"best_{kind}", *square) for kind in ("sgd", "adam") if best[kind]]
    twin = best["sgd"] and best["sgd"][:-len("_sgd")] + "_adam"
    if twin and os.path.exists(f"{twin}/best.pt"):
        jobs.append(surface(f"{best['sgd']}/best.pt", INTERP, "--interp", f"{twin}/best.pt", "--x", p["interp"][0]))
    for model in ("vgg_a", "vgg_a_bn"):
        ckpt = os.path.join(run_dir(out, t2_name(model, "adam")), "best.pt")
        if os.path.exists(ckpt):
            jobs.append(surface(ckpt, model, *square))
    ckpt = os.path.join(run_dir(out, t2_name("vgg_a_bn", "adam")), "best.pt")
    if os.path.exists(ckpt):  # BN statistics re-estimated at every point (VGG-A has no BN: one surface serves)
        jobs.append(surface(ckpt, BN_TRAIN_MODE, "--x", p["grid"][0], "--y", p["grid"][0], "--bn-mode", "train"))
    for opt in ("sgd", "adam"):  # the paths kept in phase 2, on their own planes
        if read_result(run_dir(out, f"{TRAJECTORY}_{opt}")):
            jobs.append(surface(os.path.join(run_dir(out, f"{TRAJECTORY}_{opt}"), "last.pt"), f"{TRAJECTORY}_{opt}",
                                "--trajectory", run_dir(out, f"{TRAJECTORY}_{opt}"), "--x", p["grid"][0]))
    for name, model, mode in SPECTRA:  # VGG-A has no BN: one spectrum serves both modes
        ckpt = os.path.join(run_dir(out, t2_name(model, "adam")), "best.pt")
        if os.path.exists(ckpt):
            jobs.append(surface(ckpt, name, "--x", "0:0:1", "--bn-mode", mode, *SPECTRUM_FLAGS, *p["spectrum"]))
    if best["any"]:
        jobs.append(["task1/visualize.py", *p["data"], *p["visualize"], "--ckpt", f"{best['any']}/best.pt",
                     "--n", "16", "--out", os.path.join(out, VISUALIZE)])
    missing = [name for name, needed in (("best SGD / Adam surfaces", best["sgd"] and best["adam"]),
                                         ("filters", best["any"])) if not needed]
    if missing:
        print(f"plan: no finished grid run for {', '.join(missing)}", file=sys.stderr)
    return jobs


# -- the job runner ----------------------------------------------------------------------------

def option(args, name):
    return args[args.index(name) + 1] if name in args else None


def job_state(script, args):
    """'done', a reason the job cannot run (a str starting with 'refused'), or the extra flags with which
    to (re)start it."""
    out = option(args, "--out")
    if out is None:
        return []
    if script.endswith("train.py"):
        return train_job_state(script, args, out)
    if script.endswith("landscape.py"):
        return landscape_job_state(args, out)
    return []


def landscape_job_state(args, out):
    """A complete surface of the planned checkpoints is done; one of other checkpoints (the best run changed as
    seeds were added) is computed again, an unfinished one resumed."""
    info = os.path.join(out, "surface.json")
    if not os.path.exists(info):
        return ["--overwrite"]
    saved = common.load_json(info)
    planned = {k: option(args, f"--{k}") for k in ("ckpt", "interp")}
    planned.update({f"{k}_sha256": v and common.file_digest(v) for k, v in list(planned.items())})
    if any(saved["settings"].get(k) != v for k, v in planned.items()):
        print(f"{out} was drawn for {saved['settings']['ckpt']} as it was then; the plan now names "
              f"{planned['ckpt']} as it is now: computed again", flush=True)
        return ["--overwrite"]
    figures = [os.path.join(out, f) for f in saved.get("figures", [])]
    if saved["status"] == "complete" and figures and all(os.path.exists(f) for f in figures):
        return "done"
    return ["--resume"] if os.path.exists(os.path.join(out, "surface.npz")) else ["--overwrite"]


def train_job_state(script, args, out):
    """A finished run is done only if its saved config is the planned one; an unreadable result.json or
    another config refuses the job (nothing of it is overwritten)."""
    result = read_result(out)
    if os.path.exists(os.path.join(out, "result.json")) and result is None:
        return f"refused: {out}/result.json is unreadable; delete the folder to train the run again"
    config = os.path.join(out, "config.json")
    if os.path.exists(config):
        task2 = script.startswith("task2")
        parser = common.train_parser(script, common.TASK2_DEFAULTS if task2 else None,
                                     common.TASK2_LR if task2 else None)
        planned = common.config_from_args(parser.parse_args(args), common.TASK2_LR if task2 else None)
        differ = common.config_differences(common.load_json(config), planned)
        if differ:
            return (f"refused: {out} holds a run made with other settings ({', '.join(differ[:4])}"
                    f"{', ...' if len(differ) > 4 else ''}); use another --out or delete that folder")
    if result and result["status"] in FINISHED:
        return "done"
    return ["--resume"] if os.path.exists(os.path.join(out, "last.pt")) else ["--overwrite"]


def run_job(script, args):
    """Run one job's script in this process; returns its exit code (a crash is code 1, not the end)."""
    sys.argv = [script, *args]
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        return 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # one broken run must not stop the others
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1


def run_jobs(job_file, worker=""):
    """Every job of the file in order; returns the names (--out) of those that failed."""
    with open(job_file) as f:
        jobs = [shlex.split(line) for line in f if line.strip() and not line.startswith("#")]
    failures = []
    for k, (script, *args) in enumerate(jobs, 1):
        name, state = option(args, "--out") or script, job_state(script, args)
        if state == "done":
            print(f"{worker}[{k}/{len(jobs)}] {name}: already complete, skipped", flush=True)
            continue
        if isinstance(state, str):
            print(f"{worker}[{k}/{len(jobs)}] {name}: FAILED, {state}", flush=True)
            failures.append(f"{name} ({state})")
            continue
        print(f"{worker}[{k}/{len(jobs)}] {name}: python {script} {shlex.join(args + state)}", flush=True)
        started = time.time()
        code = run_job(script, args + state)
        if code == 130:  # Ctrl-C: the run saved its state; stop here instead of starting the next one
            print(f"{worker}interrupted; rerun the same command to resume", flush=True)
            raise SystemExit(130)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{worker}[{k}/{len(jobs)}] {name}: {status} in {time.time() - started:.0f} s", flush=True)
        if code != 0:
            failures.append(name)
    return failures


# -- the report --------------------------------------------------------------------------------

def row(cells, bold=False):
    return "| " + " | ".join(f"**{c}**" if bold and c != "" else str(c) for c in cells) + " |"


def table_head(*columns):
    return [row(columns), "|" + "---|" * len(columns)]


def link(out, folder):
    return f"[{os.path.basename(folder)}]({os.path.relpath(folder, out)})"


def missing_row(cells, status_at, name):
    """The row of a run with no result.json: `cells` first, 'missing' as its status, its name last."""
    cells = list(cells)
    cells[status_at], cells[-1] = "missing", name
    return row(cells)


def stat(results, field, scale=100, digits=2):
    """A table cell over the seeds of a run: the value (one seed) or 'mean ± sample std (n=N)'; '–' if none."""
    values = [r[field] * scale for r in results if r[field] is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def common_value(results, field):
    """The field when every seed agrees (status, epochs run), else each value with its count."""
    counts = collections.Counter(str(r[field]) for r in results)
    return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{v} ×{n}" for v, n in counts.items())


def hp_table(out):
    md = ["### 1. Hyper-parameter search (ResVGG16-standard, ReLU, cross-entropy, cosine schedule)", "",
          *table_head("config", "status", "best val acc", "test acc at best val", "epochs run", "run")]
    for label, name, _ in HP_RUNS:
        rs = seed_results(out, name)
        md.append(row([label, common_value(rs, "status"), stat(rs, "best_val_acc"), stat(rs, "test_acc_at_best_val"),
                       common_value(rs, "epochs_run"), link(out, run_dir(out, name))]) if rs else
                  missing_row([label, *["–"] * 5], 1, name))
    return md


def grid_tables(out, best):
    """Table 2 for our grid; beside it, when it was trained, the grid as the report's code ran it."""
    md = grid_table(out, best, "ours")
    if any(seed_results(out, name) for *_, name in grid("report")):
        md += [""] + grid_table(out, best, "report")
    return md


def grid_table(out, best, recipe):
    md = [f"### 2{'' if recipe == 'ours' else 'b'}. The 24-configuration grid: {GRIDS[recipe][2]}", "", *table_head(
        "#", "arch", "act", "loss", "opt", "params", "best val acc", "test acc at best val", "train time", "status",
        "run")]
    for k, arch, act, loss, opt, name in grid(recipe):
        rs, folder = seed_results(out, name), run_dir(out, name)
        train_time = common.format_seconds(statistics.mean(r["train_seconds"] for r in rs)) if rs else "–"
        md.append(row([k, arch, act, loss, opt, f"{rs[0]['params']:,}", stat(rs, "best_val_acc"),
                       stat(rs, "test_acc_at_best_val"), train_time, common_value(rs, "status"),
                       link(out, folder)], bold=folder == best) if rs else
                  missing_row([k, arch, act, loss, opt, *["–"] * 6], 9, name))
    if recipe == "report":
        return md + ["", "Epochs, schedule, weight decay, init and input standardization as the author's code "
                     "(`--recipe report`); selection still on our validation split, never on the test set."]
    return md + ["", "Bold: the best mean validation accuracy over a configuration's seeds (n = 1 unless "
                 "stated; ± is the sample standard deviation over seeds; train time is the mean). `nll` is "
                 "log_softmax + NLLLoss, which is exactly how cross-entropy is computed, so every ce row and its "
                 "nll twin are the same training run up to floating-point nondeterminism (a test checks loss and "
                 "gradients agree to 1e-6). " + twin_differences(out)]


def twin_differences(out):
    """The largest measured difference between every ce grid run and its nll twin."""
    diffs = {"best val acc (pp)": [], "test acc at best val (pp)": [], "final train loss": []}
    for _, arch, act, loss, opt, name in grid():
        twin = run_dir(out, grid_name(arch, act, "nll", opt))
        a, b = read_result(run_dir(out, name)), read_result(twin)
        if loss != "ce" or a is None or b is None:
            continue
        for key, field in (("best val acc (pp)", "best_val_acc"),
                           ("test acc at best val (pp)", "test_acc_at_best_val")):
            if a[field] is not None and b[field] is not None:
                diffs[key].append(100 * abs(a[field] - b[field]))
        la, lb = common.read_metrics(run_dir(out, name)), common.read_metrics(twin)
        if la and lb and la[-1]["train_loss"] is not None and lb[-1]["train_loss"] is not None:
            diffs["final train loss"].append(abs(la[-1]["train_loss"] - lb[-1]["train_loss"]))
    measured = "; ".join(f"{k} {max(v):.3g}" for k, v in diffs.items() if v) or "no complete pairs"
    return f"Largest difference measured over the {len(diffs['final train loss'])} pairs: {measured}."


def loss_table(out):
    """The loss-function runs beside the ce run of the configuration they were trained on (seed 0)."""
    md = ["### 3. Loss functions beyond the report (best grid configuration)", ""]
    trained = [r for r in (read_result(run_dir(out, name)) for _, name, _ in LOSS_RUNS) if r]
    if not trained:
        return md + ["Not run yet (it needs a finished grid run)."]
    cfg = trained[0]["config"]
    md += [f"Configuration: {cfg['arch']}, {cfg['act']}, {cfg['opt']} (the best mean validation accuracy of the "
           "grid when these runs were planned).", "",
           *table_head("loss", "status", "best val acc", "test acc at best val", "final test acc", "epochs run", "run")]
    ce_twin = grid_name(cfg["arch"], cfg["act"], "ce", cfg["opt"])
    for label, name in [("ce", ce_twin)] + [(label, name) for label, name, _ in LOSS_RUNS]:
        rs = seed_results(out, name)
        md.append(row([label, common_value(rs, "status"), stat(rs, "best_val_acc"), stat(rs, "test_acc_at_best_val"),
                       stat(rs, "final_test_acc"), common_value(rs, "epochs_run"), link(out, run_dir(out, name))])
                  if rs else missing_row([label, *["–"] * 6], 1, name))
    return md


def task2_table(out):
    md = ["### 4. Task 2: VGG-A with and without BatchNorm", "", *table_head(
        "model", "optimizer", "recipe", "lr", "test acc at best val", "final test acc", "best val acc",
        "convergence epoch", "params", "status", "run")]
    recipes = [r for r in GRIDS if r == "ours" or any(seed_results(out, t2_name(m, o, r))
                                                      for m, o in itertools.product(T2_MODELS, T2_OPTS))]
    for recipe, model, opt in itertools.product(recipes, T2_MODELS, T2_OPTS):
        name = t2_name(model, opt, recipe)
        folder, rs = run_dir(out, name), seed_results(out, name)
        md.append(row([model, opt, recipe, f"{rs[0]['config']['lr']:g}", stat(rs, "test_acc_at_best_val"),
                       stat(rs, "final_test_acc"), stat(rs, "best_val_acc"), stat(rs, "convergence_epoch", 1, 0),
                       f"{rs[0]['params']:,}", common_value(rs, "status"), link(out, folder)]) if rs else
                  missing_row([model, opt, recipe, *["–"] * 8], 9, name))
    return md + ["", f"Convergence epoch: the first epoch whose validation accuracy reaches "
                     f"{common.CONVERGED_FRACTION:.0%} of the run's best. Recipe `report`: the author's Task 2 "
                     "variant (Dropout-Linear-BN1d classifier in the BN models, Kaiming init, no augmentation, "
                     "0.5/0.5 standardization, batch 64, constant lr)."]


def bn_section(out):
    """Table 5 from the raw numbers of both BN analyses; their figures are copied into figures/."""
    md = ["### 5. How BN helps optimization (task2/bn_analysis.py)", ""]
    for folder_name, title in ((BN_DIR, "the course's Adam learning rates, probe along Adam's own update"),
                               (BN_PAPER_DIR, "Santurkar et al.'s settings (`--paper`): SGD, probe along −∇L")):
        folder = os.path.join(out, folder_name)
        md += [f"#### 5{'a' if folder_name == BN_DIR else 'b'}. {title}", ""]
        if not os.path.exists(os.path.join(folder, "bn_analysis.json")):
            md += ["Not run yet.", ""]
            continue
        runs, settings = bn_analysis.load_bn_analysis(folder)
        for name in bn_analysis.BN_FIGURES:
            if os.path.exists(os.path.join(folder, name)):
                shutil.copy(os.path.join(folder, name), os.path.join(out, "figures", f"{folder_name}_{name}"))
        md += [bn_analysis.claims_table(runs, settings).replace("## ", "##### "), "",
               bn_analysis.bn_summary_table(runs, link_prefix=f"{folder_name}/")]
    return md


def sharpness_table(out):
    md = ["### 6. Sharpness: extreme Hessian eigenvalues at the checkpoint (Lanczos)", "",
          *table_head("model", "checkpoint", "top eigenvalue", "most negative", "iterations", "evaluation data")]
    for label, name in SHARPNESS_ROWS:
        path = os.path.join(out, "landscapes", name, "surface.json")
        info = common.load_json(path) if os.path.exists(path) else {}
        h = info.get("hessian")
        ckpt = os.path.relpath(info["settings"]["ckpt"], out) if info else None
        md.append(row([label, f"[{ckpt}]({ckpt})" if ckpt else "–", hessian_cell(h, "top_eigenvalue"),
                       hessian_cell(h, "bottom_eigenvalue"), h["iterations"] if h else "–",
                       f"first {info['settings']['n_items']} {info['settings']['split']} images" if info else "–"]))
    return md


def spectrum_section(out):
    """Table 7 and figures/spectra.png: the Hessian of VGG-A and VGG-A + BN (both BN modes) at the checkpoint."""
    md = ["### 7. The Hessian's spectrum at the checkpoint: VGG-A vs VGG-A + BN (Adam runs)", "",
          *table_head("model", "BN mode", "top eigenvalue", "trace (Hutchinson)", "largest block top eigenvalue",
                      "images", "seeds", "folder")]
    infos = {}
    for name, model, mode in SPECTRA:
        path = os.path.join(out, "landscapes", name, "surface.json")
        info = common.load_json(path) if os.path.exists(path) else {}
        s, h = info.get("spectrum"), info.get("hessian")
        if not s:
            md.append(row([model, mode, *["–"] * 5, "missing"]))
            continue
        infos[f"{model}, BN {mode}" if model != "vgg_a" else "vgg_a (no BN)"] = s
        top_block = max(s.get("blocks", []), key=lambda b: b["top"]["mean"], default=None)
        trace = s.get("trace")
        md.append(row([model, mode, f"{h['top_eigenvalue']:.4g} ± {h['top_eigenvalue_std']:.2g}" if h else "–",
                       f"{trace['mean']:.4g} ± {trace['std']:.2g} (SE {trace['stderr'][0]:.2g})" if trace else "–",
                       f"{top_block['top']['mean']:.4g} ({top_block['name']})" if top_block else "–", s["images"],
                       s["repeats"], link(out, os.path.join(out, "landscapes", name))]))
    if infos:
        plot_spectra(infos, os.path.join(out, "figures", "spectra.png"))
    return md + ["", "± is the standard deviation over the seeds (Lanczos starts, Hutchinson and SLQ probes); SE "
                 "is the first seed's Hutchinson standard error. VGG-A has no BN, so its one spectrum serves both "
                 "modes; `train` normalizes with batch statistics (dropout off).", ""] + per_block_table(infos)


def per_block_table(infos):
    """Per block, in network order, each spectrum's top eigenvalue and trace of that block's own Hessian."""
    blocks = {label: s.get("blocks", []) for label, s in infos.items()}
    if not any(blocks.values()):
        return []
    md = table_head("block", *(f"{label}: {what}" for label in blocks for what in ("top eigenvalue", "trace")))
    for k in range(max(len(b) for b in blocks.values())):
        cells = []
        for b in blocks.values():
            cells += [f"{b[k]['name']}: {b[k]['top']['mean']:.4g} ± {b[k]['top']['std']:.2g}",
                      f"{b[k]['trace']['mean']:.4g} ± {b[k]['trace']['std']:.2g}"] if k < len(b) else ["–", "–"]
        md.append(row([k + 1, *cells]))
    return md + ["", "Each block's parameters alone (the rest fixed), mean ± std over the seeds; in VGG-A + BN a "
                 "block is a layer with the BN after it (`features.0+1`: convolution 0 and BN 1)."]


def trajectory_section(out):
    """Table 8: the best SGD and Adam configurations trained again keeping their path, and that path's plane."""
    md = ["### 8. Training paths on their own planes (PCA of the path, Li et al. 2018)", "",
          *table_head("optimizer", "run", "test acc at best val", "snapshots", "PC1 / PC2 share of the path's "
                      "variance", "surface")]
    for opt in ("sgd", "adam"):
        name = f"{TRAJECTORY}_{opt}"
        result, path = read_result(run_dir(out, name)), os.path.join(out, "landscapes", name, "surface.json")
        t = common.load_json(path).get("trajectory") if os.path.exists(path) else None
        md.append(row([opt, link(out, run_dir(out, name)) if result else "missing",
                       stat([result], "test_acc_at_best_val") if result else "–", t["snapshots"] if t else "–",
                       " / ".join(f"{100 * v:.1f} %" for v in t["explained_variance"]) if t else "–",
                       link(out, os.path.dirname(path)) if t else "missing"]))
    return md + ["", "Each is the best grid configuration for its optimizer (by mean validation accuracy) trained "
                 "once more with the same seed and `--save-trajectory`; the figures draw the path on the surface."]


def plot_spectra(infos, path):
    """The SLQ densities side by side on one log axis, and per block the top eigenvalue of each network."""
    plt = common.pyplot()
    fig, (ax_d, ax_b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for (label, s), colour in zip(infos.items(), ("tab:orange", "tab:blue", "tab:green")):
        if "density" in s:
            grid, _, curves = common.density_curves(s["density"])
            ax_d.plot(grid, np.maximum(np.mean(curves, 0), 1e-12), color=colour, label=label)
        if "blocks" in s:
            ax_b.plot([b["name"] for b in s["blocks"]], [b["top"]["mean"] for b in s["blocks"]], "o-", color=colour,
                      label=label)
    ax_d.set(yscale="log", ylim=(1e-8, None), xlabel="eigenvalue", ylabel="density (SLQ, Gaussian-smoothed)",
             title="Hessian eigenvalue density")
    ax_b.set(yscale="log", ylabel="top eigenvalue of the block's Hessian", title="per block (the rest fixed)")
    ax_b.tick_params(axis="x", rotation=60, labelsize=7)
    for ax in (ax_d, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    common.save_figure(fig, path)


def hessian_cell(h, key):
    """An eigenvalue, marked when Lanczos did not converge; surfaces made before Lanczos (power iteration,
    no residual test, no bottom eigenvalue) are marked as such."""
    if not h or key not in h:
        return "missing" if not h else "–"
    note = {True: "", False: " (not converged)", None: " (power iteration, unchecked)"}[h.get("converged")]
    return f"{h[key]:.4g}{note}"


FIGURES = [  # (file under the results folder, name in figures/, caption)
    (f"{VISUALIZE}/filters.png", "filters.png", "first-layer filters of the best model"),
    (f"{VISUALIZE}/feature_maps.png", "feature_maps.png", "feature maps of a test image, best model"),
    ("landscapes/best_sgd/surface_3d.png", "surface_best_sgd.png", "loss surface of the best SGD model"),
    ("landscapes/best_adam/surface_3d.png", "surface_best_adam.png", "loss surface of the best Adam model"),
    (f"landscapes/{INTERP}/loss_1d.png", "interp_sgd_adam.png",
     "linear interpolation from the best SGD model (α = 0) to its Adam twin (α = 1)"),
    (f"landscapes/{TRAJECTORY}_sgd/contour.png", "trajectory_sgd.png",
     "the best SGD configuration's training path on its own plane (PCA of the path)"),
    (f"landscapes/{TRAJECTORY}_adam/contour.png", "trajectory_adam.png",
     "the best Adam configuration's training path on its own plane (PCA of the path)"),
]


def copy_curves(out):
    """Every run's curves.png into figures/curves/<run>.png; returns the run names."""
    names = sorted(os.listdir(os.path.join(out, "runs"))) if os.path.isdir(os.path.join(out, "runs")) else []
    copied = [n for n in names if os.path.exists(os.path.join(run_dir(out, n), "curves.png"))]
    for name in copied:
        shutil.copy(os.path.join(run_dir(out, name), "curves.png"),
                    os.path.join(out, "figures", "curves", f"{name}.png"))
    return copied


def curves_section(out):
    return [f"Training curves of the {len(copy_curves(out))} runs: [figures/curves/](figures/curves/)."]


def figures_section(out):
    """Copy every run's curves and the landscape figures into figures/, draw VGG-A vs VGG-A + BN."""
    figures = os.path.join(out, "figures")
    copy_curves(out)
    listed = []
    for src, dst, caption in FIGURES:
        if os.path.exists(os.path.join(out, src)):
            shutil.copy(os.path.join(out, src), os.path.join(figures, dst))
            listed.append((dst, caption))
    if os.path.exists(os.path.join(figures, "spectra.png")):  # drawn by spectrum_section
        listed.append(("spectra.png", "Hessian spectrum and per-block top eigenvalues, VGG-A vs VGG-A + BN"))
    surfaces = {m: load_surface(os.path.join(out, "landscapes", m)) for m in ("vgg_a", "vgg_a_bn", BN_TRAIN_MODE)}
    if surfaces["vgg_a"] and surfaces["vgg_a_bn"]:
        plot_surfaces_side_by_side([surfaces["vgg_a"], surfaces["vgg_a_bn"]], ["VGG-A", "VGG-A + BN"],
                                   os.path.join(figures, "vgg_a_vs_bn.png"), log=True)
        listed.append(("vgg_a_vs_bn.png", "VGG-A vs VGG-A + BN: same seed, same grid, same (log10) colour scale"))
    if all(surfaces.values()):
        plot_bn_modes(surfaces["vgg_a"], surfaces["vgg_a_bn"], surfaces[BN_TRAIN_MODE],
                      os.path.join(figures, "vgg_a_vs_bn_bn_modes.png"))
        listed.append(("vgg_a_vs_bn_bn_modes.png", "VGG-A vs VGG-A + BN with BN's running statistics frozen (eval) "
                       "and re-estimated at every point (train), one log10 colour scale"))
    listed += [(f"{d}_{n}", f"Task 2 ({label}): {n[:-4].replace('_', ' ')}") for d, label in
               ((BN_DIR, "Adam, probe along the update"), (BN_PAPER_DIR, "--paper, SGD"))
               for n in bn_analysis.BN_FIGURES
               if os.path.exists(os.path.join(figures, f"{d}_{n}"))]
    return ["### Figures", "", "Training curves of every run: `figures/curves/`.", ""] + \
        [f"- {caption}: ![{caption}](figures/{name})" for name, caption in listed]


def full_scale_table(out, jobs):
    """The headline table: every full-scale job beside the report's number for it."""
    md = ["### Full scale: the report's numbers beside ours", "", *table_head(
        "run", "the report", "report %", "ours: test acc at best val", "difference (pp)", "epochs", "wall time",
        "device", "status")]
    for name, _, _, label, report_acc in jobs:
        rs, report = seed_results(out, name), f"{report_acc:.2f}" if report_acc else "–"
        if not rs:
            md.append(row([name, label, report, *["–"] * 5, "missing"]))
            continue
        ours = [100 * r["test_acc_at_best_val"] for r in rs if r["test_acc_at_best_val"] is not None]
        diff = f"{statistics.mean(ours) - report_acc:+.2f}" if ours and report_acc else "–"
        wall = statistics.mean(r.get("wall_seconds", r["train_seconds"]) for r in rs)
        md.append(row([link(out, run_dir(out, name)), label, report, stat(rs, "test_acc_at_best_val"), diff,
                       f"{rs[0]['epochs_run']}/{rs[0]['epochs']}", common.format_seconds(wall),
                       rs[0].get("machine", rs[0]["device"]), common_value(rs, "status")]))
    return md


def write_report(out, profile=""):
    """tables.md and figures/ (drawn afresh: nothing stale stays) from the run folders under `out`; returns the
    Markdown."""
    shutil.rmtree(os.path.join(out, "figures"), ignore_errors=True)
    os.makedirs(os.path.join(out, "figures", "curves"))
    results = [read_result(run_dir(out, d)) for d in sorted(os.listdir(os.path.join(out, "runs")))] \
        if os.path.isdir(os.path.join(out, "runs")) else []
    devices = sorted({r["device"] for r in results if r})
    best = best_grid_run(out)
    md = [f"Generated by `run_all.sh --profile {profile}` from the result files in this folder; "
          f"device: {', '.join(devices) or 'n/a'}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
          "Accuracies in %. Model selection uses the validation split only; test accuracy is read at the "
          "best-validation epoch."]
    jobs = PROFILES.get(profile, {}).get("jobs")
    sections = [full_scale_table(out, jobs), curves_section(out)] if jobs else [
        hp_table(out), grid_tables(out, best), loss_table(out), task2_table(out), bn_section(out),
        sharpness_table(out), spectrum_section(out), trajectory_section(out), figures_section(out)]
    for section in sections:
        md += [""] + section
    text = "\n".join(md) + "\n"
    common.write_text(os.path.join(out, "tables.md"), text)
    return text


def shared_scale(surfaces, log):
    """The z of each surface (log10 of the loss with log) and 30 contour levels spanning all of them, so
    surfaces drawn side by side share one colour scale."""
    zs = [np.log10(np.maximum(s["loss"], 1e-12)) if log else s["loss"] for s in surfaces]
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs])
    return zs, np.linspace(float(finite.min()), float(finite.max()), 30)


def plot_surfaces_side_by_side(surfaces, titles, path, log=False):
    """2D surfaces next to each other on one colour scale and one z range: 3D above, filled contours below."""
    from matplotlib.colors import Normalize
    plt = common.pyplot()
    zs, levels = shared_scale(surfaces, log)
    norm = Normalize(levels[0], levels[-1])
    fig = plt.figure(figsize=(5.5 * len(surfaces), 9))
    for k, (s, z, title) in enumerate(zip(surfaces, zs, titles)):
        gx, gy = np.meshgrid(s["x"], s["y"], indexing="ij")
        ax = fig.add_subplot(2, len(surfaces), k + 1, projection="3d")
        ax.plot_surface(gx, gy, z, cmap="viridis", norm=norm, linewidth=0)
        ax.set(title=title, xlabel="x", ylabel="y", zlim=(norm.vmin, norm.vmax),
               zlabel="log10 loss" if log else "loss")
        ax = fig.add_subplot(2, len(surfaces), len(surfaces) + k + 1)
        filled = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=norm, extend="both")
        ax.set(xlabel="x", ylabel="y", aspect="equal")
    fig.subplots_adjust(right=0.88)  # the colour bar gets its own strip, clear of the 3D z ticks
    fig.colorbar(filled, cax=fig.add_axes([0.91, 0.1, 0.015, 0.35]), label="log10 loss" if log else "loss")
    common.save_figure(fig, path, dpi=110, tight=False)


def load_surface(folder):
    """surface.npz of a landscape folder as a dict, or None when it has none."""
    path = os.path.join(folder, "surface.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as s:
        return dict(s)


def plot_bn_modes(plain, bn_eval, bn_train, path):
    """Filled log10-loss contours on one colour scale: VGG-A (no BN, so one surface for both modes) beside
    VGG-A + BN with frozen running statistics (eval) and with statistics re-estimated at each point (train)."""
    from matplotlib.colors import Normalize
    plt = common.pyplot()
    panels = [(plain, "VGG-A (no BN: both modes)"), (bn_eval, "VGG-A + BN, --bn-mode eval"),
              (bn_train, "VGG-A + BN, --bn-mode train")]
    zs, levels = shared_scale([s for s, _ in panels], log=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained")
    for ax, (s, title), z in zip(axes, panels, zs):
        gx, gy = np.meshgrid(s["x"], s["y"], indexing="ij")
        filled = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=Normalize(levels[0], levels[-1]),
                             extend="both")
        ax.set(title=title, xlabel="x", ylabel="y", aspect="equal")
    fig.colorbar(filled, ax=axes, label="log10 loss", shrink=0.9)
    common.save_figure(fig, path, dpi=110, tight=False)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme, tables, out):
    """Replace README's text between the result markers with `tables`, links made relative to README."""
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(readme)))
    text = re.sub(r"\]\((?!https?://|/)", f"]({rel}/", tables)  # every relative link, now from README's folder
    with open(readme) as f:
        content = f.read()
    if README_START not in content or README_END not in content:
        raise common.UsageError(f"{readme} lacks the markers {README_START} and {README_END}")
    head, rest = content.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    common.write_text(readme, f"{head}{README_START}\n{text}{README_END}{tail}")


# -- command line ------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plan", help="print the job lines of one phase")
    pl.add_argument("phase", choices=PHASES)
    pl.add_argument("--profile", required=True, choices=sorted(PROFILES))
    pl.add_argument("--out", required=True)
    pl.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "data"))
    pl.add_argument("--seeds", type=int, default=1, help="train every Task 1 and Task 2 job with seeds 0 .. N-1")
    j = sub.add_parser("jobs", help="run the jobs of a file")
    j.add_argument("file")
    j.add_argument("--worker", default="", help="a prefix for progress lines (e.g. the GPU)")
    j.add_argument("--failures", help="append the failed jobs' names to this file")
    r = sub.add_parser("report", help="write tables.md and figures/")
    r.add_argument("out")
    r.add_argument("--profile", default="")
    r.add_argument("--update-readme", action="store_true", help="replace README's results section with tables.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "plan":
        if args.seeds < 1:
            return common.fail(common.UsageError("--seeds must be at least 1"))
        for job in plan(args.phase, args.profile, args.out, args.data_dir, args.seeds):
            print(shlex.join(job))
        return 0
    if args.command == "jobs":
        if not os.path.isfile(args.file):
            return common.fail(common.UsageError(f"{args.file}: no such job file"))
        failures = run_jobs(args.file, args.worker)
        if args.failures and failures:
            with open(args.failures, "a") as f:
                f.writelines(name + "\n" for name in failures)
        return 1 if failures else 0
    try:
        if not os.path.isdir(os.path.join(args.out, "runs")):  # never replace README's tables with "missing" rows
            raise common.UsageError(f"{args.out} holds no runs ({os.path.join(args.out, 'runs')} is missing)")
        finished = [d for d in os.listdir(os.path.join(args.out, "runs"))
                    if (read_result(run_dir(args.out, d)) or {}).get("status") in FINISHED]
        if args.update_readme and not finished:
            raise common.UsageError(f"{args.out} holds no finished run: README's results are left as they are "
                                    "(check --out)")
        tables = write_report(args.out, args.profile)
        print(f"wrote {os.path.join(args.out, 'tables.md')} and {os.path.join(args.out, 'figures')}/")
        if args.update_readme:
            update_readme(os.path.join(ROOT, "README.md"), tables, args.out)
            print("README.md results section updated")
    except common.USER_ERRORS as e:
        return common.fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
