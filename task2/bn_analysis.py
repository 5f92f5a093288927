"""How BatchNorm helps optimization (Task 2.3): VGG-A with and without BN, trained from scratch at
every learning rate of --lrs, with the loss recorded at every step and Santurkar et al.'s probe
(loss variation, gradient predictiveness, effective β-smoothness) every --probe-every steps.

    python task2/bn_analysis.py                        # 2 models x 4 learning rates, Adam, 20 epochs
    python task2/bn_analysis.py --replot runs/bn_analysis   # redraw figures and table from raw numbers

Writes to --out (default runs/bn_analysis): runs/<model>_lr<lr>/ (ordinary run folders plus probe.npz),
bn_analysis.json + bn_analysis.npz (raw numbers), summary.md and the figures. A finished run is reused
when the command is repeated, so an interrupted analysis resumes where it stopped.
"""
import argparse
import math
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402

ANALYSIS_KEYS = ("models", "lrs", "probe_every", "probe_etas", "smooth", "replot")
BN_FIGURES = ["loss_band.png", "loss_variation.png", "grad_predictiveness.png", "beta_smoothness.png", "curves.png"]
MODEL_COLOURS = {"vgg_a": "tab:orange", "vgg_a_bn": "tab:blue", "vgg_a_res_bn": "tab:green", "resvgg16": "tab:purple"}


def parse_args(argv=None):
    parser = common.add_train_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), common.TASK2_LR)
    parser.set_defaults(**common.TASK2_DEFAULTS, diverge_patience=0)
    g = parser.add_argument_group("BN analysis")
    g.add_argument("--models", nargs="+", default=["vgg_a", "vgg_a_bn"], choices=common.MODELS)
    g.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 1e-4, 5e-4], help="one run per model and lr")
    g.add_argument("--probe-every", type=int, default=50, help="probe every K training steps")
    g.add_argument("--probe-etas", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0, 10.0],
                   help="probe step sizes as multiples of each run's lr")
    g.add_argument("--smooth", type=int, default=1, help="moving-average window of the loss-band figure")
    g.add_argument("--replot", metavar="DIR", help="only redraw figures and summary.md from DIR's raw numbers")
    args = parser.parse_args(argv)
    if args.lr is not None:
        parser.error("use --lrs: the analysis runs every learning rate given there")
    if args.probe_every < 1:
        parser.error("--probe-every must be at least 1")
    return args


# -- the probe, a step hook of common.train ----------------------------------------------------

class BNProbe:
    """A train() step hook for Task 2: records the training loss of every step and, every `every`
    steps, runs probe_along_gradient on the current batch (BN in train mode, batch statistics, as in
    the training step) with step sizes `etas`."""

    def __init__(self, criterion, etas, every, device):
        self.criterion, self.etas, self.every, self.device = criterion, list(etas), every, device
        self.step_losses, self.probes = [], []

    def __call__(self, model, x, y, loss, step):
        self.step_losses.append(loss.detach())
        if step % self.every == 0:
            def loss_closure():
                with common.autocast(self.device):
                    logits = model(x)
                return self.criterion(logits.float(), y)
            self.probes.append(dict(step=step, **common.probe_along_gradient(model, loss_closure, self.etas)))

    def arrays(self):
        """Everything recorded, as numpy arrays (probe_* are [n_probes] or [n_probes, n_etas])."""
        losses = torch.stack(self.step_losses).double().cpu().numpy() if self.step_losses else np.zeros(0)
        arrays = dict(step_loss=losses, etas=np.array(self.etas), probe_every=np.array(self.every))
        for key in ("step", "loss", "grad_norm", "losses", "grad_dists", "betas"):
            arrays[f"probe_{key}"] = np.array([p[key] for p in self.probes], dtype=np.float64).reshape(
                len(self.probes), *([len(self.etas)] if key in ("losses", "grad_dists", "betas") else []))
        return arrays


# -- raw numbers, figures and summary ----------------------------------------------------------

def save_bn_analysis(runs, out, settings):
    """The raw numbers of a BN analysis: bn_analysis.json (settings, per-run results and epoch
    metrics) and bn_analysis.npz (per-step losses and probe arrays, keys '<model>/lr<lr>/<name>')."""
    np.savez(os.path.join(out, "bn_analysis.npz"),
             **{f"{r['model']}/lr{r['lr']:g}/{k}": v for r in runs for k, v in r["arrays"].items()})
    common.write_json(os.path.join(out, "bn_analysis.json"), dict(
        settings=settings, runs=[{k: r[k] for k in ("model", "lr", "dir", "result", "history")} for r in runs]))


def load_bn_analysis(out):
    """(runs with their arrays, settings) from the two raw-number files save_bn_analysis writes."""
    saved = common.load_json(os.path.join(out, "bn_analysis.json"))
    with np.load(os.path.join(out, "bn_analysis.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    runs = saved["runs"]
    for r in runs:
        prefix = f"{r['model']}/lr{r['lr']:g}/"
        r["arrays"] = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return runs, saved["settings"]


def bn_run_stats(run):
    """Headline numbers of one run's probes: mean over probed steps of the loss range over η, median
    over probed steps of the largest gradient change, and median effective β-smoothness."""
    a = run["arrays"]
    if a["probe_losses"].size == 0:
        return dict(loss_band=float("nan"), grad_dist=float("nan"), beta=float("nan"))
    return dict(loss_band=float(np.nanmean(np.ptp(a["probe_losses"], axis=1))),
                grad_dist=float(np.nanmedian(nan_reduce(np.nanmax, a["probe_grad_dists"], 1))),
                beta=float(np.nanmedian(nan_reduce(np.nanmax, a["probe_betas"], 1))))


def short_number(v):
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"


def bn_summary_table(runs, link_prefix=""):
    """Markdown: per model and lr, accuracy and the probe headline numbers, each row linking its run
    folder (run["dir"], relative to the analysis folder, behind `link_prefix`); below it, per model,
    the mean width of the min..max training-loss band over the learning rates."""
    lines = ["| model | lr | status | final val acc % | test acc % at best val | final test acc % | "
             "convergence epoch | loss range over η (mean) | grad-pred. distance (median) | β-smoothness (median) | "
             "run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        res, st = r["result"], bn_run_stats(r)
        lines.append(f"| {r['model']} | {r['lr']:g} | {res['status']} | {common.percent(res['final_val_acc'])} | "
                     f"{common.percent(res['test_acc_at_best_val'])} | {common.percent(res['final_test_acc'])} | "
                     f"{res['convergence_epoch'] if res['convergence_epoch'] is not None else '–'} | "
                     f"{short_number(st['loss_band'])} | {short_number(st['grad_dist'])} | "
                     f"{short_number(st['beta'])} | "
                     f"[{os.path.basename(r['dir'])}]({link_prefix}{r['dir']}) |")
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in runs):
        losses = stack_padded([r["arrays"]["step_loss"] for r in runs if r["model"] == model])
        width = nan_reduce(np.nanmax, losses, 0) - nan_reduce(np.nanmin, losses, 0)
        lines.append(f"- {model}: mean width of the training-loss band over the learning rates "
                     f"(max_curve − min_curve, course 2.3.1): {short_number(float(np.nanmean(width)))}")
    return "\n".join(lines) + "\n"


def write_bn_report(runs, out, smooth=1):
    """Every Task 2 BN figure and summary.md, from the raw numbers alone."""
    plot_loss_band(runs, os.path.join(out, "loss_band.png"), smooth)
    plot_probe(runs, os.path.join(out, "loss_variation.png"), "probe_losses", "L(θ − ηg)",
               "loss variation: range of the loss along the gradient over step sizes η")
    plot_probe(runs, os.path.join(out, "grad_predictiveness.png"), "probe_grad_dists", "‖∇L(θ) − ∇L(θ − ηg)‖",
               "gradient predictiveness: change of the gradient along the gradient, range over η")
    plot_probe(runs, os.path.join(out, "beta_smoothness.png"), "probe_betas", "max over η of ‖Δ∇L‖ / ‖ηg‖",
               "effective β-smoothness", log=True, band=False)
    plot_runs_curves(runs, os.path.join(out, "curves.png"))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(bn_summary_table(runs))


def stack_padded(arrays):
    """Rows of unequal length (a run that stopped early) as one [n, max_len] array, NaN-padded;
    non-finite values become NaN so bands ignore them."""
    out = np.full((len(arrays), max((len(a) for a in arrays), default=0)), np.nan)
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


def plot_loss_band(runs, path, smooth=1):
    """Course 2.3.1: per step, the max and min training loss over the learning rates, one band per model."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for model in dict.fromkeys(r["model"] for r in runs):
        losses = stack_padded([moving_average(r["arrays"]["step_loss"], smooth) for r in runs if r["model"] == model])
        steps = np.arange(losses.shape[1])
        lo, hi = nan_reduce(np.nanmin, losses, 0), nan_reduce(np.nanmax, losses, 0)
        ax.fill_between(steps, lo, hi, color=MODEL_COLOURS.get(model), alpha=0.45, lw=0, label=f"{model}")
    lrs = ", ".join(f"{lr:g}" for lr in dict.fromkeys(r["lr"] for r in runs))
    ax.set(xlabel="training step", ylabel="training loss",
           title=f"loss landscape band: min..max training loss over lr in {{{lrs}}}"
                 + (f" (moving average {smooth})" if smooth > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    common.save_figure(fig, path)


def plot_probe(runs, path, key, ylabel, title, log=False, band=True):
    """One panel per learning rate, BN vs no-BN: the band over step sizes η of a probe quantity
    (band=True), or its max over η (band=False), at every probed step."""
    plt = common.pyplot()
    lrs = list(dict.fromkeys(r["lr"] for r in runs))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.8), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for r in (r for r in runs if r["lr"] == lr):
            a = r["arrays"]
            values = np.where(np.isfinite(a[key]), a[key], np.nan)
            colour = MODEL_COLOURS.get(r["model"])
            if values.size == 0:
                continue
            if band:
                ax.fill_between(a["probe_step"], nan_reduce(np.nanmin, values, 1), nan_reduce(np.nanmax, values, 1),
                                color=colour, alpha=0.45, lw=0, label=r["model"])
            else:
                ax.plot(a["probe_step"], nan_reduce(np.nanmax, values, 1), color=colour, lw=1.2, label=r["model"])
        ax.set(title=f"lr {lr:g}", xlabel="training step", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    common.save_figure(fig, path)


def plot_runs_curves(runs, path):
    """Training loss and validation accuracy per epoch of every run: colour = model, shade = lr."""
    plt = common.pyplot()
    lrs = list(dict.fromkeys(r["lr"] for r in runs))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        epochs = [m["epoch"] for m in r["history"]]
        style = dict(color=MODEL_COLOURS.get(r["model"]), alpha=1.0 - 0.6 * lrs.index(r["lr"]) / max(len(lrs), 1),
                     marker=".", label=f"{r['model']} lr {r['lr']:g}")
        ax_loss.plot(epochs, [m["train_loss"] for m in r["history"]], **style)
        ax_acc.plot(epochs, [m["val_acc"] for m in r["history"]], **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2)
    common.save_figure(fig, path)


# -- the analysis ------------------------------------------------------------------------------

def analysis_run(args, base, model, lr, out):
    """Train one model at one lr with the probe, or reuse a finished run of an earlier call with the
    same settings."""
    run_dir = os.path.join(out, "runs", f"{model}_lr{lr:g}")
    probe_file, config_file = os.path.join(run_dir, "probe.npz"), os.path.join(run_dir, "config.json")
    cfg = common.config_from_args(argparse.Namespace(**{**base, "model": model, "lr": lr, "out": run_dir,
                                                         "resume": False, "overwrite": True}))
    etas = [m * lr for m in args.probe_etas]
    if os.path.exists(probe_file) and os.path.exists(os.path.join(run_dir, "result.json")):
        saved = common.load_json(config_file)
        with np.load(probe_file) as npz:
            arrays = {k: npz[k] for k in npz.files}
        same_training = all(saved.get(k) == v for k, v in cfg.items() if k not in common.RUNTIME_KEYS)
        same_probe = len(arrays["etas"]) == len(etas) and np.allclose(arrays["etas"], etas) and \
            int(arrays.get("probe_every", -1)) == args.probe_every
        if same_training and same_probe:
            print(f"reusing {run_dir}", flush=True)
            return dict(model=model, lr=lr, dir=os.path.relpath(run_dir, out),
                        result=common.load_json(os.path.join(run_dir, "result.json")),
                        history=common.read_metrics(run_dir), arrays=arrays)
        print(f"{run_dir} was made with other settings; training it again", flush=True)
    probe = BNProbe(common.loss_fn(cfg["loss"], cfg["label_smoothing"]), etas, args.probe_every,
                    common.resolve_device(cfg["device"]))
    result = common.train(cfg, step_hook=probe)
    if result["status"] == "interrupted":
        return None
    arrays = probe.arrays()
    np.savez(probe_file, **arrays)
    return dict(model=model, lr=lr, dir=os.path.relpath(run_dir, out), result=result,
                history=common.read_metrics(run_dir), arrays=arrays)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        runs, settings = load_bn_analysis(args.replot)
        write_bn_report(runs, args.replot, args.smooth)
        print(f"redrew {', '.join(BN_FIGURES)} and summary.md in {args.replot}")
        return 0
    out = args.out or os.path.join("runs", "bn_analysis")
    os.makedirs(out, exist_ok=True)
    base = {k: v for k, v in vars(args).items() if k not in ANALYSIS_KEYS}
    runs = []
    for i, (model, lr) in enumerate((m, lr) for m in args.models for lr in args.lrs):
        print(f"=== run {i + 1} of {len(args.models) * len(args.lrs)}: {model}, {args.opt} lr {lr:g}", flush=True)
        try:
            run = analysis_run(args, base, model, lr, out)
        except common.USER_ERRORS as e:
            return common.fail(e)
        if run is None:
            print("interrupted; rerun the same command to resume (finished runs are reused)", flush=True)
            return 130
        runs.append(run)
    settings = {k: getattr(args, k) for k in ("models", "lrs", "probe_every", "probe_etas", "opt", "epochs",
                                              "batch_size", "subset", "width", "seed")}
    save_bn_analysis(runs, out, settings)
    write_bn_report(runs, out, args.smooth)
    print(bn_summary_table(runs))
    print(f"figures, summary.md and raw numbers in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
