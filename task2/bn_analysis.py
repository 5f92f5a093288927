"""How BatchNorm helps optimization (Task 2.3): VGG-A with and without BN, trained from scratch at
every learning rate of --lrs, with the loss recorded at every step, Santurkar et al.'s probe (loss
variation, gradient predictiveness, effective β-smoothness) every --probe-every steps along -∇L or the
optimizer's own next update, and optionally the top Hessian eigenvalue every --sharpness-every steps.

    python task2/bn_analysis.py                        # 2 models x 4 learning rates, Adam, 20 epochs
    python task2/bn_analysis.py --paper --sharpness-every 50    # the paper's SGD settings, plus sharpness
    python task2/bn_analysis.py --probe-direction update        # probe along Adam's real step
    python task2/bn_analysis.py --replot runs/bn_analysis   # redraw figures and summary from raw numbers

Writes to --out (default runs/bn_analysis): runs/<model>_lr<lr>/ (ordinary run folders plus probe.npz),
bn_analysis.json + bn_analysis.npz (raw numbers), summary.md (per claim of the paper: holds or not, with
the numbers) and the figures. Repeating the command reuses a finished run made with the same settings and
resumes one interrupted by Ctrl-C; one killed outright or made otherwise is trained again from its start.
"""
import argparse
import collections
import copy
import itertools
import json
import math
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402

BN_FIGURES = ["loss_band.png", "loss_variation.png", "grad_predictiveness.png", "beta_smoothness.png", "sharpness.png",
              "curves.png"]
PROBE_FIELDS = ("step", "loss", "grad_norm", "step_norm", "losses", "grad_dists", "betas")  # probe.npz: probe_*
SHARPNESS_FIELDS = ("step", "top", "bottom", "residual_top", "converged")  # probe.npz: sharpness_*
FILTER = "filter_"  # probe.npz: sharpness_filter_* (--sharpness-coords filter|both), the same fields for D·H·D
FIELD_PREFIX = {"raw": "", "filter": FILTER}  # each Hessian coordinate's prefix of the sharpness fields
COLOUR_FAMILIES = ["Oranges", "Blues", "Greens", "Purples"]  # baseline, then each compared model
PROBE_FLAGS = {  # the probe's settings (a saved probe.npz is reused only when they match): default, --help
    "probe_every": (50, "probe every K training steps", dict(type=int)),
    "probe_etas": ([0.1, 0.3, 1.0, 3.0, 10.0], "step sizes η", dict(nargs="+", type=float)),
    "probe_direction": ("grad", "grad: along -∇L; update: along the step the run's optimizer takes next (Adam's, "
                        "momentum's)", dict(choices=["grad", "update"])),
    "probe_scale": ("relative", "relative: θ + η·lr·d, so η = 1 is one step (exactly the next one with 'update'); "
                    "absolute: θ + η·d; d is -∇L or the update divided by the lr",
                    dict(choices=["relative", "absolute"])),
    "sharpness_every": (0, "top Hessian eigenvalue on a fixed training batch every K steps (0: never)",
                        dict(type=int)),
    "sharpness_images": (256, "the fixed batch: the first N training images", dict(type=int)),
    "sharpness_iters": (20, "Lanczos iterations at most", dict(type=int)),
    "sharpness_coords": ("raw", "raw: the Hessian in the parameters; filter: of D·H·D, D each filter's norm (the "
                         "surfaces' coordinates, unchanged when a filter that feeds a BN is scaled); both: each",
                         dict(choices=["raw", "filter", "both"])),
    "probe_precision": ("fp32", "the probe's forward passes (gradients, losses at θ + ηd); the sharpness "
                        "Hessian-vector products are always fp32, whatever --precision trains in",
                        dict(choices=["fp32", "bf16"])),
}
PROBE_KEYS = tuple(PROBE_FLAGS)
# Santurkar et al. 2018, Appendix A: --paper is the training recipe "paper" (common.RECIPES: VGG, plain SGD at
# batch 128, a fixed lr, no augmentation or weight decay, Glorot init, 15,000 steps) at lrs 0.1 and 0.5 (Figure
# 1), with the probe along the gradient at step lengths in [1/2, 4] x the step size (A.2.2), here every 50
# steps: 300 probes a run
PAPER = dict(recipe="paper", lrs=[0.1, 0.5], probe_every=50, probe_direction="grad", probe_scale="relative",
             probe_etas=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0])
# beyond the paper: its steps are so long that ‖Δ∇L‖ ≈ ‖∇L‖ for both networks and effective β is 1/η_min; steps
# down to lr/100 show whether they differ where the probe is not degenerate (the claims table's probe check)
SMALL_ETAS = [0.01, 0.03, 0.1, 0.3]
RECORDED = ("opt", "momentum", "epochs", "steps", "batch_size", "subset", "width", "seed")  # in bn_analysis.json


def parse_args(argv=None):
    """The analysis' options as attributes; args.train: the training settings given (common.make_config's),
    with --paper's and the analysis' defaults (no divergence stop) beside them."""
    parser = common.add_settings(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), "task2")
    g = parser.add_argument_group("BN analysis")
    g.add_argument("--models", nargs="+", default=["vgg_a", "vgg_a_bn"], choices=common.MODELS,
                   help="the first is the baseline the summary's claims compare the others with (default: vgg_a vgg_a_bn)")
    g.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 1e-4, 5e-4],
                   help="one run per model and lr (default: 0.001 0.002 0.0001 0.0005)")
    g.add_argument("--seeds", type=int, default=1, help="every model and lr with seeds 0 .. N-1 (same batches "
                                                         "for every model at a seed; default 1)")
    for name, (default, text, kwargs) in PROBE_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), default=default, help=f"{text} (default: {default})", **kwargs)
    g.add_argument("--paper", action="store_true",
                   help="Santurkar et al.'s settings: " + ", ".join(f"{k} {v}" for k, v in PAPER.items())
                        + " (flags given beside it win)")
    g.add_argument("--small-steps", action="store_true", help="beyond the paper: the probe's step sizes also at "
                   f"{', '.join(f'{m:g}' for m in SMALL_ETAS)} x (before those of --probe-etas)")
    g.add_argument("--smooth", type=int, default=1, help="moving-average window of the loss-band figure")
    g.add_argument("--replot", metavar="DIR", help="only redraw figures and summary.md from DIR's raw numbers")
    argv = sys.argv[1:] if argv is None else argv
    if "--paper" in argv:
        parser.set_defaults(**{k: v for k, v in PAPER.items() if k != "recipe"})
    args = parser.parse_args(argv)
    if args.small_steps:
        args.probe_etas = sorted(set(SMALL_ETAS) | set(args.probe_etas))
    args.train = {k: v for k, v in vars(args).items() if k in common.SETTING}
    args.train.setdefault("diverge_patience", 0)
    if args.paper:
        args.train.setdefault("recipe", PAPER["recipe"])
    if "lr" in args.train:
        parser.error("use --lrs: the analysis runs every learning rate given there")
    if len(set(args.models)) < 2 or len(set(args.models)) < len(args.models):
        parser.error("--models needs two or more different models: the first is the baseline, the others are "
                     "compared with it")
    if min(args.seeds, args.probe_every, args.sharpness_images, args.sharpness_iters) < 1 or args.sharpness_every < 0:
        parser.error("--seeds, --probe-every, --sharpness-images and --sharpness-iters must be at least 1, "
                     "--sharpness-every at least 0")
    if not all(math.isfinite(v) and v > 0 for v in args.probe_etas + args.lrs):
        parser.error("--probe-etas and --lrs must be positive numbers")
    return args


def run_config(args, model, lr, run_dir, seed=0):
    """The training config of one run of the analysis (common.make_config of the settings given)."""
    return common.make_config("task2", **{**args.train, "model": model, "lr": lr, "out": run_dir,
                                          "seed": args.train.get("seed", 0) + seed, "resume": False,
                                          "overwrite": True})


# -- the probe, a step hook of common.train ----------------------------------------------------

def next_update(optimizer):
    """The change the optimizer's next step() would make to each parameter, computed on a deep copy (its
    momentum / Adam moments and the current gradients), so the real optimizer and weights stay untouched."""
    shadow = copy.deepcopy(optimizer)
    shadow._optimizer_step_pre_hooks.clear()  # hooks on the real optimizer (a test's SIGINT) must not fire twice
    shadow._optimizer_step_post_hooks.clear()
    pairs = [(p, q) for group, copied in zip(optimizer.param_groups, shadow.param_groups)
             for p, q in zip(group["params"], copied["params"])]
    for p, q in pairs:
        q.grad = None if p.grad is None else p.grad.detach().clone()
    shadow.step()
    return [(q - p).detach() for p, q in pairs]


class BNProbe:
    """A train() step hook for Task 2: records the training loss of every step; every `every` steps runs
    probe_along on the current batch (BN in train mode, batch statistics, as in the training step) along
    -∇L or the optimizer's next update; every `sharpness_every` steps the extreme Hessian eigenvalues on a
    fixed batch of training images (train mode, no augmentation)."""

    def __init__(self, criterion, etas, every, device, direction="grad", lr=1.0, sharpness_every=0,
                 sharpness_images=256, sharpness_iters=20, numerics=common.FP32, sharpness_coords="raw"):
        self.criterion, self.etas, self.every, self.device = criterion, list(etas), every, device
        self.numerics = numerics  # the probe's precision: fp32 unless --probe-precision says otherwise
        self.direction, self.lr = direction, lr
        self.sharpness_every, self.sharpness_images, self.sharpness_iters = sharpness_every, sharpness_images, \
            sharpness_iters
        self.coords = {"raw": ["raw"], "filter": ["filter"], "both": ["raw", "filter"]}[sharpness_coords]
        self.step_losses, self.probes, self.sharpness, self.steps_per_epoch = [], [], [], 0

    def __call__(self, run, x, y, loss, step):
        self.steps_per_epoch = run.steps_per_epoch
        self.step_losses.append(loss.detach())
        if step % self.every == 0:
            self.probes.append(dict(step=step, **self.probe(run.forward, run.optimizer, x, y)))
        if self.sharpness_every and step % self.sharpness_every == 0:
            self.sharpness.append(dict(step=step, **self.hessian(run)))

    def probe(self, model, optimizer, x, y):
        def loss_closure():
            with self.numerics.autocast(self.device):
                logits = model(x)
            return self.criterion(logits.float(), y)
        direction = None if self.direction == "grad" else [d / self.lr for d in next_update(optimizer)]
        return common.probe_along(model, loss_closure, self.etas, direction)

    def hessian(self, run):
        """Lanczos on the first `sharpness_images` training images in one batch, fp32, weights left as found;
        each of the coordinates asked for (filter: its fields prefixed FILTER)."""
        x = run.numerics.inputs(run.train_x[:self.sharpness_images])  # no autocast: fp32 products
        y = run.train_y[:self.sharpness_images]
        with common.preserved(run.model):
            rng = common.rng_state(run.device)

            def batch_losses():
                common.set_rng_state(rng, run.device)  # one dropout mask for every product
                yield self.criterion(run.model(x).float(), y) * len(y)
            batch_losses.batches = 1  # its gradient graph serves every product
            found = {}
            for coords in self.coords:
                h = common.hessian_extremes(run.model, batch_losses, len(y), self.sharpness_iters, coords=coords)
                found.update({FIELD_PREFIX[coords] + k: h[k] for k in SHARPNESS_FIELDS[1:]})
            return found

    def restore(self, arrays):
        """Continue from the arrays() of an interrupted run (its last.pt is at exactly that step)."""
        self.step_losses = [torch.tensor(v, dtype=torch.float32) for v in arrays["step_loss"]]  # as recorded
        self.probes = [{k: arrays[f"probe_{k}"][i].tolist() for k in PROBE_FIELDS}
                       for i in range(len(arrays["probe_step"]))]
        fields = [k[len("sharpness_"):] for k in arrays if k.startswith("sharpness_")]
        self.sharpness = [{k: arrays[f"sharpness_{k}"][i].item() for k in fields}
                          for i in range(len(arrays["sharpness_step"]))]

    def arrays(self):
        """Everything recorded, as numpy arrays (probe_* are [n_probes] or [n_probes, n_etas], sharpness_*
        [n_measurements])."""
        losses = torch.stack(self.step_losses).double().cpu().numpy() if self.step_losses else np.zeros(0)
        arrays = dict(step_loss=losses, etas=np.array(self.etas), probe_every=np.array(self.every),
                      steps_per_epoch=np.array(self.steps_per_epoch))
        for key in PROBE_FIELDS:
            arrays[f"probe_{key}"] = np.array([p[key] for p in self.probes], dtype=np.float64).reshape(
                len(self.probes), *([len(self.etas)] if key in ("losses", "grad_dists", "betas") else []))
        fields = SHARPNESS_FIELDS[:1] + tuple(FIELD_PREFIX[c] + k for c in self.coords for k in SHARPNESS_FIELDS[1:])
        for key in fields:
            arrays[f"sharpness_{key}"] = np.array([h[key] for h in self.sharpness], dtype=np.float64)
        return arrays


# -- raw numbers, figures and summary ----------------------------------------------------------

def save_bn_analysis(runs, out, settings):
    """The raw numbers of a BN analysis: bn_analysis.json (settings, per-run results and epoch
    metrics) and bn_analysis.npz (per-step losses and probe arrays, keys '<model>/lr<lr>/<name>')."""
    common.save_npz(os.path.join(out, "bn_analysis.npz"),
                    **{f"{npz_prefix(r)}{k}": v for r in runs for k, v in r["arrays"].items()})
    common.write_json(os.path.join(out, "bn_analysis.json"), dict(
        settings=settings, runs=[{k: r[k] for k in ("model", "lr", "seed", "dir", "result", "history")}
                                 for r in runs]))


def npz_prefix(run):
    """'<model>/lr<lr>/' (seed 0, as before --seeds existed) or '<model>/lr<lr>/s<seed>/'."""
    return f"{run['model']}/lr{run['lr']:g}/" + (f"s{run['seed']}/" if run.get("seed") else "")


def load_bn_analysis(out):
    """(runs with their arrays, settings) from the two raw-number files save_bn_analysis writes."""
    if not os.path.exists(os.path.join(out, "bn_analysis.json")):
        raise common.UsageError(f"{out} holds no bn_analysis.json (run the analysis first)")
    saved = common.load_json(os.path.join(out, "bn_analysis.json"))
    arrays = common.load_npz(os.path.join(out, "bn_analysis.npz"))
    runs = saved["runs"]
    for r in runs:
        r.setdefault("seed", 0)
        prefix = npz_prefix(r)
        r["arrays"] = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and
                       "/" not in k[len(prefix):]}
    return runs, saved["settings"]


def after_first_epoch(run, steps):
    """Mask of the recorded steps after the first epoch (all of them when the run had only one)."""
    late = steps >= int(run["arrays"].get("steps_per_epoch", 0))
    return late if late.any() else np.ones_like(late, dtype=bool)


CLAIMS = [  # (the paper's claim, measurements key): each holds when the compared (BN) model's number is smaller
    ("loss changes less along the probe direction (loss range over η)", "loss_range"),
    ("the gradient is more predictive (largest ‖Δ∇L‖ over η)", "grad_dist"),
    ("effective β-smoothness is smaller (largest ‖Δ∇L‖ / ‖ηd‖)", "beta"),
    ("sharpness is lower (top Hessian eigenvalue, fixed batch; beyond the paper)", "sharpness"),
    ("sharpness is lower in filter-normalized coordinates (top eigenvalue of D·H·D; beyond the paper)",
     "sharpness_filter"),
]
OPTIONAL_CLAIMS = {"sharpness_filter": "top eigenvalue, filter coords"}  # rows, columns only where measured


def claims_of(runs):
    """CLAIMS but those optional ones that no run measured."""
    return [(claim, key) for claim, key in CLAIMS if key not in OPTIONAL_CLAIMS or
            any(measurements(r, key) for r in runs)]
BAND_CLAIM = "the training loss depends less on the lr (loss-band width over the lrs)"
BOOTSTRAP_RESAMPLES = 2000


def measurements(run, key):
    """{step: value} of one claim's number at every measurement after the first epoch: the loss range over η,
    the largest gradient change over η, the largest effective β over η, or the top Hessian eigenvalue."""
    a = run["arrays"]
    if key in ("sharpness", "sharpness_filter"):
        top = "sharpness_top" if key == "sharpness" else f"sharpness_{FILTER}top"
        steps, values = (a.get("sharpness_step", np.zeros(0)), a[top]) if top in a else (np.zeros(0), np.zeros(0))
    elif a["probe_losses"].size == 0:
        steps, values = np.zeros(0), np.zeros(0)
    else:
        steps = a["probe_step"]
        values = {"loss_range": lambda: np.ptp(a["probe_losses"], axis=1),
                  "grad_dist": lambda: nan_reduce(np.nanmax, a["probe_grad_dists"], 1),
                  "beta": lambda: nan_reduce(np.nanmax, a["probe_betas"], 1)}[key]()
    late = after_first_epoch(run, steps) if len(steps) else np.zeros(0, dtype=bool)
    return dict(zip(steps[late].astype(int).tolist(), np.asarray(values, dtype=np.float64)[late].tolist()))


def degeneracy(run, column):
    """{step: ‖∇L(θ + η·d) − ∇L(θ)‖ / ‖∇L(θ)‖} at the probe's step `column` (the smallest η), after the first
    epoch. Near 1 the gradient changes by its own norm within that step, so effective β is about 1/(η·‖d‖)
    whatever the network: it then measures the probe, not the landscape's smoothness."""
    a = run["arrays"]
    if a["probe_losses"].size == 0:
        return {}
    steps = a["probe_step"]
    values = a["probe_grad_dists"][:, column] / np.maximum(a["probe_grad_norm"], 1e-30)
    late = after_first_epoch(run, steps)
    return dict(zip(steps[late].astype(int).tolist(), np.asarray(values, dtype=np.float64)[late].tolist()))


def median_degeneracy(runs, model, lr, column):
    """The median of degeneracy() over the seeds of one model and lr, at the probe's step `column`."""
    return pooled_median([degeneracy(r, column) for r in runs if (r["model"], r["lr"]) == (model, lr)])


def degeneracy_line(runs, settings):
    """summary.md's check of effective β: the median degeneracy at the smallest η, per lr and model."""
    etas = settings.get("probe_etas") or []
    if not etas:
        return ""
    column, models, cells = int(np.argmin(etas)), list(dict.fromkeys(r["model"] for r in runs)), []
    for lr in sorted({r["lr"] for r in runs}):
        medians = {m: median_degeneracy(runs, m, lr, column) for m in models}
        cells.append(f"lr {lr:g}: " + ", ".join(f"{m} {common.short_number(v)}" for m, v in medians.items()))
    return (f"Effective β's probe check: the median ‖∇L(θ + η·d) − ∇L(θ)‖ / ‖∇L(θ)‖ at the smallest step η = "
            f"{min(etas):g}{'' if settings.get('probe_scale') == 'absolute' else '·lr'} after epoch 1 — "
            + "; ".join(cells) + ". Near 1 the gradient changes by its own norm within that step, so β is about "
            "1/‖η·d‖ for any network and measures the probe's step, not smoothness; smaller --probe-etas (e.g. "
            "0.01, beyond the paper's grid) probe where it is not.")


def band_widths(runs, model, seed):
    """{step: max − min over the learning rates of the training loss} of one model and seed, after epoch 1; NaN
    where a run has no finite loss (it diverged): the band of the lrs left would understate it."""
    model_runs = [r for r in runs if r["model"] == model and r.get("seed", 0) == seed]
    losses = stack_padded([r["arrays"]["step_loss"] for r in model_runs])
    width = losses.max(axis=0) - losses.min(axis=0) if losses.size else np.zeros(0)
    steps = np.arange(len(width))
    late = after_first_epoch(model_runs[0], steps) if len(steps) else np.zeros(0, dtype=bool)
    return dict(zip(steps[late].tolist(), width[late].tolist()))


def paired_ratios(pairs):
    """Per seed, compared / baseline at every step both measured (same seed, same step: the same batch); pairs
    is [(baseline {step: value}, compared {step: value})] per seed. Non-finite or zero baselines are left out."""
    groups = []
    for base, other in pairs:
        steps = sorted(base.keys() & other.keys())
        ratios = np.array([other[s] / base[s] for s in steps if base[s] != 0], dtype=np.float64)
        groups.append(ratios[np.isfinite(ratios)])
    return [g for g in groups if g.size]


def bootstrap_median(groups, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Median of the pooled ratios and its 95 % percentile-bootstrap interval: each resample draws the seeds
    with replacement, then the measurements within each drawn seed."""
    rng = np.random.default_rng(seed)
    medians = np.empty(resamples)
    for k in range(resamples):
        drawn = [groups[i] for i in rng.integers(0, len(groups), len(groups))]
        medians[k] = np.median(np.concatenate([g[rng.integers(0, g.size, g.size)] for g in drawn]))
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(np.concatenate(groups))), float(low), float(high)


def verdict(groups):
    """The paired comparison of one claim: median ratio compared / baseline with its 95 % interval, the share
    of measurements where the compared model is smaller, and 'holds' only when the whole interval is below 1,
    'does not hold' when above, 'inconclusive' otherwise."""
    if not groups:
        return dict(n=0, ratio=math.nan, low=math.nan, high=math.nan, smaller=math.nan,
                    verdict="not measured (or not finite: diverged)")
    ratio, low, high = bootstrap_median(groups)
    pooled = np.concatenate(groups)
    word = "holds" if high < 1 else "does not hold" if low > 1 else "inconclusive"
    return dict(n=int(pooled.size), ratio=ratio, low=low, high=high, smaller=float((pooled < 1).mean()), verdict=word)


def pooled_median(maps):
    values = [v for m in maps for v in m.values() if math.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def claim_pairs(runs, baseline, model, lr, key):
    """Per seed that has both runs at this lr: (baseline's, compared model's) {step: value} of one claim."""
    pairs = []
    for seed in sorted({r.get("seed", 0) for r in runs}):
        pick = [next((r for r in runs if (r["model"], r["lr"], r.get("seed", 0)) == (m, lr, seed)), None)
                for m in (baseline, model)]
        if all(pick):
            pairs.append(tuple(measurements(r, key) for r in pick))
    return pairs


def claim_line(claim, lr, model, pairs, check="–"):
    """One row of the claims table; both medians over the steps where both runs have a number (a run that
    diverged has none after it; NaN is no number, while an overflow to inf still counts as larger); `check`:
    the probe-check cell (β rows)."""
    pairs = [tuple({s: m[s] for s in base.keys() & other.keys() if not math.isnan(base[s] + other[s])}
                   for m in (base, other)) for base, other in pairs]
    v = verdict(paired_ratios(pairs))
    share = "–" if not v["n"] else f"{v['smaller']:.0%} of {v['n']}"
    return (f"| {claim} | {lr} | {model} | {common.short_number(pooled_median(p[0] for p in pairs))} | "
            f"{common.short_number(pooled_median(p[1] for p in pairs))} | {common.short_number(v['ratio'])} "
            f"[{common.short_number(v['low'])}, {common.short_number(v['high'])}] | {share} | {v['verdict']} | "
            f"{check} |")


def claims_table(runs, settings):
    """summary.md's answer: per claim and lr, the baseline (first model) vs each other model, paired measurement
    by measurement (the same batch at the same step and seed): medians, the median ratio with its bootstrap
    95 % interval over measurements and seeds, the share where the compared model is smaller, the verdict."""
    baseline, first = runs[0]["model"], runs[0]["result"].get("config", {})
    settings = {k: first.get(k) if v is None else v for k, v in settings.items()}  # as the runs resolved them
    others = list(dict.fromkeys(r["model"] for r in runs if r["model"] != baseline))
    seeds, lrs = sorted({r.get("seed", 0) for r in runs}), sorted({r["lr"] for r in runs})
    lines = [f"## Does BN help optimization? {baseline} vs {', '.join(others)}", "",
             f"| claim | lr | compared model | {baseline} (baseline) | compared model's | ratio [95 % CI] | "
             "compared smaller in | verdict | probe check: ‖Δ∇L‖ / ‖∇L‖ at η_min, baseline / compared |",
             "|---|---|---|---|---|---|---|---|---|"]
    etas = settings.get("probe_etas") or []

    def check(key, model, lr):  # β rows: near 1 for both, β measures the probe's step (degeneracy_line)
        if key != "beta" or not etas:
            return "–"
        column = int(np.argmin(etas))
        return " / ".join(common.short_number(median_degeneracy(runs, m, lr, column)) for m in (baseline, model))
    for model in others:
        lines += [claim_line(claim, f"{lr:g}", model, claim_pairs(runs, baseline, model, lr, key),
                             check(key, model, lr)) for claim, key in claims_of(runs) for lr in lrs]
        lines.append(claim_line(BAND_CLAIM, "all", model, [(band_widths(runs, baseline, s),
                                                            band_widths(runs, model, s)) for s in seeds]))
    lines += ["", "Medians over the measurements after the first epoch that both models have (same seed and step), "
              f"pooled over {len(seeds)} seed(s); the "
              "ratio is the median of the per-measurement ratios (compared / baseline, same step, same batch), "
              f"its interval a percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the seeds, then of the "
              "measurements within each). 'holds': the whole interval below 1; 'does not hold': above 1; "
              "otherwise 'inconclusive'. Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".", ""]
    check = degeneracy_line(runs, settings)
    return "\n".join(lines + ([check, ""] if check else []))


def bn_summary_table(runs, link_prefix=""):
    """Markdown: per model and lr, over its seeds (mean ± sample std), accuracy, convergence epoch and each
    claim's median over the measurements after the first epoch, linking the run folders (run["dir"], relative
    to the analysis folder, behind `link_prefix`)."""
    claims = claims_of(runs)
    extra = [OPTIONAL_CLAIMS[key] for _, key in claims if key in OPTIONAL_CLAIMS]
    lines = ["| model | lr | status | final val acc % | test acc % at best val | final test acc % | "
             "convergence epoch | loss range over η | grad-pred. distance | β-smoothness | top Hessian eigenvalue | "
             + "".join(f"{name} | " for name in extra) + "runs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"
             + "---|" * len(extra)]
    for model, lr in dict.fromkeys((r["model"], r["lr"]) for r in sorted(runs, key=lambda r: r["lr"])):
        rs = [r for r in runs if (r["model"], r["lr"]) == (model, lr)]
        res = [r["result"] for r in rs]
        cells = [common.seeds_cell([x[k] for x in res], 100, 2) for k in ("final_val_acc", "test_acc_at_best_val",
                                                                   "final_test_acc")]
        cells.append(common.seeds_cell([x["convergence_epoch"] for x in res], digits=1 if len(rs) > 1 else 0))
        cells += [common.seeds_cell([pooled_median([measurements(r, key)]) for r in rs]) for _, key in claims]
        links = ", ".join(f"[{os.path.basename(r['dir'])}]({link_prefix}{r['dir']})" for r in rs)
        status = ", ".join(sorted({x["status"] for x in res}))
        lines.append(f"| {model} | {lr:g} | {status} | " + " | ".join(cells) + f" | {links} |")
    return "\n".join(lines + ["", "Probe and Hessian columns: each run's median over its measurements after the "
                              "first epoch, then mean ± sample std over seeds.", ""])


def write_bn_report(runs, out, settings, smooth=1):
    """Every Task 2 BN figure and summary.md, from the raw numbers alone; returns the figures written."""
    etas, unit = settings["probe_etas"], "" if settings.get("probe_scale") == "absolute" else "·lr"
    d = "the update/lr" if settings.get("probe_direction") == "update" else "−g"
    plot_loss_band(runs, os.path.join(out, "loss_band.png"), smooth)
    plot_probe(runs, os.path.join(out, "loss_variation.png"), "probe_losses", f"L(θ + ηd), d = {d}",
               f"loss variation: range of the loss along d over η ∈ {etas}{unit}")
    plot_probe(runs, os.path.join(out, "grad_predictiveness.png"), "probe_grad_dists", "‖∇L(θ) − ∇L(θ + ηd)‖",
               f"gradient predictiveness: change of the gradient along d = {d}, range over η")
    plot_probe(runs, os.path.join(out, "beta_smoothness.png"), "probe_betas", "max over η of ‖Δ∇L‖ / ‖ηd‖",
               "effective β-smoothness", band=False, reference=settings.get("probe_direction") != "update")
    plot_runs_curves(runs, os.path.join(out, "curves.png"))
    figures = [n for n in BN_FIGURES if n != "sharpness.png"]
    if any(r["arrays"].get("sharpness_top", np.zeros(0)).size for r in runs):
        plot_sharpness(runs, os.path.join(out, "sharpness.png"))
        figures.append("sharpness.png")
    common.write_text(os.path.join(out, "summary.md"), claims_table(runs, settings) + "\n" + bn_summary_table(runs))
    return figures


def stack_padded(arrays):
    """Arrays of unequal length (a run that stopped early) stacked as one [n, max_len, ...] array, NaN-padded;
    non-finite values become NaN so bands and means ignore them."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    tail = arrays[0].shape[1:] if arrays else ()
    out = np.full((len(arrays), max((len(a) for a in arrays), default=0), *tail), np.nan)
    for row, a in zip(out, arrays):
        row[:len(a)] = np.where(np.isfinite(a), a, np.nan)
    return out


def nan_reduce(fn, values, axis):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return fn(values, axis=axis)


def moving_average(values, window):
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.concatenate([np.full(window - 1, np.nan), np.convolve(values, kernel, mode="valid")])


def model_colours(runs):
    """Colour maps per model, in the order the models were given: the baseline in oranges, the next in blues."""
    models = list(dict.fromkeys(r["model"] for r in runs))
    return {m: COLOUR_FAMILIES[i % len(COLOUR_FAMILIES)] for i, m in enumerate(models)}


SEED_STYLES = ["-", "--", ":", "-."]  # a seed drawn alone: its line style


def model_name(model):
    return common.MODEL_LABELS.get(model, model)


def outcome(run):
    """'' for a run that trained, else what went wrong, for legends: diverged, or stalled (its best validation
    accuracy under twice chance)."""
    result = run.get("result") or {}
    if result.get("status") == "diverged":
        return f"diverged at epoch {result.get('epochs_run', '?')}"
    best = result.get("best_val_acc")
    if best is not None and best < 2 / result.get("config", {}).get("num_classes", 10):
        return f"stalled, best val {100 * best:.1f} %"
    return ""


def seed_groups(runs, model, lr):
    """[(label suffix, runs, line style)] of one model and lr: all seeds as one solid line (their mean) when every
    one trained; each seed alone, its outcome in the label and its own style, when one diverged or stalled (a
    mean would hide it)."""
    group = [r for r in runs if (r["model"], r["lr"]) == (model, lr)]
    if not any(outcome(r) for r in group):
        return [("", group, "-")] if group else []
    return [(f", seed {r.get('seed', 0)} ({outcome(r) or 'trained'})", [r],
             SEED_STYLES[r.get("seed", 0) % len(SEED_STYLES)]) for r in group]


def group_mean(group, key):
    """The arrays `key` of a group of runs averaged over them (padded_mean), or None when none has any."""
    arrays = [a for a in (r["arrays"].get(key, np.zeros(0)) for r in group) if a.size]
    return padded_mean(arrays) if arrays else None


def padded_mean(arrays):
    """Mean of arrays of unequal length at each index over those that reach it (non-finite values ignored)."""
    return nan_reduce(np.nanmean, stack_padded(arrays), 0)


def seeds_note(runs):
    """For figure titles: how the seeds were combined, when there are several ("" for one)."""
    n = max(collections.Counter((r["model"], r["lr"]) for r in runs).values())
    alone = any(label for m, lr in {(r["model"], r["lr"]) for r in runs} for label, *_ in seed_groups(runs, m, lr))
    return "" if n == 1 else (f"mean over {n} seeds, at each step over those that reached it" +
                              ("\nwhere a seed diverged or stalled: each seed alone, named in the legend"
                               if alone else ""))


def with_seeds_note(title, runs):
    return "\n".join(filter(None, [title, seeds_note(runs)]))


def scale_and_first_epoch(ax, values, steps_per_epoch):
    """Log y when the finite positive values span more than two decades; the top at 3 x their 99.5th
    percentile when a few spikes (a diverging step) lie above it, with a note of how many, so that no single
    spike sets the scale; the first epoch shaded and labelled, as the verdicts leave it out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    top = 3 * np.percentile(v, 99.5) if v.size else math.inf
    if common.spans_decades(np.minimum(v, top)):
        ax.set_yscale("log")
    if v.size and v.max() > top:
        ax.set_ylim(top=top)
        ax.text(0.01, 0.99, f"{int((v > top).sum())} value(s) above the top, not shown", transform=ax.transAxes,
                va="top", fontsize=7)
    if steps_per_epoch:
        ax.axvspan(0, steps_per_epoch, color="0.85", zorder=0, label="epoch 1 (not in the verdicts)")
    ax.grid(alpha=0.3)


def plot_loss_band(runs, path, smooth=1):
    """Course 2.3.1: per step, the max and min training loss over the learning rates, one band per model (mean
    over seeds per step; one band per seed when a seed of the model diverged or stalled)."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    lrs, colours, shown = sorted({r["lr"] for r in runs}), model_colours(runs), []
    for model in colours:
        split = any(label for lr in lrs for label, *_ in seed_groups(runs, model, lr))
        seeds = sorted({r.get("seed", 0) for r in runs if r["model"] == model}) if split else [None]
        for k, seed in enumerate(seeds):
            mine = [r for r in runs if seed is None or r.get("seed", 0) == seed]
            means = [group_mean([r for r in mine if (r["model"], r["lr"]) == (model, lr)], "step_loss") for lr in lrs]
            losses = stack_padded([moving_average(m, smooth) for m in means if m is not None])
            lo, hi = nan_reduce(np.nanmin, losses, 0), nan_reduce(np.nanmax, losses, 0)
            notes = "; ".join(f"lr {r['lr']:g} {outcome(r)}" for r in mine if r["model"] == model and outcome(r))
            label = model_name(model) + ("" if seed is None else f", seed {seed}" + (f" ({notes})" if notes else ""))
            ax.fill_between(np.arange(losses.shape[1]), lo, hi, color=plt.get_cmap(colours[model])(0.45 + 0.3 * k),
                            alpha=0.5, lw=0, label=label)
            shown += [lo, hi]
    scale_and_first_epoch(ax, np.concatenate(shown), int(runs[0]["arrays"].get("steps_per_epoch", 0)))
    ax.set(xlabel="training step", ylabel="training loss",
           title=with_seeds_note(f"loss band: min..max training loss over lr in {{{', '.join(f'{lr:g}' for lr in lrs)}}}"
                                 + (f" (moving average {smooth})" if smooth > 1 else ""), runs))
    ax.legend(fontsize=8)
    common.save_figure(fig, path)


def lr_panels(runs):
    """(pyplot, figure, [(axis, lr)] one per learning rate in increasing order, the models' colour maps)."""
    plt = common.pyplot()
    lrs = sorted({r["lr"] for r in runs})
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.8), squeeze=False)
    return plt, fig, list(zip(axes[0], lrs)), model_colours(runs)


def plot_probe(runs, path, key, ylabel, title, band=True, reference=False):
    """One panel per learning rate (sorted), one colour family per model: the band over step sizes η of a
    probe quantity (band=True) or its max over η, at every probed step, averaged over seeds; reference: β's
    value 1/η_min when the gradient changes by its own norm over the smallest step along −g."""
    plt, fig, panels, colours = lr_panels(runs)
    for ax, lr in panels:
        shown = []
        for model, (suffix, group, style) in ((m, g) for m in colours for g in seed_groups(runs, m, lr)):
            values, steps = group_mean(group, key), group_mean(group, "probe_step")
            if values is None:
                continue
            colour, label = plt.get_cmap(colours[model])(0.65), model_name(model) + suffix
            lo, hi = nan_reduce(np.nanmin, values, 1), nan_reduce(np.nanmax, values, 1)
            if band:
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.5, lw=0, label=label,
                                hatch=None if style == "-" else "//")
            else:
                ax.plot(steps, hi, style, color=colour, lw=1.2, label=label)
            shown += [lo, hi] if band else [hi]
        if reference:
            eta = min(float(np.min(r["arrays"]["etas"])) for r in runs if r["lr"] == lr)
            ax.axhline(1 / eta, color="k", ls="--", lw=1, label=f"1/η_min = {1 / eta:g} (‖Δ∇L‖ = ‖∇L‖)")
        scale_and_first_epoch(ax, np.concatenate(shown) if shown else [], int(runs[0]["arrays"]["steps_per_epoch"]))
        ax.set(title=f"lr {lr:g}", xlabel="training step", ylabel=ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(with_seeds_note(title, runs), fontsize=10)
    common.save_figure(fig, path)


def plot_runs_curves(runs, path):
    """Training loss and validation accuracy per epoch (mean over the seeds that reached each epoch): one colour
    family per model, darker for a larger lr, the legend sorted by model and lr."""
    plt = common.pyplot()
    lrs, colours = sorted({r["lr"] for r in runs}), model_colours(runs)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, (i, lr) in itertools.product(colours, enumerate(lrs)):
        for suffix, group, style in seed_groups(runs, model, lr):
            histories = [r["history"] for r in group if r["history"]]
            if not histories:
                continue
            mean = {k: padded_mean([[e[k] for e in h] for h in histories]) for k in ("train_loss", "val_acc")}
            label = f"{model_name(model)}, lr {lr:g}{suffix}"
            style = dict(color=plt.get_cmap(colours[model])(0.35 + 0.6 * (i + 1) / len(lrs)), marker=".",
                         ls=style, label=label)
            epochs = np.arange(1, max(len(h) for h in histories) + 1)
            ax_loss.plot(epochs, mean["train_loss"], **style)
            ax_acc.plot(epochs, 100 * mean["val_acc"], **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2)
    fig.suptitle(seeds_note(runs), fontsize=9)
    common.save_figure(fig, path)


def stability_limit(cfg, lr, steps_per_epoch, total):
    """(steps, 2(1 + μ)/lr_t) over the run, lr_t from the run's own schedule (common.lr_schedule); steps where
    lr_t is 0 are left out."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    factor = common.lr_schedule(probe, cfg.get("schedule", "cosine_step"), max(total // max(steps_per_epoch, 1), 1),
                                steps_per_epoch, total).lr_lambdas[0]
    steps = np.arange(0, total, max(total // 500, 1))
    lr_t = lr * np.array([factor(int(s)) for s in steps])
    keep = lr_t > 0
    return steps[keep], 2 * (1 + cfg.get("momentum", 0.0)) / lr_t[keep]


def plot_sharpness(runs, path):
    """Top Hessian eigenvalue over training (mean over seeds), one panel per lr, with the stability limit of
    full-batch gradient descent with momentum μ, 2(1 + μ)/lr_t (Cohen et al. 2021): a reference only, since
    training takes mini-batch steps."""
    plt, fig, panels, colours = lr_panels(runs)
    for ax, lr in panels:
        shown = []
        for model, (suffix, group, style) in ((m, g) for m in colours for g in seed_groups(runs, m, lr)):
            steps = group_mean(group, "sharpness_step")
            for key, coords, shade, marker in (("sharpness_top", "", 0.65, "."),
                                               (f"sharpness_{FILTER}top", ", filter coords", 0.95, "^")):
                top = group_mean(group, key)
                if top is not None:
                    ax.plot(steps, top, style, color=plt.get_cmap(colours[model])(shade), marker=marker, ms=3,
                            lw=1.2, label=model_name(model) + coords + suffix)
                    shown.append(top)
        run = next(r for r in runs if r["lr"] == lr)
        cfg, per_epoch = run["result"]["config"], int(run["arrays"]["steps_per_epoch"])
        if cfg["opt"] in ("sgd", "sgd_scratch"):
            total = run["result"].get("steps") or cfg["epochs"] * per_epoch
            steps, limit = stability_limit(cfg, lr, per_epoch, total)
            top = 10 * max((float(np.nanmax(v)) for v in shown), default=np.inf)  # as lr_t → 0 the limit → ∞:
            ax.plot(steps[limit <= top], limit[limit <= top], "k--", lw=1,  # it must not set the scale
                    label=f"2(1+μ)/lr_t, μ = {cfg.get('momentum', 0):g}: full-batch GD's limit")
        scale_and_first_epoch(ax, np.concatenate(shown) if shown else [], per_epoch)
        ax.set(title=f"lr {lr:g}", xlabel="training step", ylabel="top Hessian eigenvalue", yscale="log")
        ax.legend(fontsize=7)
    fig.suptitle(with_seeds_note("sharpness over training (fixed training batch, BN in train mode)", runs), fontsize=10)
    common.save_figure(fig, path)


# -- the analysis ------------------------------------------------------------------------------

def run_key(model, lr, seed):
    """A run's name in runs/ and its prefix in bn_analysis.npz; seed 0 keeps the name it had before --seeds."""
    return f"{model}_lr{lr:g}" + (f"_s{seed}" if seed else "")


def analysis_plan(args):
    """(model, lr, seed) of every run of the analysis, in the order they run."""
    return [(m, lr, s) for s in range(args.seeds) for m in args.models for lr in args.lrs]


def reused_run(args, model, lr, out, seed):
    """(run folder, its config, the probe settings, the finished run reusable there or None)."""
    run_dir = os.path.join(out, "runs", run_key(model, lr, seed))
    cfg = run_config(args, model, lr, run_dir, seed)
    probe_settings = {k: getattr(args, k) for k in PROBE_KEYS}
    return run_dir, cfg, probe_settings, reusable_run(run_dir, cfg, probe_settings, same_numerics(args))


def same_numerics(args):
    """Whether a reused run must have the precision asked for (not with --precision auto: whatever auto
    resolved to where it ran)."""
    return args.train.get("precision", "auto") != "auto"


def analysis_finished(argv):
    """Whether every run of the analysis that these flags describe is finished in its --out (a rerun only
    redraws the figures and summary)."""
    args = parse_args(argv)
    out = args.train.get("out") or os.path.join("runs", "bn_analysis")
    return all(reused_run(args, model, lr, out, seed)[-1] is not None for model, lr, seed in analysis_plan(args))


def analysis_run(args, model, lr, out, seed=0):
    """Train one model at one lr and seed with the probe, or reuse the finished run of an earlier call with the
    same training config and probe settings; None when interrupted."""
    run_dir, cfg, probe_settings, reused = reused_run(args, model, lr, out, seed)
    probe_file = os.path.join(run_dir, "probe.npz")
    if reused is not None:
        print(f"reusing {run_dir}", flush=True)
        return dict(model=model, lr=lr, seed=seed, dir=os.path.relpath(run_dir, out), **reused)
    etas = [m * (lr if args.probe_scale == "relative" else 1.0) for m in args.probe_etas]
    probe = BNProbe(common.loss_fn(cfg["loss"], cfg["label_smoothing"]), etas, args.probe_every,
                    common.resolve_device(cfg["device"]), args.probe_direction, lr, args.sharpness_every,
                    args.sharpness_images, args.sharpness_iters, common.Numerics(args.probe_precision),
                    args.sharpness_coords)
    partial = os.path.join(run_dir, "probe_partial.npz")
    restored = interrupted_probe(run_dir, cfg, probe_settings, same_numerics(args))
    if restored is not None:  # Ctrl-C'd earlier: the run resumes from last.pt, the probe from its arrays
        probe.restore(restored)
        cfg = {**cfg, "resume": True, "overwrite": False}
        print(f"resuming {run_dir} at step {len(restored['step_loss'])}", flush=True)
    elif os.path.exists(probe_file):  # trained again: a kill before the new probe.npz must not leave the old one
        os.remove(probe_file)
    result = common.train(cfg, step_hook=probe)
    arrays, settings = probe.arrays(), np.array(json.dumps(probe_settings))
    if result["status"] == "interrupted":
        common.save_npz(partial, settings=settings, **arrays)
        return None
    common.save_npz(probe_file, settings=settings, **arrays)
    if os.path.exists(partial):
        os.remove(partial)
    return dict(model=model, lr=lr, seed=seed, dir=os.path.relpath(run_dir, out), result=result,
                history=common.read_metrics(run_dir), arrays=arrays)


def same_settings(config_file, cfg, arrays, probe_settings, numerics=True):
    """Whether a run folder's config.json is `cfg` (numerics=False: whatever precision --precision auto resolved
    to) and the probe arrays saved there (their 'settings' entry is taken out of `arrays`) were recorded with
    `probe_settings`."""
    saved_probe = json.loads(str(arrays.pop("settings"))) if "settings" in arrays else None
    if saved_probe is not None:
        saved_probe.setdefault("probe_precision", "fp32")  # probes made before the flag: fp32 on the CPU
        saved_probe.setdefault("sharpness_coords", "raw")  # and before this one: the raw Hessian
    return not common.config_differences(common.load_json(config_file), cfg, numerics) and \
        saved_probe == json.loads(json.dumps(probe_settings))


def interrupted_probe(run_dir, cfg, probe_settings, numerics=True):
    """The probe arrays of an interrupted run in run_dir that --resume can continue (same config and probe
    settings, last.pt at the very step the arrays end), else None."""
    paths = [os.path.join(run_dir, n) for n in ("probe_partial.npz", "last.pt", "config.json")]
    if not all(os.path.exists(p) for p in paths):
        return None
    arrays = common.load_npz(paths[0])
    progress = common.read_checkpoint(paths[1])["progress"]
    same = same_settings(paths[2], cfg, arrays, probe_settings, numerics)
    at_step = len(arrays["step_loss"]) == progress["global_step"]
    return arrays if same and at_step else None


def reusable_run(run_dir, cfg, probe_settings, numerics=True):
    """{result, history, arrays} of a finished run in run_dir made with this config and these probe settings,
    else None (nothing there, interrupted, or other settings: it is trained again from the start)."""
    files = [os.path.join(run_dir, n) for n in ("probe.npz", "result.json", "config.json")]
    if not all(os.path.exists(f) for f in files):
        return None
    result = common.load_json(files[1])
    arrays = common.load_npz(files[0])
    if result.get("status") not in ("completed", "diverged") or not same_settings(files[2], cfg, arrays,
                                                                                   probe_settings, numerics):
        print(f"{run_dir} is not a finished run of these settings", flush=True)
        return None
    return dict(result=result, history=common.read_metrics(run_dir), arrays=arrays)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        try:
            runs, settings = load_bn_analysis(args.replot)
        except common.USER_ERRORS as e:
            return common.fail(e)
        figures = write_bn_report(runs, args.replot, settings, args.smooth)
        print(f"redrew {', '.join(figures)} and summary.md in {args.replot}")
        return 0
    out = args.train.get("out") or os.path.join("runs", "bn_analysis")
    try:
        with common.folder_lock(out):
            return analysis(args, out)
    except common.USER_ERRORS as e:
        return common.fail(e)


def analysis(args, out):
    """Every (model, lr) run, then the raw numbers, figures and summary.md in `out`; the exit code."""
    runs, plan = [], analysis_plan(args)
    for i, (model, lr, seed) in enumerate(plan):
        print(f"=== run {i + 1} of {len(plan)}: {model}, lr {lr:g}, seed {seed}", flush=True)
        run = analysis_run(args, model, lr, out, seed)
        if run is None:
            print("interrupted; rerun the same command: finished runs are reused, the interrupted one resumes",
                  flush=True)
            return 130
        runs.append(run)
    first = runs[0]["result"]["config"]  # the settings every run shares, as the runs resolved them
    settings = {**{k: getattr(args, k) for k in ("models", "lrs", "seeds")}, **{k: first[k] for k in RECORDED},
                "paper": args.paper, **{k: getattr(args, k) for k in PROBE_KEYS}}
    if os.path.exists(os.path.join(out, "summary.md")):  # written last: without it the folder is incomplete
        os.remove(os.path.join(out, "summary.md"))
    save_bn_analysis(runs, out, settings)
    figures = write_bn_report(runs, out, settings, args.smooth)
    print(claims_table(runs, settings))
    print(f"{', '.join(figures)}, summary.md and raw numbers in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
