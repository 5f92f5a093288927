"""The report: tables.md and figures/ of a results folder, made from its result files only (nothing is
trained or computed here), optionally copied into README's results section.

    python task2/report.py OUT [--profile P] [--update-readme]     # OUT/tables.md and OUT/figures/

tables.md: the hyper-parameter search, the grid, loss functions, Task 2, the BN analyses, sharpness, spectra
and paths (or, for a profile that is a list of runs such as cpu-full, the side-by-side table with the report),
every row linking its run folder, cells over several seeds as mean ± sample std (n); figures/ (seed 0): curves
of every run, filters, surfaces, interpolation, BN figures.
"""
import argparse
import collections
import glob
import hashlib
import itertools
import os
import re
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

import bn_analysis  # noqa: E402
import common  # noqa: E402
import landscape  # noqa: E402
from reproduce import (  # noqa: E402
    ADAM_HESSIAN, ADAM_HESSIAN_SEEDS, BN_DIR, BN_PAIR, BN_PAPER_DIR, BN_TRAIN_MODE, FAST_PROXY, FINISHED,
    FULL_SCALE_SURFACE, GRIDS, HEADLINE_NAME, GRID_ACTS, GRID_LOSSES, GRID_OPTS, HP_RUNS, INTERP, LOSS_RUNS,
    NLL_CHECK, PROFILES, PROXY_256, PROXY_BASE, REPORT_LIGHT_GRID, RETRAIN, SHARPNESS_ROWS, SPECTRA, T1_FILTERS,
    T1_INTERP, T1_INTERP_FLAGS, T1_SURFACES, T2_MODELS, T2_OPTS, TRAJECTORY, VISUALIZE, adam_hessian_folder,
    best_grid_run, full_scale_config, grid, grid_name, light_grid_name, off_plan, read_result,
    run_dir, seed_name, seed_results, surface_complete, surface_folder, t2_name)

CURVE_STAMPS = "stamps.json"  # under figures/curves/: what each curve figure was drawn from
TABLES_ONLY = ("<!-- tables.md only -->", "<!-- /tables.md only -->")  # a long table README leaves out


# -- tables --------------------------------------------------------------------------------

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
    """A table cell of one result field over the seeds of a run (common.seeds_cell)."""
    return common.seeds_cell([r[field] for r in results], scale, digits)


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
                 "nll twin are the same training run up to floating-point nondeterminism (tests check that loss, "
                 "gradients and a run's weights agree bit for bit). " + twin_differences(out)]


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
        shown = "–" if not ckpt else f"[{ckpt}]({ckpt})" if os.path.exists(os.path.join(out, ckpt)) else \
            f"`{ckpt}` (not committed)"  # checkpoints stay out of git: no dead link
        md.append(row([label, shown, hessian_cell(h, "top_eigenvalue"),
                       hessian_cell(h, "bottom_eigenvalue"), h["iterations"] if h else "–",
                       f"first {info['settings']['n_items']} {info['settings']['split']} images" if info else "–"]))
    return md


COORDS_WORDS = {"raw": "in the parameters (raw)", "filter": "filter-normalized (D·H·D)"}


def spectrum_section(out):
    """Table 7 and figures/spectra.png: the Hessian of VGG-A and VGG-A + BN (both BN modes) at the checkpoint, in
    the parameters and in filter-normalized coordinates."""
    md = ["### 7. The Hessian's spectrum at the checkpoint: VGG-A vs VGG-A + BN (Adam runs)", "",
          *table_head("model", "BN mode", "coordinates", "top eigenvalue", "trace (Hutchinson)",
                      "largest block top eigenvalue", "images", "seeds", "folder")]
    infos = {coords: {} for coords in common.HESSIAN_COORDS}
    for name, model, mode, coords in SPECTRA:
        path = os.path.join(out, "landscapes", name, "surface.json")
        info = common.load_json(path) if os.path.exists(path) else {}
        s, h = info.get("spectrum"), info.get("hessian")
        if not s:
            md.append(row([model, mode, coords, *["–"] * 5, "missing"]))
            continue
        infos[coords][f"{common.MODEL_LABELS[model]}, BN {mode}" if model != "vgg_a" else "VGG-A (no BN)"] = s
        top_block = max(s.get("blocks", []), key=lambda b: b["top"]["mean"], default=None)
        trace = s.get("trace")
        md.append(row([model, mode, coords,
                       f"{h['top_eigenvalue']:.4g} ± {h['top_eigenvalue_std']:.2g}" if h else "–",
                       f"{trace['mean']:.4g} ± {trace['std']:.2g} (SE {trace['stderr'][0]:.2g})" if trace else "–",
                       f"{top_block['top']['mean']:.4g} ({top_block['name']})" if top_block else "–", s["images"],
                       s["repeats"], link(out, os.path.join(out, "landscapes", name))]))
    infos = {coords: found for coords, found in infos.items() if found}
    if infos:
        plot_spectra(infos, os.path.join(out, "figures", "spectra.png"))
    md += ["", "± is the standard deviation over the seeds (Lanczos starts, Hutchinson and SLQ probes); SE "
           "is the first seed's Hutchinson standard error. VGG-A has no BN, so its one spectrum serves both "
           "modes; `train` normalizes with batch statistics (dropout off). `filter`: the Hessian of the loss along "
           "filter-normalized directions (D·H·D, the surfaces' coordinates), blind to the scale of a filter that "
           "feeds a BN channel, which the raw Hessian measures as 1/‖w‖²."]
    for coords, found in infos.items():
        md += ["", f"Per block, {COORDS_WORDS[coords]}:", ""] + per_block_table(found)
    return md


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
    """Per coordinates (a row each: raw, filter), the SLQ densities on one log axis and per block the top
    eigenvalue of each network; `infos`: {coords: {label: spectrum}}."""
    plt = common.pyplot()
    fig, axes = plt.subplots(len(infos), 2, figsize=(13, 4.5 * len(infos)), squeeze=False)
    for (coords, found), (ax_d, ax_b) in zip(infos.items(), axes):
        for (label, s), colour in zip(found.items(), ("tab:orange", "tab:blue", "tab:green")):
            if "density" in s:
                grid, _, curves = common.density_curves(s["density"])
                ax_d.plot(grid, np.maximum(np.mean(curves, 0), 1e-12), color=colour, label=label)
            if "blocks" in s:  # by position: the networks name their blocks differently (features.3 vs .4+5)
                ax_b.plot(np.arange(1, len(s["blocks"]) + 1), [b["top"]["mean"] for b in s["blocks"]], "o-",
                          color=colour, label=label)
        ax_d.set(yscale="log", ylim=(1e-8, None), xlabel="eigenvalue", ylabel="density (SLQ, Gaussian-smoothed)",
                 title=f"Hessian eigenvalue density, {COORDS_WORDS[coords]}")
        ax_b.set(yscale="log", xlabel="block, counted from the input (each network's block names: tables.md)",
                 ylabel="top eigenvalue of the block's Hessian", title=f"per block (the rest fixed), {coords}")
        ax_b.xaxis.get_major_locator().set_params(integer=True)
        for ax in (ax_d, ax_b):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.suptitle("The Hessian at the Adam checkpoints, VGG-A vs VGG-A + BN", fontsize=10)
    common.save_figure(fig, path)


def hessian_cell(h, key):
    """An eigenvalue, marked when Lanczos did not converge for it: the saved flag covers both extremes, so a
    one-start top (or bottom) whose own Ritz residual met the tolerance is not marked for the other's;
    surfaces made before Lanczos (power iteration, no residual test, no bottom eigenvalue) are marked as such."""
    if not h or key not in h:
        return "missing" if not h else "–"
    converged = h.get("converged")
    residual = h.get({"top_eigenvalue": "residual_top", "bottom_eigenvalue": "residual_bottom"}.get(key))
    if converged is False and h.get("repeats") == 1 and residual is not None and "tol" in h:
        converged = residual <= h["tol"] * max(abs(h["top_eigenvalue"]), abs(h.get("bottom_eigenvalue", 0.0)))
    note = {True: "", False: " (not converged)", None: " (power iteration, unchecked)"}[converged]
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


CURVE_INPUTS = ("metrics.jsonl", "config.json", "result.json")


def curve_stamp(code, folder):
    """What a run's curve figure is drawn from: `code` (a sha256 of the plotting code and matplotlib's version,
    taken once per report) and the run's files."""
    digest = code.copy()
    for name in CURVE_INPUTS:
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def draw_curves(out, previous=None):
    """Every finished run's (recipe try's, light grid run's) curves into figures/curves/<run>.png, drawn from its
    metrics.jsonl and config.json (or its curves.png copied when it has no metrics); a run under way has neither
    result.json nor curves.png and is left out. A figure of `previous` (the last report's figures/ folder) whose
    stamp in curves/stamps.json matches is copied, not drawn again (drawing is most of a report's time). Returns the
    run names."""
    named = [(name, run_dir(out, name, under)) for under in ("runs", "tries", "grid")
             if os.path.isdir(os.path.join(out, under)) for name in sorted(os.listdir(os.path.join(out, under)))]
    old_stamps = previous and os.path.join(previous, "curves", CURVE_STAMPS)
    old = common.load_json(old_stamps) if old_stamps and os.path.exists(old_stamps) else {}
    code, stamps = hashlib.sha256(matplotlib.__version__.encode()), {}
    with open(common.__file__, "rb") as f:  # the plotting code
        code.update(f.read())
    for name, folder in named:
        path = os.path.join(out, "figures", "curves", f"{name}.png")
        if all(os.path.exists(os.path.join(folder, f)) for f in CURVE_INPUTS):
            stamps[name] = curve_stamp(code, folder)
            if old.get(name) == stamps[name] and os.path.exists(os.path.join(previous, "curves", f"{name}.png")):
                shutil.copy(os.path.join(previous, "curves", f"{name}.png"), path)
            else:
                common.plot_curves(common.read_metrics(folder), path,
                                   common.describe(common.load_json(os.path.join(folder, "config.json"))))
        elif os.path.exists(os.path.join(folder, "curves.png")):
            shutil.copy(os.path.join(folder, "curves.png"), path)
            stamps[name] = None
        else:
            continue
    common.write_json(os.path.join(out, "figures", "curves", CURVE_STAMPS), stamps)
    return list(stamps)


def curves_section(out):
    count = len(glob.glob(os.path.join(glob.escape(out), "figures", "curves", "*.png")))
    return [f"Training curves of the {count} runs and tries: [figures/curves/](figures/curves/)."]


def figures_section(out):
    """Copy the landscape figures into figures/, draw VGG-A vs VGG-A + BN."""
    figures = os.path.join(out, "figures")
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
                                   os.path.join(figures, "vgg_a_vs_bn.png"), log=True,
                                   suptitle="Loss around the Adam checkpoints, filter-normalized directions x, y "
                                            "(same seed, same grid, one log10 colour scale)")
        listed.append(("vgg_a_vs_bn.png", "VGG-A vs VGG-A + BN: same seed, same grid, same (log10) colour scale"))
    if all(surfaces.values()):
        plot_bn_modes(surfaces["vgg_a"], surfaces["vgg_a_bn"], surfaces[BN_TRAIN_MODE],
                      os.path.join(figures, "vgg_a_vs_bn_bn_modes.png"),
                      suptitle="Loss around the Adam checkpoints: BN's running statistics frozen (eval) or "
                               "re-estimated at every point (train)")
        listed.append(("vgg_a_vs_bn_bn_modes.png", "VGG-A vs VGG-A + BN with BN's running statistics frozen (eval) "
                       "and re-estimated at every point (train), one log10 colour scale"))
    listed += [(f"{d}_{n}", f"Task 2 ({label}): {n[:-4].replace('_', ' ')}") for d, label in
               ((BN_DIR, "Adam, probe along the update"), (BN_PAPER_DIR, "--paper, SGD"))
               for n in bn_analysis.BN_FIGURES
               if os.path.exists(os.path.join(figures, f"{d}_{n}"))]
    return ["### Figures", "", "Training curves of every run: `figures/curves/`.", ""] + \
        [f"- {caption}: ![{caption}](figures/{name})" for name, caption in listed]


def full_scale_table(out, jobs):
    """The headline table: every full-scale job beside the report's number for it, over its seeds."""
    md = ["### Full scale: the report's numbers beside ours", "", *table_head(
        "run", "the report", "report %", "ours: test acc at best val", "difference (pp)", "convergence epoch: "
        "report / ours", "epochs", "wall time", "device; precision", "status")]
    for job in (job for job in jobs if job["under"] == "runs"):
        name, report_acc = job["name"], job["report_acc"]
        every, report = seed_results(out, name), f"{report_acc:.2f}" if report_acc else "–"
        off = {seed_of(r): off_plan(job, r) for r in every}  # e.g. a smoke run in this folder: not counted
        rs = [r for r in every if r["status"] in FINISHED and not off[seed_of(r)]]  # nor a seed under way
        status = "; ".join([common_value(every, "status")] + [f"seed {k}: other settings ({', '.join(d[:3])}), "
                                                              "not counted" for k, d in off.items() if d])
        epoch = "–" if job["report_epoch"] is None else str(job["report_epoch"])
        if not rs:
            md.append(row([name, job["report"], report, "–", "–", f"{epoch} / –", "–", "–", "–",
                           status if every else "missing"]))
            continue
        ours = [100 * r["test_acc_at_best_val"] for r in rs if r["test_acc_at_best_val"] is not None]
        diff = f"{statistics.mean(ours) - report_acc:+.2f}" if ours and report_acc else "–"
        wall = statistics.mean(wall_seconds(r) for r in rs)
        md.append(row([link(out, run_dir(out, name)), job["report"], report, stat(rs, "test_acc_at_best_val"), diff,
                       f"{epoch} / {stat(rs, 'convergence_epoch', 1, 0 if len(rs) == 1 else 1)}",
                       f"{rs[0]['epochs_run']}/{rs[0]['epochs']}", common.format_seconds(wall),
                       f"{rs[0].get('machine', rs[0]['device'])}; {precisions(rs)}", status]))
    return md + ["", "Convergence epoch: the first whose validation accuracy reaches 95 % of the run's best (the "
                 "report does not define its own). With seeds: mean ± sample std (n) over the seeds that finished."]


def tries_table(out, jobs):
    """Every try of the fast recipe's search (the plan's, in its order) and the headline run, ranked by
    nothing but shown with their validation accuracy; each row says in which settings it differs from the
    headline job, or, for a proxy, from the proxy of the recipe as the proxies ran it (proxy_base)."""
    tries = [job for job in jobs if job["under"] == "tries"]
    headline = next(job for job in jobs if job["under"] == "runs")
    proxy = next((job for job in tries if job["name"] == PROXY_BASE), None)
    md = ["**Tries of the fast recipe** (chosen on validation; the proxies never read the test set): "
          + tries_summary(out, tries, proxy), "", TABLES_ONLY[0], "### Tries of the fast recipe", "",
          f"Proxies: the headline job with `{PROXY_256}` (batch 256: the recipe's until 2026-12-07), each beside "
          f"{PROXY_BASE}; each other row: beside the headline job.", "",
          *table_head("try", "what it tries", "settings that differ", "status", "best val acc", "with flip TTA",
                      "at epoch", "wall time")]
    for job in [*tries, headline]:
        folder = run_dir(out, job["name"], job["under"])
        result = read_result(folder)
        if result is None:
            md.append(row([job["name"], job["tries"] or "the headline job", "–", "missing", "–", "–", "–", "–"]))
            continue
        base = proxy if proxy and FAST_PROXY in job["flags"] else headline
        saved = common.complete_config(result["config"])  # a run from before a setting existed: its old value
        differ = ", ".join(f"{k} {saved[k]}" for k in common.config_differences(
            saved, full_scale_config(base, 0), numerics=False)) or \
            ("(the proxy)" if base is proxy else "(the headline job)")
        tta = result.get("tta", {}).get("val_acc_at_best_val")
        md.append(row([link(out, folder), job["tries"] or "the headline job", differ, result["status"],
                       common.percent(result["best_val_acc"]), "–" if tta is None else common.percent(tta),
                       result.get("best_epoch") or "–", common.format_seconds(wall_seconds(result))]))
    return md + ["", TABLES_ONLY[1]]


def tries_summary(out, tries, proxy):
    """One paragraph for README: how many tries finished, the best proxy by validation accuracy beside the
    recipe as the proxies ran it (`proxy`, the job), and the proxy's seed noise (the same proxy at every seed it
    ran: a smaller gain is a tie)."""
    done = {job["name"]: r for job in tries if (r := read_result(run_dir(out, job["name"], "tries")))}
    base_cfg = proxy and full_scale_config(proxy, 0)  # the proxies' recipe as it is
    opt = proxy and base_cfg["opt"]  # Adam's proxies (#31) are summed up apart
    proxies = [job["name"] for job in tries if FAST_PROXY in job["flags"] and job["name"] in done
               and done[job["name"]]["config"]["opt"] == opt]
    text = f"{len(done)} of {len(tries)} tries finished ([every try](tables.md))."
    base = proxy and proxy["name"]
    if base in done and len(proxies) > 1:
        best = max(proxies, key=lambda name: done[name]["best_val_acc"])
        text += (f" Best proxy by validation accuracy: {best} {common.percent(done[best]['best_val_acc'])} % beside "
                 f"the recipe as the proxies ran it ({base}) {common.percent(done[base]['best_val_acc'])} %.")
    if base in done:  # the proxies' recipe at another seed: nothing else differs
        text += proxy_seed_noise(done, [name for name in proxies if set(common.config_differences(
            done[name]["config"], base_cfg, numerics=False)) <= {"seed"}])
        text += paired_proxy_gains({name: done[name] for name in proxies}, base_cfg)
    return text + full_scale_tries(out, tries, done) + adam_lr_choice(
        {name: r for name, r in done.items() if r["config"]["opt"] == "adam"})


def proxy_seed_noise(done, names):
    """' Seed noise of the proxy: ...': the recipe-as-it-is proxy at each seed it ran (`names`, seed 0 first), the
    range of their validation accuracies (a smaller gain is a tie) and, from three seeds on, their sample std."""
    if len(names) < 2:
        return ""
    accs = [100 * done[name]["best_val_acc"] for name in names]
    spread = max(accs) - min(accs)
    std = f", sample std {statistics.stdev(accs):.2f} pp" if len(accs) > 2 else ""
    return (" Seed noise of the proxy: " + ", ".join(f"{name} {acc:.2f} % (seed {seed_of(done[name])})"
                                                     for name, acc in zip(names, accs))
            + f": {spread:.2f} pp from lowest to highest{std}. A gain smaller than that is a tie, and "
            f"{len(accs)} seeds are a rough yardstick, so only a gain several times larger is more than a hint.")


def full_scale_tries(out, tries, done):
    """' At full scale, ...': each finished full-scale try's validation accuracy beside the headline run's."""
    headline = read_result(run_dir(out, HEADLINE_NAME))
    full = [job["name"] for job in tries if FAST_PROXY not in job["flags"] and job["name"] in done]
    if not (headline and full):
        return ""
    base = 100 * headline["best_val_acc"]
    cells = [f"{name} {100 * done[name]['best_val_acc']:.2f} % ({100 * done[name]['best_val_acc'] - base:+.2f} pp, "
             f"{done[name]['status']}{accuracy_and_wall(done[name])})" for name in full]
    return (f" At full scale (one seed each), validation accuracy beside the headline run's {base:.2f} % "
            f"({accuracy_and_wall(headline)[2:]}): {'; '.join(cells)}.")


def wall_seconds(result):
    """A run's wall time; its training time for a run from before result.json recorded the wall time."""
    return result.get("wall_seconds", result["train_seconds"])


def accuracy_and_wall(result):
    """'; test 88.77 % (flip TTA 89.44 %) in 49:31': a finished run's test accuracy at its best-validation epoch
    (read once, at its end; nothing is chosen on it) and its wall time, for #29's hour; '' before it has one."""
    test = result.get("test_acc_at_best_val")
    if test is None:
        return ""
    tta = result.get("tta", {}).get("test_acc_at_best_val")
    return (f"; test {100 * test:.2f} %{'' if tta is None else f' (flip TTA {100 * tta:.2f} %)'} in "
            f"{common.format_seconds(wall_seconds(result))}")


def adam_lr_choice(done):
    """' Adam's peak lr ...': each Adam proxy's validation accuracy by lr, and the lr the fast recipe gives
    Adam, which should be the best of them (said when it is not)."""
    if not done:
        return ""
    by_lr = sorted((r["config"]["lr"], r["best_val_acc"]) for r in done.values())
    ranked = sorted(by_lr, key=lambda pair: -pair[1])
    best = ranked[0][0]
    margin = f" by {100 * (ranked[0][1] - ranked[1][1]):.2f} pp over {ranked[1][0]:g}" if len(ranked) > 1 else ""
    recipe = common.parse_config("task1/train.py", ["--arch", "light", "--opt", "adam", "--recipe", "fast"])["lr"]
    chosen = (f"the best{margin}" if recipe == best else f"NOT the best ({best:g} is{margin})") \
        if recipe in dict(by_lr) else "not tried"
    return (" Adam's peak lr for the light grid (proxies, one seed each): "
            + ", ".join(f"{lr:g} {100 * acc:.2f} %" for lr, acc in by_lr)
            + f"; the fast recipe gives Adam {recipe:g}: {chosen}.")


def paired_proxy_gains(done, proxy_cfg):
    """' Paired by seed, ...': for each proxy setting tried at two seeds or more, its validation accuracy minus
    the recipe-as-it-is proxy's at the same seed (same seed = same batches), mean ± sample std and per seed."""
    by_setting = collections.defaultdict(dict)  # the settings a proxy differs in (its seed aside) -> seed -> acc
    for result in done.values():
        differ = [k for k in common.config_differences(result["config"], proxy_cfg, numerics=False) if k != "seed"]
        by_setting[", ".join(f"{k} {result['config'][k]}" for k in differ)][seed_of(result)] = \
            100 * result["best_val_acc"]
    base, parts = by_setting.pop("", {}), []
    for setting, accs in by_setting.items():
        diffs = {seed: acc - base[seed] for seed, acc in sorted(accs.items()) if seed in base}
        if len(diffs) >= 2:
            per_seed = ", ".join(f"seed {seed} {d:+.2f}" for seed, d in diffs.items())
            parts.append(f"{setting} {statistics.mean(diffs.values()):+.2f} ± {statistics.stdev(diffs.values()):.2f} "
                         f"pp (n={len(diffs)}: {per_seed})")
    return (f" Paired by seed, validation accuracy minus the recipe as the proxies ran it: {'; '.join(parts)}."
            if parts else "")


def precisions(results):
    """The precision the runs trained in ('bf16', or 'bf16 (2), fp32 (1)' when the seeds differ)."""
    counts = collections.Counter(r["config"].get("precision", "fp32") for r in results)
    return ", ".join(k if len(counts) == 1 else f"{k} ({n})" for k, n in sorted(counts.items()))


def paired_bn_difference(out, pair):
    """'BN helps' as a paired number: per seed that both runs of `pair` (without, with BN) finished, the
    difference in test accuracy at the best-validation epoch (pp); the mean ± sample std over those seeds."""
    by_seed = [{seed_of(r): r for r in seed_results(out, name) if r["status"] in FINISHED} for name in pair]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    diffs = [100 * (by_seed[1][k]["test_acc_at_best_val"] - by_seed[0][k]["test_acc_at_best_val"]) for k in seeds]
    if not diffs:
        return []
    per_seed = ", ".join(f"seed {k}: {d:+.2f}" for k, d in zip(seeds, diffs))
    spread = "" if len(diffs) < 2 else f" ± {statistics.stdev(diffs):.2f} (sample std over {len(diffs)} seeds)"
    return [f"**BN's gain, paired by seed** ({pair[1]} − {pair[0]}, test accuracy at the best-validation epoch, "
            f"same seed = same batches): {statistics.mean(diffs):+.2f} pp{spread}; {per_seed}."]


def seed_of(result):
    return result["config"]["seed"]


def plot_bn_curves(out, pairs, path):
    """Training loss and validation accuracy (%) per epoch of VGG-A vs VGG-A + BN, one line per run name,
    the mean over its seeds at each epoch over those that reached it; from the committed metrics only."""
    plt = common.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = []
    for name, label, colour, style in pairs:
        folders = [run_dir(out, seed_name(name, k)) for k in
                   sorted(seed_of(r) for r in seed_results(out, name) if r["status"] in FINISHED)]
        histories = [common.read_metrics(f) for f in folders if os.path.exists(os.path.join(f, "metrics.jsonl"))]
        if not histories:
            continue
        mean = {k: bn_analysis.padded_mean([[e[k] for e in h] for h in histories]) for k in ("train_loss", "val_acc")}
        epochs = np.arange(1, len(mean["train_loss"]) + 1)
        n = f" ({len(histories)} seeds)" if len(histories) > 1 else ""
        ax_loss.plot(epochs, mean["train_loss"], style, color=colour, label=label + n)
        ax_acc.plot(epochs, 100 * mean["val_acc"], style, color=colour, label=label + n)
        drawn.append(name)
    if not drawn:
        plt.close(fig)
        return None
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss",
                yscale="log" if common.spans_decades(np.concatenate([line.get_ydata() for line in ax_loss.lines]))
                else "linear")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8)
    fig.suptitle("VGG-A with and without BatchNorm, full width, 45,000 training images (mean over seeds where "
                 "there are several)", fontsize=10)
    common.save_figure(fig, path)
    return path


BN_CURVES = [("t2_vgg_a_adam", "VGG-A, Adam 1e-3", "tab:orange", "-"),
             ("t2_vgg_a_bn_adam", "VGG-A + BN, Adam 1e-3", "tab:blue", "-"),
             ("t2_vgg_a_sgd", "VGG-A, SGD 0.01", "tab:orange", "--"),
             ("t2_vgg_a_bn_sgd", "VGG-A + BN, SGD 0.01", "tab:blue", "--")]


AIRBENCH_FILE, AIRBENCH_PUBLISHED = "airbench94.json", 94.01  # airbench94's mean of 1,000 runs, original CIFAR-10


def data_copy_cost(out, headline):
    """' **The data copy's cost** ...': airbench94 trained on our JPEG-derived copy by bench/airbench_calibration.py
    (its record in <out>/airbench94.json) beside its published accuracy and our `headline` run (a result or
    None); the command to measure it when the record is missing."""
    path = os.path.join(out, AIRBENCH_FILE)
    if not os.path.exists(path):
        return ("**The data copy's cost** is not measured yet: `python bench/airbench_calibration.py --out "
                f"{path}` trains airbench94 on it (`pip install airbench==0.1.8`, optional).")
    cal = common.load_json(path)
    plain, tta = 100 * cal["test_acc"], 100 * cal["test_acc_tta"]
    ours = headline_beside_airbench(headline, plain, tta) if headline and headline["status"] in FINISHED else ""
    return (f"**The data copy's cost** (airbench94 {cal['airbench']}, hyper-parameters unchanged, "
            f"{cal['train_images']:,} training images, `bench/airbench_calibration.py`, {cal['device']}; "
            f"{cal['precision']}, {common.format_seconds(cal['wall_seconds'])}): {plain:.2f} % test without TTA, "
            f"{tta:.2f} % with its flip + translate TTA, {plain - AIRBENCH_PUBLISHED:+.2f} pp from its published "
            f"{AIRBENCH_PUBLISHED} % on the original CIFAR-10{ours}.")


def headline_beside_airbench(headline, plain, tta):
    """'; the headline run's 88.77 % (in 49:30) is -0.65 pp from it, with flip TTA ...': our finished headline
    run's test accuracy and wall time beside airbench94's plain and TTA accuracy on the same copy."""
    acc, ours_tta = 100 * headline["test_acc_at_best_val"], headline.get("tta", {}).get("test_acc_at_best_val")
    text = (f"; the headline run's {acc:.2f} % (in {common.format_seconds(wall_seconds(headline))}) is "
            f"{acc - plain:+.2f} pp from it")
    if ours_tta is not None:
        text += f", with flip TTA {100 * ours_tta:.2f} % ({100 * ours_tta - tta:+.2f} pp from its TTA)"
    return text


def full_scale_sections(out, jobs):
    md = full_scale_table(out, jobs)
    md += ["", data_copy_cost(out, read_result(run_dir(out, HEADLINE_NAME)))]
    md += [""] + paired_bn_difference(out, BN_PAIR)
    if plot_bn_curves(out, BN_CURVES, os.path.join(out, "figures", "bn_curves.png")):
        md[-1] += " ![VGG-A vs VGG-A + BN: training loss and validation accuracy per epoch](figures/bn_curves.png)"
    md += [""] + tries_table(out, jobs) + ["", light_grid_summary(out, jobs), ""] + light_grid_table(out, jobs)
    return md + [""] + full_scale_landscapes(out, jobs) + ["", curves_section(out)[0]]


# -- the light grid at full scale (#31) ------------------------------------------------------------

def light_grid_results(out, jobs):
    """(act, opt) -> the finished, on-plan result of that light-grid configuration (leaky ReLU + SGD: the
    headline job's), or None."""
    by_name, results = {job["name"]: job for job in jobs}, {}
    for act, opt in REPORT_LIGHT_GRID:
        job = by_name[light_grid_name(act, opt)]
        result = read_result(run_dir(out, job["name"], job["under"]))
        results[act, opt] = result if result and result["status"] in FINISHED and not off_plan(job, result) else None
    return results


def nll_check(out):
    """True / False: whether the 1-epoch ce run and its nll twin ended with bit-identical weights; None before both
    have run."""
    a, b = (read_result(run_dir(out, NLL_CHECK[loss], "grid")) or {} for loss in GRID_LOSSES)
    if not (a.get("weights_sha256") and b.get("weights_sha256")):
        return None
    return a["weights_sha256"] == b["weights_sha256"]


def nll_rows_text(out):
    same = nll_check(out)
    if same is None:
        return "= ce (the same function; the 1-epoch check has not run yet)"
    if same:
        return (f"= ce (the same function: {NLL_CHECK['nll']} ends 1 epoch with weights bit-identical to "
                f"{NLL_CHECK['ce']})")
    return f"not shown equal: {NLL_CHECK['nll']} and {NLL_CHECK['ce']} end 1 epoch with different weights"


def light_grid_table(out, jobs):
    """The report's 12 light rows (runs 13-24) beside ours; the nll rows say what the ce/nll check found."""
    results, twin = light_grid_results(out, jobs), nll_rows_text(out)
    md = [TABLES_ONLY[0], "### The light grid at full scale beside the report's runs 13–24", "", *table_head(
        "#", "act", "loss", "opt", "report %", "ours: test acc at best val", "difference (pp)", "best val acc",
        "wall time", "status")]
    for k, (act, loss, opt) in enumerate(itertools.product(GRID_ACTS, GRID_LOSSES, GRID_OPTS), 13):
        result, report = results[act, opt], REPORT_LIGHT_GRID[act, opt]
        cells = [k, act, loss, opt, f"{report:.2f}"]
        if loss == "nll":
            md.append(row(cells + [twin, "–", "–", "–", "–"]))
        elif result is None:
            md.append(row(cells + ["–", "–", "–", "–", "missing"]))
        else:
            ours = 100 * result["test_acc_at_best_val"]
            md.append(row(cells + [f"{ours:.2f}", f"{ours - report:+.2f}", common.percent(result["best_val_acc"]),
                                   common.format_seconds(wall_seconds(result)),
                                   result["status"]]))
    return md + ["", "The report's numbers are its \"best validation accuracy\", which its code reads on the test set "
                 "([what its code did](../what-the-reports-code-did.md)); ours: test accuracy at the best validation "
                 "epoch, one seed, the JPEG-derived copy.",
                 TABLES_ONLY[1]]


def headline_spread(out, jobs):
    """(max - min or None below 2 seeds, the test accuracies (%)) of the headline configuration's finished seeds."""
    job = next(job for job in jobs if job["name"] == HEADLINE_NAME)
    accs = [100 * r["test_acc_at_best_val"] for r in seed_results(out, job["name"])
            if r["status"] == "completed" and not off_plan(job, r)]
    return (max(accs) - min(accs) if len(accs) > 1 else None), accs


def light_grid_summary(out, jobs):
    """README's paragraph: the report's three comparisons, each ours beside the report's, each difference
    flagged when it is smaller than the headline configuration's seed spread."""
    acc = {k: 100 * r["test_acc_at_best_val"] for k, r in light_grid_results(out, jobs).items()
           if r and r["status"] == "completed"}
    spread, seeds = headline_spread(out, jobs)
    noise = (lambda d: " (within the seed spread)" if abs(d) < spread else "") if spread else (lambda d: "")
    parts = []
    for opt in GRID_OPTS:
        if all((act, opt) in acc for act in GRID_ACTS):
            ours, report = ({act: table[act, opt] for act in GRID_ACTS} for table in (acc, REPORT_LIGHT_GRID))
            first, second = sorted(ours, key=ours.get, reverse=True)[:2]
            tanh = {name: t["tanh"] - statistics.mean(v for a, v in t.items() if a != "tanh")
                    for name, t in (("ours", ours), ("report", report))}
            parts.append(f"with {opt}, the best activation is {first} (+{ours[first] - ours[second]:.2f} pp over "
                         f"{second}{noise(ours[first] - ours[second])}; the report's: {max(report, key=report.get)}), "
                         f"tanh minus the others' mean {tanh['ours']:+.2f} pp{noise(tanh['ours'])} (the report's "
                         f"{tanh['report']:+.2f})")
    for act in GRID_ACTS:
        if (act, "sgd") in acc and (act, "adam") in acc:
            d = acc[act, "sgd"] - acc[act, "adam"]
            parts.append(f"SGD − Adam with {act} {d:+.2f} pp{noise(d)} (the report's "
                         f"{REPORT_LIGHT_GRID[act, 'sgd'] - REPORT_LIGHT_GRID[act, 'adam']:+.2f})")
    yardstick = (f"seed spread of the headline configuration: {spread:.2f} pp over {len(seeds)} seeds (test "
                 f"{', '.join(f'{a:.2f}' for a in seeds)} %; so few seeds are a rough yardstick)"
                 if spread is not None else "the headline configuration's seed spread is not measured yet (1 seed), "
                 "so no difference here is told from noise")
    return (f"**The light grid at full scale** (#31: ResVGG16-light, the fast recipe, one seed each): {len(acc)} of "
            f"{len(REPORT_LIGHT_GRID)} configurations finished ([the table](tables.md)); " + "; ".join(parts)
            + ("; " if parts else "") + f"{yardstick}. NLL rows: {nll_rows_text(out)}.")


REPORT_NO_BN_MAX, REPORT_BN_MAX = 2.0e6, 20.0  # the colour bars' tops of its No_BN_SGD and BN_SGD figures
REPORT_SURFACE_MAX = f"the report's No_BN_SGD surface reaches a loss of {REPORT_NO_BN_MAX / 1e6:.1f}·10⁶ (colour " \
    f"bar; z axis to 4.0·10⁶), its BN_SGD surface {REPORT_BN_MAX:g} (z axis to 25); it does not say how its " \
    "surfaces were made (directions, their normalization, range, resolution, images, BN mode)"
SGD_LANDSCAPES = [("vgg_a_sgd", "VGG-A, SGD"), ("vgg_a_bn_sgd", "VGG-A + BN, SGD, BN eval"),
                  ("vgg_a_bn_sgd_bntrain", "VGG-A + BN, SGD, BN train")]  # figures/bn_landscapes_sgd.png


def full_scale_landscapes(out, jobs):
    """The surfaces and Hessians of the full-scale checkpoints (one row per landscape folder a job plans),
    the retrains that made them when a checkpoint was gone, and the No-BN vs BN surfaces on one colour scale."""
    planned = [os.path.join(out, "landscapes", surface_folder(f, seed)) for job in jobs for seed in job["surface_seeds"]
               for f, _, script in job["surfaces"] if script.endswith("landscape.py")]
    made = [f for f in planned if surface_complete(f)]  # one under way is not computed yet (nor committed)
    sharpness = adam_sharpness(out)
    md = ["### Loss landscapes and Hessians of the full-scale checkpoints (task2/landscape.py)", "",
          *task1_figures(out), *sharpness, *([""] if sharpness else [])]
    if made:
        md += [TABLES_ONLY[0], *table_head("folder", "checkpoint", "BN mode", "points", "images", "loss min",
                                           "loss max", "top eigenvalue", "trace (SE)", "Hessian coordinates",
                                           "wall time"),
               *(landscape_row(out, f) for f in made), TABLES_ONLY[1], ""]
    pending = [os.path.basename(f) for f in planned if f not in made]
    md += [(f"Not computed yet: {', '.join(pending)} (each right after the training job whose best.pt it reads). "
            if pending else "") + f"For comparison: {REPORT_SURFACE_MAX}. Ours: filter-normalized random "
           "directions, the loss on the first images of the training split, fp32 Hessian by Lanczos (raw: in the "
           "parameters; filter: D·H·D, the surfaces' coordinates)" + ("; every folder's numbers: [tables.md]"
                                                                          "(tables.md)." if made else ".")] \
        + retrain_lines(out, jobs)
    surfaces = [load_surface(os.path.join(out, "landscapes", f)) for f, _ in SGD_LANDSCAPES]
    if all(surfaces):
        tops = [surface_top(os.path.join(out, "landscapes", f)) for f, _ in SGD_LANDSCAPES]
        titles = [f"{label}\ntop eigenvalue {top}" for (_, label), top in zip(SGD_LANDSCAPES, tops)]
        plot_bn_modes(*surfaces, os.path.join(out, "figures", "bn_landscapes_sgd.png"), titles,
                      "No BN vs BN: SGD checkpoints, full width, one log10 colour scale")
        md += ["", sgd_landscapes_summary(out, surfaces), "",
               "![No BN vs BN, SGD checkpoints: log10 loss on one colour scale](figures/bn_landscapes_sgd.png)"]
    return md


def sgd_landscapes_summary(out, surfaces):
    """'**No BN vs BN, SGD checkpoints** ...': each SGD surface's loss range, top eigenvalue (filter-normalized
    beside where that job ran) and wall time, and the ratio of the highest losses beside the report's."""
    cells, highest = [], []
    for (folder, label), surface in zip(SGD_LANDSCAPES, surfaces):
        path, finite = os.path.join(out, "landscapes", folder), surface["loss"][np.isfinite(surface["loss"])]
        info, filtered = common.load_json(os.path.join(path, "surface.json")), f"{path}_filter_hessian"
        top = hessian_cell(info.get("hessian"), "top_eigenvalue") + \
            (f" (filter-normalized {surface_top(filtered)})" if surface_complete(filtered) else "")
        hessian = (info.get("hessian") or {}).get("seconds")
        wall = common.format_seconds(info["seconds"]) + (f" + Hessian {common.format_seconds(hessian)}" if hessian else "")
        cells.append(f"{label} {finite.min():.3g} to {finite.max():.3g}, top eigenvalue {top}, {wall}")
        highest.append(finite.max())
    return (f"**No BN vs BN, SGD checkpoints** (`{FULL_SCALE_SURFACE}`): the loss over the grid, the top Hessian "
            f"eigenvalue at its centre and the wall time: {'; '.join(cells)}. The highest loss without BN is "
            f"×{highest[0] / highest[1]:.3g} that with BN (eval), ×{highest[0] / highest[2]:.3g} (train); the "
            f"report's is ×{REPORT_NO_BN_MAX / REPORT_BN_MAX:,.0f} ({REPORT_NO_BN_MAX:,.0f} vs {REPORT_BN_MAX:g}).")


def task1_figures(out):
    """README's Task 1 figures at full scale (#29), each once its files exist: the headline model's filters and
    feature maps, the SGD and Adam surfaces on one log10 scale (figures/t1_sgd_vs_adam.png) with their top
    eigenvalues raw and filter-normalized, beside the report's claim, and the loss along the path between them."""
    folder = lambda name: os.path.join(out, "landscapes", name)  # noqa: E731
    md, filters = [], os.path.join(T1_FILTERS, "filters.png")
    if all(os.path.exists(os.path.join(out, "landscapes", T1_FILTERS, f)) for f in ("filters.png", "feature_maps.png")):
        md += [f"![the headline model's first-layer filters](landscapes/{filters}) "
               f"![its feature maps](landscapes/{T1_FILTERS}/feature_maps.png)", ""]
    names = [T1_SURFACES[opt] for opt in ("sgd", "adam")]
    if all(surface_complete(folder(n)) and surface_complete(folder(f"{n}_filter_hessian")) for n in names):
        hessians = {n: [common.load_json(os.path.join(folder(f), "surface.json"))["hessian"]
                        for f in (n, f"{n}_filter_hessian")] for n in names}  # raw, filter
        tops = {n: [hessian_cell(h, "top_eigenvalue") for h in hessians[n]] for n in names}
        ratios = [adam["top_eigenvalue"] / sgd["top_eigenvalue"] for sgd, adam in zip(*hessians.values())]
        titles = [f"ResVGG16-light, {opt}: top eigenvalue {tops[n][0]}" for opt, n in zip(("SGD", "Adam"), names)]
        plot_surfaces_side_by_side([load_surface(folder(n)) for n in names], titles,
                                   os.path.join(out, "figures", "t1_sgd_vs_adam.png"), log=True,
                                   suptitle="Task 1 at full scale: SGD vs Adam minima, one log10 colour scale")
        md += ["**SGD vs Adam minima** (the report: \"the Adam landscape's minimum is sharper\"; "
               f"`{FULL_SCALE_SURFACE}`; filter-normalized: `--hessian-coords filter`): top Hessian eigenvalue, "
               f"raw / filter-normalized: SGD {' / '.join(tops[names[0]])}, Adam {' / '.join(tops[names[1]])}; "
               f"Adam / SGD ×{ratios[0]:.2f} raw, ×{ratios[1]:.2f} filter-normalized (one run, one Lanczos start "
               "each: no spread). ![SGD vs Adam: log10 loss surfaces on one scale](figures/t1_sgd_vs_adam.png)", ""]
    path = load_surface(folder(T1_INTERP)) if surface_complete(folder(T1_INTERP)) else None
    if path is not None:
        x, loss = np.asarray(path["x"]), np.asarray(path["loss"])
        between = loss[(x > 0) & (x < 1)]
        md += [f"**The path from the SGD minimum (α = 0) to the Adam one (α = 1)** ([loss_1d.png](landscapes/"
               f"{T1_INTERP}/loss_1d.png), `{T1_INTERP_FLAGS}`): loss {loss[np.argmin(abs(x))]:.4g} at α = 0, "
               f"{loss[np.argmin(abs(x - 1))]:.4g} at α = 1, highest between them {np.nanmax(between):.4g}.", ""]
    return md


ADAM_SHARPNESS = [("VGG-A", "vgg_a_adam", "eval"), ("VGG-A + BN, BN eval", "vgg_a_bn_adam", "eval"),
                  ("VGG-A + BN, BN train", "vgg_a_bn_adam", "train")]  # the Adam pair's Hessians, per seed


def adam_hessians_of_seed(out, seed):
    """{(label, coords): (hessian, trace)} of one seed's six Adam-pair Hessians, or None until all are complete."""
    found = {}
    for label, name, mode in ADAM_SHARPNESS:
        for coords in common.HESSIAN_COORDS:
            path = os.path.join(out, "landscapes", adam_hessian_folder(name, mode, coords, seed), "surface.json")
            info = common.load_json(path) if os.path.exists(path) else {}
            if info.get("status") != "complete":
                return None
            found[label, coords] = (info["hessian"], info["spectrum"]["trace"])
    return found


def adam_sharpness(out):
    """README's paragraph on the Adam pair's sharpness (#33): each network's top eigenvalue and trace, raw and
    filter-normalized, with BN's ratio to VGG-A in both coordinates, over the seeds whose six Hessians are all
    complete (paired by seed, with which way the seeds point); [] until one seed's are."""
    found = {seed: f for seed in ADAM_HESSIAN_SEEDS if (f := adam_hessians_of_seed(out, seed))}
    if not found:
        return []
    parts = [f"{'in the parameters (raw)' if coords == 'raw' else 'filter-normalized (D·H·D)'}: "
             + "; ".join(sharpness_cell(found, label, coords) for label, *_ in ADAM_SHARPNESS)
             for coords in common.HESSIAN_COORDS]
    spread = "its Hutchinson standard error" if len(found) == 1 else \
        "mean ± sample std over the seeds; BN's ratio paired by seed, and where every seed's ratio points"
    return [f"**Sharpness of the Adam pair, raw vs filter-normalized** (seed{'s' * (len(found) > 1)} "
            f"{', '.join(map(str, found))}'s "
            f"checkpoints, `{ADAM_HESSIAN}`; top eigenvalue / trace ({spread}), BN's ratio to VGG-A): "
            + ". ".join(parts) + "."]


def sharpness_cell(found, label, coords):
    """'VGG-A + BN, BN eval 142.5 / 1105 (SE 53), ×1.04 / ×0.58' for one seed; over seeds mean ± std, the mean of
    the per-seed ratios, and 'sharper at every seed', 'flatter at every seed' or 'the seeds disagree'."""
    seeds = list(found)
    tops = [found[k][label, coords][0]["top_eigenvalue"] for k in seeds]
    traces = [found[k][label, coords][1]["mean"] for k in seeds]
    ratios = [(t / found[k]["VGG-A", coords][0]["top_eigenvalue"], r / found[k]["VGG-A", coords][1]["mean"])
              for k, t, r in zip(seeds, tops, traces)]
    if len(seeds) == 1:
        h, trace = found[seeds[0]][label, coords]
        cell = f"{label} {hessian_cell(h, 'top_eigenvalue')} / {trace['mean']:.4g} (SE {trace['stderr'][0]:.2g})"
    else:
        cell = f"{label} {common.seeds_cell(tops)} / {common.seeds_cell(traces)}"
    if label == "VGG-A":
        return cell
    cell += f", ×{statistics.mean(r for r, _ in ratios):.2f} / ×{statistics.mean(r for _, r in ratios):.2f}"
    if len(seeds) > 1:
        way = ["sharper" if min(pair) > 1 else "flatter" if max(pair) < 1 else None for pair in zip(*ratios)]
        cell += " (top eigenvalue / trace: " + " / ".join(
            f"{w} at every seed" if w else "the seeds disagree" for w in way) + ")"
    return cell


def surface_top(folder):
    info = common.load_json(os.path.join(folder, "surface.json"))
    return hessian_cell(info.get("hessian"), "top_eigenvalue")


def landscape_row(out, folder):
    """One landscape folder's row: its checkpoint, grid, loss range, top eigenvalue, trace and wall time."""
    info, loss = common.load_json(os.path.join(folder, "surface.json")), load_surface(folder)["loss"]
    settings, finite, h = info["settings"], loss[np.isfinite(loss)], info.get("hessian") or {}
    trace = (info.get("spectrum") or {}).get("trace")
    ckpt = os.path.relpath(settings["ckpt"], out)
    seconds = f"{common.format_seconds(info['seconds'])} + Hessian {common.format_seconds(h['seconds'])}" \
        if "seconds" in h else common.format_seconds(info["seconds"])
    return row([link(out, folder), f"`{ckpt}`", settings["bn_mode"], f"{info['points_done']}/{info['points']}",
                settings["n_items"], f"{finite.min():.4g}" if finite.size else "–",
                f"{finite.max():.4g}" if finite.size else "–", hessian_cell(h, "top_eigenvalue"),
                f"{trace['mean']:.4g} ({trace['stderr'][0]:.2g})" if trace else "–", h.get("coords", "raw") if h else "–",
                seconds])


def retrain_lines(out, jobs):
    """A run trained again for its surfaces (its checkpoint was gone) beside the committed run."""
    lines = []
    for job, seed in ((job, seed) for job in jobs if job["surfaces"] for seed in job["surface_seeds"]):
        name = seed_name(job["name"], seed)
        folders = [run_dir(out, folder, job["under"]) for folder in (name, name + RETRAIN)]
        first, again = (read_result(folder) for folder in folders)
        if first and again and first["test_acc_at_best_val"] is not None and again["test_acc_at_best_val"] is not None:
            lines.append(f"- {name} trained again with its own command for its surfaces (its checkpoint was "
                         f"gone): test accuracy at the best-validation epoch {100 * again['test_acc_at_best_val']:.2f} "
                         f"% ({again['status']}, {again['config'].get('precision', 'fp32')}) vs "
                         f"{100 * first['test_acc_at_best_val']:.2f} % committed "
                         f"({first['config'].get('precision', 'fp32')}): "
                         f"{100 * (again['test_acc_at_best_val'] - first['test_acc_at_best_val']):+.2f} pp"
                         f"{same_curves(*folders)}.")
    return [""] + lines if lines else []


def same_curves(first, again):
    """'; every epoch's ... the same': said when a retrain's per-epoch losses and accuracies equal the first run's
    exactly (the same seed and numerics can reproduce a run bit for bit); '' otherwise."""
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    if not all(os.path.exists(os.path.join(f, "metrics.jsonl")) for f in (first, again)):
        return ""
    curves = [[tuple(epoch.get(k) for k in keys) for epoch in common.read_metrics(f)] for f in (first, again)]
    if not curves[0] or curves[0] != curves[1]:
        return ""
    return f"; all {len(curves[0])} epochs' training and validation loss and accuracy are the same numbers, bit for bit"


def write_report(out, profile=""):
    """tables.md and figures/ (drawn afresh: nothing stale stays) from the run folders under `out`; returns the
    Markdown. The old figures/ is kept aside until the new tables.md is written, and put back if the report
    fails, so tables.md never links figures that are gone."""
    figures, kept = os.path.join(out, "figures"), os.path.join(out, f"figures.old{os.getpid()}")
    for stale in glob.glob(os.path.join(glob.escape(out), "figures.old*")):  # left by a report killed mid-way
        shutil.rmtree(stale)
    if os.path.isdir(figures):
        os.rename(figures, kept)
    try:
        text = _write_tables(out, profile, previous=kept)
    except BaseException:
        shutil.rmtree(figures, ignore_errors=True)
        if os.path.isdir(kept):
            os.rename(kept, figures)
        raise
    shutil.rmtree(kept, ignore_errors=True)
    return text


def _write_tables(out, profile, previous=None):
    os.makedirs(os.path.join(out, "figures", "curves"))
    draw_curves(out, previous)
    results = [read_result(run_dir(out, d)) for d in sorted(os.listdir(os.path.join(out, "runs")))] \
        if os.path.isdir(os.path.join(out, "runs")) else []
    devices = sorted({r["device"] for r in results if r})
    best = best_grid_run(out)
    md = [f"Generated by `run_all.sh --profile {profile}` from the result files in this folder; "
          f"device: {', '.join(devices) or 'n/a'}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
          "Accuracies in %. Model selection uses the validation split only; test accuracy is read at the "
          "best-validation epoch."]
    jobs = PROFILES.get(profile, {}).get("jobs")
    sections = [full_scale_sections(out, jobs)] if jobs else [
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
    from matplotlib.ticker import MaxNLocator
    zs = [np.log10(np.maximum(s["loss"], 1e-12)) if log else s["loss"] for s in surfaces]
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs])
    return zs, MaxNLocator(30).tick_values(float(finite.min()), float(finite.max()))  # round values


def plot_surfaces_side_by_side(surfaces, titles, path, log=False, suptitle=None):
    """2D surfaces next to each other on one colour scale and one z range: 3D above, filled contours below."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator
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
        landscape.readable_3d_ticks(ax)
        ax = fig.add_subplot(2, len(surfaces), len(surfaces) + k + 1)
        filled = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=norm, extend="both")
        ax.set(xlabel="x", ylabel="y", aspect="equal")
    fig.subplots_adjust(right=0.88)  # the colour bar gets its own strip, clear of the 3D z ticks
    fig.colorbar(filled, cax=fig.add_axes([0.91, 0.1, 0.015, 0.35]), label="log10 loss" if log else "loss",
                 ticks=MaxNLocator(8))
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    common.save_figure(fig, path, dpi=110, tight=False)


def load_surface(folder):
    """surface.npz of a landscape folder as a dict, or None when it has none."""
    path = os.path.join(folder, "surface.npz")
    if not os.path.exists(path):
        return None
    return common.load_npz(path)


BN_MODE_TITLES = ("VGG-A (no BN: both modes)", "VGG-A + BN, --bn-mode eval", "VGG-A + BN, --bn-mode train")


def plot_bn_modes(plain, bn_eval, bn_train, path, titles=BN_MODE_TITLES, suptitle=None):
    """Filled log10-loss contours on one colour scale: VGG-A (no BN, so one surface for both modes) beside
    VGG-A + BN with frozen running statistics (eval) and with statistics re-estimated at each point (train)."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator
    plt = common.pyplot()
    panels = list(zip((plain, bn_eval, bn_train), titles))
    zs, levels = shared_scale([s for s, _ in panels], log=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained")
    for ax, (s, title), z in zip(axes, panels, zs):
        gx, gy = np.meshgrid(s["x"], s["y"], indexing="ij")
        filled = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=Normalize(levels[0], levels[-1]),
                             extend="both")
        ax.set(title=title, xlabel="x", ylabel="y", aspect="equal")
    fig.colorbar(filled, ax=axes, label="log10 loss", shrink=0.9, ticks=MaxNLocator(8))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    common.save_figure(fig, path, dpi=110, tight=False)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme, tables, out):
    """Replace README's text between the result markers with `tables`, links made relative to README."""
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(readme)))
    brief = re.sub(rf"{re.escape(TABLES_ONLY[0])}.*?{re.escape(TABLES_ONLY[1])}\n+", "", tables, flags=re.S)
    text = re.sub(r"\]\((?!https?://|/)", f"]({rel}/", brief)  # every relative link, now from README's folder
    with open(readme) as f:
        content = f.read()
    if README_START not in content or README_END not in content:
        raise common.UsageError(f"{readme} lacks the markers {README_START} and {README_END}")
    head, rest = content.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    common.write_text(readme, f"{head}{README_START}\n{text}{README_END}{tail}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the results folder (holding runs/)")
    p.add_argument("--profile", default="", help="the profile that made it (cpu-full: the side-by-side table)")
    p.add_argument("--update-readme", action="store_true", help="replace README's results section with tables.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
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
