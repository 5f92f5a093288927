"""Loss landscape of a checkpoint along filter-normalized random directions (Li et al. 2018), or the
linear interpolation between two checkpoints; optionally the Hessian at the checkpoint: extreme eigenvalues
(Lanczos), trace (Hutchinson), eigenvalue density (stochastic Lanczos quadrature), per block, over seeds.

    python task2/landscape.py --ckpt runs/X/best.pt                         # 1D, x in -1:1:51
    python task2/landscape.py --ckpt runs/X/best.pt --y -1:1:51             # 2D surface
    python task2/landscape.py --ckpt runs/sgd/best.pt --interp runs/adam/best.pt --x -0.5:1.5:41
    torchrun --nproc_per_node 4 task2/landscape.py --ckpt runs/X/best.pt --y -1:1:51   # sharded
    python task2/landscape.py --replot runs/X/landscape_51x51 --zmax 10    # figures again, nothing recomputed

Files in --out (default <checkpoint folder>/landscape_<NX> or landscape_<NX>x<NY>, or interp_<NX>):
  surface.npz    x, y (empty in 1D), loss, acc, done; loss[i, j] belongs to (x[i], y[j]) on any grid
  surface.json   status (complete | partial), every setting, model, device, world size, points, seconds,
                 points/s, and `hessian` with --hessian: top_eigenvalue, bottom_eigenvalue (most negative),
                 residual_top/_bottom (‖Hv − λv‖), converged, iterations, tol, seconds (means over --repeats,
                 with *_std); `spectrum` with --hessian-trace/-density/--per-block: trace {mean, std, values,
                 stderr}, density {nodes, weights per seed and probe}, blocks [{name, params, top, trace}];
                 `figures`: the files below, written before the status says complete
  directions.pt  {"x": {name: tensor}, "y": {...}}: reuse them with --dir-file to draw on the same plane
  loss_1d.png (1D, more than one point) or contour.png, heatmap.png, surface_3d.png (2D); spectrum.png, blocks.png
Ctrl-C saves after the current round of points; the same command plus --resume computes the rest.
"""
import argparse
import contextlib
import dataclasses
import glob
import math
import os
import pickle
import re
import statistics
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402

# settings that must match for --resume to continue a surface
SURFACE_KEYS = ("ckpt", "interp", "trajectory", "x", "y", "seed", "norm", "include_bn_bias", "bn_mode", "split",
                "n_items", "precision", "dir_file", "ckpt_sha256", "interp_sha256")  # the checkpoints' contents too


def check_numbers(p, args):
    """argparse's error (exit 2, one line) for a count, tolerance, clip or grid that makes no sense or no fit."""
    counts = (args.batch_size, args.hessian_iters, args.repeats, args.trace_probes, args.slq_probes, args.slq_steps)
    if args.n_items == 0 or args.n_items < -1 or min(counts) < 1 or not 0 < args.hessian_tol < 1:
        p.error("--n-items must be -1 (all) or positive; --batch-size, --hessian-iters, --repeats and the probe "
                "and step counts positive; --hessian-tol in (0, 1)")
    if args.zmax is not None and not (math.isfinite(args.zmax) and args.zmax > 0):
        p.error(f"--zmax {args.zmax}: the clip must be a positive finite loss")
    if args.trace_probes < 2:
        p.error("--trace-probes must be at least 2 (its standard error needs two probes)")
    try:
        check_grid_fits(args.x, args.y or (args.x if args.trajectory else None))  # a path's plane is x by x
    except common.UsageError as e:
        p.error(str(e))
    return args


def settings_differences(info, argv):
    """The settings of a saved surface.json that the command line `argv` would make otherwise (grid, images,
    directions, Hessian flags; the checkpoints and the resolved precision aside). A surface saved before its
    Hessian flags were recorded counts as made with those asked for."""
    args = parse_args(argv)
    asked = {k: common.json_safe(getattr(args, k)) for k in SURFACE_KEYS
             if k not in ("ckpt", "interp", "precision") and not k.endswith("_sha256")}
    differ = [k for k, v in asked.items() if info["settings"].get(k) != v]
    options = dataclasses.asdict(HessianOptions.from_args(args))
    return differ + [f"hessian {k}" for k, v in options.items() if info.get("hessian_options", options).get(k) != v]


MAX_AXIS_POINTS = 100_000
BYTES_PER_POINT = 64  # loss and accuracy in float64, the done mask, the figures' copies of the grid


def check_grid_fits(x, y, memory=None):
    """A UsageError with the estimate when the grid's arrays would take more than half the machine's memory."""
    memory = memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    points = len(x) * len(y or [0])
    if points * BYTES_PER_POINT > memory / 2:
        raise common.UsageError(f"a {len(x)} × {len(y or [0])} grid ({points:,} points) needs about "
                                f"{points * BYTES_PER_POINT / 2**30:.1f} GiB for its arrays; this machine has "
                                f"{memory / 2**30:.1f} GiB: use fewer points")


def parse_axis(text):
    """'MIN:MAX:NUM' -> list of NUM evenly spaced floats from MIN to MAX."""
    try:
        lo, hi, num = text.split(":")
        lo, hi, num = float(lo), float(hi), int(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX:NUM (e.g. -1:1:51)") from None
    if num < 1 or not (math.isfinite(lo) and math.isfinite(hi)):
        raise argparse.ArgumentTypeError(f"{text!r}: MIN and MAX must be finite and NUM at least 1")
    if num > MAX_AXIS_POINTS:  # before the list is built: --x -1:1:1e9 once ran out of memory here
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_AXIS_POINTS:,} points an axis")
    return [lo + (hi - lo) * i / (num - 1) for i in range(num)] if num > 1 else [lo]



def add_hessian_args(p):
    """The Hessian at the checkpoint, on the evaluation images, in --bn-mode, always fp32."""
    g = p.add_argument_group("the Hessian at the checkpoint (fp32, on the evaluation images, BN in --bn-mode)")
    g.add_argument("--hessian", action="store_true", help="the largest and most negative eigenvalue (Lanczos)")
    g.add_argument("--hessian-iters", type=int, default=20, help="at most this many Lanczos iterations")
    g.add_argument("--hessian-tol", type=float, default=1e-3,
                   help="converged when the residuals ‖Hv − λv‖ are at most tol × max|λ|")
    g.add_argument("--hessian-trace", action="store_true",
                   help="the trace, Hutchinson's estimator with its standard error")
    g.add_argument("--trace-probes", type=int, default=16, help="Rademacher probes of the trace")
    g.add_argument("--hessian-density", action="store_true",
                   help="the eigenvalue density by stochastic Lanczos quadrature (spectrum.png)")
    g.add_argument("--slq-probes", type=int, default=4, help="density: random starting vectors")
    g.add_argument("--slq-steps", type=int, default=30, help="density: Lanczos steps per vector")
    g.add_argument("--per-block", action="store_true",
                   help="per layer block (conv + its BN, residual block, linear): its own Hessian's top eigenvalue "
                        "and trace, the other parameters fixed (blocks.png)")
    g.add_argument("--hessian-coords", default="raw", choices=common.HESSIAN_COORDS,
                   help="raw: the Hessian in the parameters; filter: D·H·D, D scaling each filter by its norm (the "
                        "surfaces' filter-normalized coordinates; unchanged by the free scale of a BN-fed filter)")
    g.add_argument("--repeats", type=int, default=1,
                   help="every Hessian statistic over this many seeds (--seed, --seed + 1, ...): mean ± std")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", help="any best.pt / last.pt of task1 or task2 (with --trajectory: its last.pt)")
    p.add_argument("--trajectory", metavar="RUN",
                   help="2D: the plane of RUN's training path (PCA of its --save-trajectory snapshots), path drawn")
    p.add_argument("--x", default="-1:1:51", type=parse_axis, help="MIN:MAX:NUM along the x direction")
    p.add_argument("--y", type=parse_axis, help="MIN:MAX:NUM along y: a 2D surface")
    p.add_argument("--interp", metavar="CKPT2", help="1D: θ(α) = (1−α)θ1 + αθ2 with α from --x, BN stats included")
    p.add_argument("--out", help="output folder")
    p.add_argument("--norm", default="filter", choices=common.NORMS, help="direction normalization")
    p.add_argument("--include-bn-bias", action="store_true",
                   help="biases and BN weights/biases move along their own values (else they stay)")
    p.add_argument("--bn-mode", default="eval", choices=["eval", "train"],
                   help="eval: the checkpoint's BN running statistics; train: re-estimate them at every point")
    p.add_argument("--dir-file", help="reuse directions.pt of another surface (same architecture, same plane)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="train / val: the checkpoint's own training / validation images (its --val and --subset)")
    p.add_argument("--n-items", type=int, default=10000, help="first N images of the split (-1: all)")
    p.add_argument("--batch-size", type=int, default=common.EVAL_BATCH, help="evaluation batch size")
    common.add_precision_arg(p)  # the surface's evaluations; the Hessian is always fp32
    p.add_argument("--log", action="store_true", help="log10 z scale in the figures")
    p.add_argument("--zmax", type=float, help="clip the loss at this value in the figures")
    p.add_argument("--replot", metavar="DIR",
                   help="draw the figures of DIR's complete surface again from its files, with --log / --zmax "
                        "(no checkpoint needed, nothing recomputed)")
    add_hessian_args(p)
    p.add_argument("--resume", action="store_true", help="compute only the points --out does not have yet")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a surface")
    common.add_data_args(p)
    p.add_argument("--seed", type=int, default=0, help="random directions")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, token in enumerate(argv[:-1]):  # let "--x -1:1:51" through: argparse reads "-1:1:51" as an option
        if token in ("--x", "--y") and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"{token}={argv[i + 1]}", ""]
    args = check_numbers(p, p.parse_args([a for a in argv if a != ""]))
    return args if args.replot else check_combination(p, args)


def check_combination(p, args):
    """The flags that exclude or need each other (p.error: one line, exit 2); the default --out."""
    if not (args.ckpt or args.trajectory):
        p.error("--ckpt (or --trajectory RUN) is required")
    if args.trajectory and (args.interp or args.dir_file):
        p.error("--trajectory takes its plane from the run's path; drop --interp and --dir-file")
    if args.trajectory:
        args.ckpt, args.y = args.ckpt or os.path.join(args.trajectory, "last.pt"), args.y or args.x
    if args.interp and args.y:
        p.error("--interp is one-dimensional; drop --y")
    if args.interp and args.dir_file:
        p.error("--interp takes its direction from the two checkpoints; drop --dir-file")
    if args.y and min(len(args.x), len(args.y)) < 2:
        p.error("a 2D surface needs at least 2 points along --x and --y (for one line, drop --y)")
    grid = f"{len(args.x)}" + (f"x{len(args.y)}" if args.y else "")  # 1D and 2D runs of one checkpoint never collide
    kind = "interp" if args.interp else "trajectory" if args.trajectory else "landscape"
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"{kind}_{grid}")
    return args


def setup_distributed(device_flag):
    """(rank, device): under torchrun, one process per GPU (nccl) or per CPU process (gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, common.resolve_device(device_flag)
    device = common.resolve_device(device_flag)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), device


def figure_z(loss, log=False, zmax=None):
    """(to_z, axis label, title note): to_z maps losses (the surface's, a path's) to figure heights: clipped at
    --zmax if given, on a log10 scale with --log or by default when the surface's finite values span more than
    two decades (so corner spikes do not flatten the bowl)."""
    def clip(values):
        values = np.asarray(values, dtype=float)
        return values if zmax is None else np.minimum(values, zmax)
    note = "" if zmax is None else f" (loss clipped at {zmax:g})"
    if log or (zmax is None and common.spans_decades(clip(loss))):
        return (lambda values: np.log10(np.maximum(clip(values), 1e-12))), "log10 loss", \
            note + ("" if log else " (log10: the loss spans > 2 decades)")
    return clip, "loss", note


def plot_1d(x, z, acc, zlabel, title, xlabel, out):
    """Loss and accuracy (%) against x on twin axes: loss_1d.png."""
    fig, ax = common.pyplot().subplots(figsize=(6.5, 4.2))
    ax.plot(x, z, color="tab:blue", marker=".", label=zlabel)
    ax.set(xlabel=xlabel, ylabel=zlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(x, 100 * np.asarray(acc), color="tab:red", marker=".", label="accuracy (%)")
    twin.set_ylabel("accuracy (%)", color="tab:red")
    ax.legend(handles=ax.get_lines() + twin.get_lines(), loc="upper center", fontsize=8)
    common.save_figure(fig, os.path.join(out, "loss_1d.png"))
    return ["loss_1d.png"]


def plot_landscape(surface, out, title="", log=False, zmax=None, xlabel="x", path=None):
    """1D: loss and accuracy against x on twin axes (loss_1d.png). 2D: contour lines (contour.png), filled
    contours (heatmap.png) and a 3D surface (surface_3d.png), with a training path (`path`: x, y, loss per
    snapshot, explained variance) drawn on the first and last. A single point (a Hessian job's --x 0:0:1) has no
    curve to draw: nothing (its loss and accuracy are in surface.npz). Returns the files written."""
    plt = common.pyplot()
    x, y, acc = surface["x"], surface["y"], surface["acc"]
    if len(y) == 0 and len(x) == 1:
        return []
    to_z, zlabel, note = figure_z(surface["loss"], log, zmax)
    z, title = to_z(surface["loss"]), "\n".join(filter(None, [title, note.strip()]))  # the note on a line of its own
    if len(y) == 0:
        return plot_1d(x, z, acc, zlabel, title, xlabel, out)
    labels = ("x", "y") if path is None else tuple(f"PC{k + 1} ({100 * r:.1f} % of the path's variance)"
                                                   for k, r in enumerate(path["explained_variance"]))
    grid_x, grid_y = np.meshgrid(x, y, indexing="ij")  # loss[i, j] belongs to (x[i], y[j])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lines = ax.contour(grid_x, grid_y, z, levels=20, cmap="viridis")
    ax.clabel(lines, fontsize=6)
    if path is not None:
        ax.plot(path["x"], path["y"], "r.-", lw=1, ms=4, label="training path (snapshots)")
        ax.plot(path["x"][-1:], path["y"][-1:], "k*", ms=10, label="final weights")
        ax.legend(fontsize=7)
    ax.set(xlabel=labels[0], ylabel=labels[1])
    ax.set_title(title, fontsize=9)
    common.save_figure(fig, os.path.join(out, "contour.png"))
    fig, ax = plt.subplots(figsize=(6, 5))
    fig.colorbar(ax.contourf(grid_x, grid_y, z, levels=40, cmap="viridis"), ax=ax, label=zlabel)
    ax.set(xlabel=labels[0], ylabel=labels[1])
    ax.set_title(title, fontsize=9)
    common.save_figure(fig, os.path.join(out, "heatmap.png"))
    fig = plt.figure(figsize=(6.5, 5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(grid_x, grid_y, z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.8)
    if path is not None:  # the path at the loss of its own points on the plane
        ax.plot(path["x"], path["y"], to_z(path["loss"]), "r.-")
    ax.set(xlabel=labels[0], ylabel=labels[1], zlabel=zlabel)
    ax.set_title(title, fontsize=9)
    readable_3d_ticks(ax)
    common.save_figure(fig, os.path.join(out, "surface_3d.png"))
    return ["contour.png", "heatmap.png", "surface_3d.png"]


def readable_3d_ticks(ax, n=5):
    """At most n ticks on a 3D plot's x and y axes: matplotlib's default crowds them into one another."""
    from matplotlib.ticker import MaxNLocator
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(n))


class SurfaceFiles:
    """surface.npz and surface.json in --out, rewritten after every round of points (rank 0 only), with
    points/s and ETA printed every few seconds. Time after `stop_clock()` (the Hessian) is not counted."""

    def __init__(self, out, x, y, settings, info, surface, seconds_before):
        self.x, self.y, self.settings, self.info, self.seconds_before = x, y, settings, info, seconds_before
        self.npz, self.json = os.path.join(out, "surface.npz"), os.path.join(out, "surface.json")
        self.started, self.ended, self.last_print = time.time(), None, 0.0
        self.done_before = int(surface["done"].sum())

    def stop_clock(self):
        self.ended = time.time()

    def save(self, surface, status="partial", extra=None):
        shape = (len(self.x), len(self.y)) if self.y else (len(self.x),)
        common.save_npz(self.npz, x=np.array(self.x), y=np.array(self.y or []),
                        **{k: v.reshape(shape) for k, v in surface.items()})
        seconds = (self.ended or time.time()) - self.started
        n_done, n_points = int(surface["done"].sum()), int(surface["done"].size)
        rate = (n_done - self.done_before) / max(seconds, 1e-9)
        self.non_finite = int((surface["done"] & ~np.isfinite(surface["loss"])).sum())
        common.write_json(self.json, dict(
            status=status, settings=self.settings, **self.info, points=n_points, points_done=n_done,
            non_finite_points=self.non_finite,
            seconds=self.seconds_before + seconds, points_per_s=rate, torch_version=torch.__version__,
            **(extra or {})))
        if self.ended is None and (time.time() - self.last_print > 5 or n_done == n_points):
            self.last_print = time.time()
            print(f"  {n_done}/{n_points} points | {rate:.2f} points/s | "
                  f"ETA {common.format_seconds((n_points - n_done) / max(rate, 1e-9))}", flush=True)


def start_surface(out, settings, resume=False, overwrite=False):
    """(surface arrays, seconds already spent): empty, or read back with resume after checking that `out`
    was made with the same settings (SURFACE_KEYS of `settings`). Nothing is written here, so a refused call
    changes nothing."""
    npz_path, json_path = os.path.join(out, "surface.npz"), os.path.join(out, "surface.json")
    if os.path.exists(json_path) and not (resume or overwrite):
        raise common.UsageError(f"{out} already holds a surface; pass --resume to finish it or --overwrite")
    n_points = len(settings["x"]) * len(settings["y"] or [0])
    if not resume:
        return dict(loss=np.full(n_points, np.nan), acc=np.full(n_points, np.nan),
                    done=np.zeros(n_points, dtype=bool)), 0.0
    if not os.path.exists(npz_path):
        raise common.UsageError(f"--resume but {npz_path} does not exist")
    saved = common.load_json(json_path)
    made = {**saved["settings"], "precision": saved.get("precision_used", saved["settings"].get("precision"))}
    differ = [k for k in SURFACE_KEYS if made.get(k) != common.json_safe(settings[k])]
    if differ:
        raise common.UsageError(f"--resume with different settings than {json_path}: {differ}")
    old = common.load_npz(npz_path)
    return {k: old[k].reshape(-1).copy() for k in ("loss", "acc", "done")}, saved["seconds"]


def evaluation_data(data_dir, cfg, device, split="train", n_items=10000, download=True):
    """The first n_items images and labels (all: -1) of `split` (no augmentation), on the device; train and
    val are split as the checkpoint's run (config `cfg`) split them, so 'train' never includes its validation
    images."""
    data = common.load_cifar10(data_dir, download=download)
    if split == "test":
        x, y = data["test_x"], data["test_y"]
    else:
        train, val = common.split_train_val(data["train_x"], data["train_y"], cfg.get("val", 5000),
                                            cfg.get("subset", 0))
        x, y = train if split == "train" else val
    n = None if n_items < 0 else n_items
    return x[:n].to(device), y[:n].to(device)


def prepare_axes(model, device, out, ckpt, x, y=None, trajectory=None, interp=None, save=True, **random):
    """([(coordinates, direction list)] per axis, the training path or None): the plane of `trajectory`'s path,
    the direction to `interp`, or make_directions' (`random`: dir_file, seed, norm, include_bn_bias); save:
    write directions.pt into `out` (rank 0; not for an interpolation)."""
    if trajectory:
        directions, path = trajectory_directions(trajectory, model, ckpt)
    else:
        directions, path = make_directions(model, device, ckpt, two_d=bool(y), interp=interp, **random), None
    try:
        axes = [(coords, common.direction_list(model, directions[axis], device))
                for axis, coords in (("x", x), ("y", y)) if coords]
    except (KeyError, ValueError) as e:
        raise common.UsageError(f"directions do not fit {ckpt}: {e}") from None
    os.makedirs(out, exist_ok=True)
    if save and not interp:
        common.save_checkpoint(os.path.join(out, "directions.pt"), directions)
    return axes, path


def read_snapshot(path, n_params):
    """One --save-trajectory snapshot; a truncated one, or one of another size, is a UsageError naming it."""
    try:
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
        size = snapshot["params"].numel()
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as e:
        raise common.UsageError(f"{path} is not a readable snapshot (cut short?): {type(e).__name__}; delete it "
                                "and the path is drawn without it") from None
    if size != n_params:
        raise common.UsageError(f"{path} holds {size:,} parameters, the model {n_params:,}: not a snapshot of "
                                "this run; delete it")
    return snapshot


def trajectory_directions(run, model, ckpt):
    """The plane of the training path kept by --save-trajectory: the first two principal components of
    θ_t − θ_final (θ_final: --ckpt, by default the run's last.pt), each scaled so that the path spans [-1, 1]
    along it. Returns (directions, the path for surface.json: steps, x, y, explained variance, scale)."""
    folder = os.path.join(run, common.TRAJECTORY_FOLDER)
    if not os.path.exists(os.path.join(folder, "index.json")):
        raise common.UsageError(f"{folder}: no snapshots; train with --save-trajectory K")
    index, named = common.load_json(os.path.join(folder, "index.json")), list(model.named_parameters())
    if index["names"] != [n for n, _ in named] or index["shapes"] != [list(p.shape) for _, p in named]:
        raise common.UsageError(f"{folder} holds snapshots of another architecture than {ckpt}")
    files = sorted(f for f in glob.glob(os.path.join(glob.escape(folder), "step*.pt"))  # not a kill -9's temp file
                   if re.fullmatch(r"step\d+\.pt", os.path.basename(f)))
    if len(files) < 3:
        raise common.UsageError(f"{folder}: {len(files)} snapshots; a path needs at least 3")
    final = torch.cat([p.detach().reshape(-1).float().cpu() for _, p in named])
    snapshots = [read_snapshot(f, final.numel()) for f in files]
    plane, coords, explained = common.trajectory_plane([s["params"] for s in snapshots], final)
    scale = np.abs(coords).max(0)
    scale[scale == 0] = 1.0
    sizes = [p.numel() for _, p in named]
    directions = {axis: {n: piece.view(p.shape) for (n, p), piece in zip(named, (plane[k] * scale[k]).split(sizes))}
                  for k, axis in enumerate("xy")}
    path = dict(run=run, snapshots=len(files), steps=[int(s["step"]) for s in snapshots],
                x=(coords[:, 0] / scale[0]).tolist(), y=(coords[:, 1] / scale[1]).tolist(),
                explained_variance=explained.tolist(), scale=scale.tolist(), bytes_per_snapshot=2 * sum(sizes))
    print(f"{len(files)} snapshots of {run}: the first two components explain "
          f"{100 * explained[0]:.1f} % and {100 * explained[1]:.1f} % of the path's variance", flush=True)
    return directions, path


def make_directions(model, device, ckpt, two_d=True, interp=None, dir_file=None, seed=0, norm="filter",
                    include_bn_bias=False):
    """{'x': {name: tensor}[, 'y': ...] with two_d}: towards the `interp` checkpoint, read from `dir_file`, or
    random from `seed` (common.random_direction with `norm` and `include_bn_bias`); `ckpt` names the model."""
    if interp:
        other = dict(common.landscape_tensors(common.load_checkpoint(interp, device)[0]))
        shapes = lambda tensors: {name: t.shape for name, t in tensors}  # noqa: E731
        if shapes(other.items()) != shapes(common.landscape_tensors(model)):
            raise common.UsageError(f"{interp} is not the same architecture as {ckpt}")
        return {"x": {name: (other[name] - t).detach().cpu() for name, t in common.landscape_tensors(model)}}
    if dir_file:
        try:
            return torch.load(dir_file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            raise common.UsageError(f"--dir-file {dir_file}: not a directions.pt we can read "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    generator = torch.Generator().manual_seed(seed)
    return {axis: common.random_direction(model, generator, norm, include_bn_bias)
            for axis in (["x", "y"] if two_d else ["x"])}


# -- the Hessian at the checkpoint -------------------------------------------------------------

def hessian_batches(model, images, labels, criterion, numerics, batch_size):
    """batch_losses() for every Hessian statistic: summed losses of batches of batch_size, in fp32."""
    def batch_losses():
        for i in range(0, len(labels), batch_size):
            x = numerics.inputs(images[i:i + batch_size])  # no autocast: fp32 products
            yield criterion(model(x).float(), labels[i:i + batch_size]) * len(x)
    batch_losses.batches = math.ceil(len(labels) / batch_size)  # one: its gradient graph serves every product
    return batch_losses


@contextlib.contextmanager
def hessian_mode(model, bn_mode):
    """BN normalizes with batch statistics under 'train' (dropout stays off), with the running ones under
    'eval'; weights, BN statistics and the RNG are put back afterwards."""
    with common.preserved(model):
        for m in model.modules():
            m.train(bn_mode == "train" and isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        try:
            yield
        finally:
            model.eval()


def mean_std(values):
    return dict(mean=statistics.mean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                values=values)


@dataclasses.dataclass
class HessianOptions:
    """Which Hessian statistics (the --hessian* flags) and how: Lanczos iterations and tolerance, probes, steps,
    and `repeats` seeds from `seed` on, in BN mode `bn_mode`, on batches of `batch_size` images."""
    extremes: bool = False
    trace: bool = False
    density: bool = False
    per_block: bool = False
    iters: int = 20
    tol: float = 1e-3
    trace_probes: int = 16
    slq_probes: int = 4
    slq_steps: int = 30
    repeats: int = 1
    seed: int = 0
    bn_mode: str = "eval"
    batch_size: int = common.EVAL_BATCH
    coords: str = "raw"

    @classmethod
    def from_args(cls, args):
        return cls(args.hessian, args.hessian_trace, args.hessian_density, args.per_block, args.hessian_iters,
                   args.hessian_tol, args.trace_probes, args.slq_probes, args.slq_steps, args.repeats, args.seed,
                   args.bn_mode, args.batch_size, args.hessian_coords)


def hessian_extras(model, images, labels, criterion, numerics, options):
    """surface.json's 'hessian' (options.extremes) and 'spectrum' (trace, density, per_block) entries, each
    statistic over options.repeats seeds, on the evaluation images in options.bn_mode."""
    batch_losses = hessian_batches(model, images, labels, criterion, numerics, options.batch_size)
    n, extras, seeds = len(labels), {}, [options.seed + k for k in range(options.repeats)]
    with hessian_mode(model, options.bn_mode):
        if options.extremes:
            extras["hessian"] = extremes(model, batch_losses, n, seeds, options.iters, options.tol,
                                         coords=options.coords)
        if options.trace or options.density or options.per_block:
            started = time.time()
            extras["spectrum"] = dict(spectrum(model, batch_losses, n, seeds, options), images=n,
                                      bn_mode=options.bn_mode, repeats=options.repeats, coords=options.coords)
            extras["spectrum"]["seconds"] = time.time() - started
    return extras


def extremes(model, batch_losses, n, seeds, iters=20, tol=1e-3, params=None, coords="raw"):
    """The top and most negative eigenvalue by Lanczos (at most `iters` iterations, converged at `tol`) from
    each seed's start, in `coords` (common.hessian_operator): mean, std, and the first run's residuals (the keys
    table 6 reads)."""
    started = time.time()
    runs = [common.hessian_extremes(model, batch_losses, n, iters, tol, s, params, coords) for s in seeds]
    top, bottom = mean_std([h["top"] for h in runs]), mean_std([h["bottom"] for h in runs])
    h = runs[0]
    print(f"Hessian eigenvalues: top {top['mean']:.4g} ± {top['std']:.2g}, most negative {bottom['mean']:.4g} "
          f"({len(runs)} start(s), {h['iterations']} Lanczos iterations, "
          f"{'converged' if all(r['converged'] for r in runs) else 'NOT converged: raise --hessian-iters'}; "
          f"residuals {h['residual_top']:.2g} / {h['residual_bottom']:.2g})", flush=True)
    return dict(top_eigenvalue=top["mean"], top_eigenvalue_std=top["std"], bottom_eigenvalue=bottom["mean"],
                bottom_eigenvalue_std=bottom["std"], residual_top=h["residual_top"],
                residual_bottom=h["residual_bottom"], converged=all(r["converged"] for r in runs),
                iterations=max(r["iterations"] for r in runs), tol=tol, repeats=len(runs), coords=coords,
                seconds=time.time() - started)


def spectrum(model, batch_losses, n, seeds, options):
    """Hutchinson's trace with its standard error, the SLQ density, and per block the top eigenvalue and the
    trace of the block's own Hessian (the other parameters fixed), each over the seeds."""
    out = {}
    if options.trace:
        traces = [common.hessian_trace(model, batch_losses, n, options.trace_probes, s, coords=options.coords)
                  for s in seeds]
        out["trace"] = dict(mean_std([t["trace"] for t in traces]), stderr=[t["stderr"] for t in traces],
                            probes=options.trace_probes)
        print(f"Hessian trace {out['trace']['mean']:.4g} (standard error {traces[0]['stderr']:.2g} from "
              f"{options.trace_probes} probes; std {out['trace']['std']:.2g} over {len(seeds)} seed(s))", flush=True)
    if options.density:
        spectra = [common.hessian_spectrum(model, batch_losses, n, options.slq_probes, options.slq_steps, s,
                                           coords=options.coords) for s in seeds]
        out["density"] = dict(probes=options.slq_probes, steps=options.slq_steps,
                              nodes=[[nodes.tolist() for nodes, _ in sp] for sp in spectra],
                              weights=[[w.tolist() for _, w in sp] for sp in spectra])
    if options.per_block:
        out["blocks"] = []
        for name, params in common.parameter_blocks(model):
            tops = [common.hessian_extremes(model, batch_losses, n, options.iters, options.tol, s, params,
                                            options.coords)["top"] for s in seeds]
            traces = [common.hessian_trace(model, batch_losses, n, options.trace_probes, s, params,
                                           options.coords)["trace"]
                      for s in seeds]
            out["blocks"].append(dict(name=name, params=common.flat_size(params), top=mean_std(tops),
                                      trace=mean_std(traces)))
    return out


def plot_spectrum(info, out, title):
    """spectrum.png: the SLQ eigenvalue density (log y; one thin line per seed, their mean bold) with the trace;
    blocks.png: per block the top eigenvalue and the trace (log x, ± std over seeds). Returns the files."""
    plt, written, s = common.pyplot(), [], info["spectrum"]
    if "density" in s:
        grid, sigma, curves = common.density_curves(s["density"])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for curve in curves:
            ax.plot(grid, np.maximum(curve, 1e-12), color="tab:blue", lw=0.6, alpha=0.5)
        ax.plot(grid, np.maximum(np.mean(curves, 0), 1e-12), color="tab:blue", lw=1.6, label="mean over seeds")
        trace = f"; trace {s['trace']['mean']:.4g} ± {s['trace']['std']:.2g}" if "trace" in s else ""
        ax.set(yscale="log", ylim=(1e-8, None), xlabel="eigenvalue", ylabel="density (Gaussian σ = "
               f"{sigma:.2g})", title=f"{title}\nHessian spectrum, BN {s['bn_mode']}, {s['images']} images, "
               f"{s['density']['probes']} probes × {s['density']['steps']} Lanczos steps{trace}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        common.save_figure(fig, os.path.join(out, "spectrum.png"))
        written.append("spectrum.png")
    if "blocks" in s:
        written.append(plot_blocks(s, out, title))
    return written


def plot_blocks(s, out, title):
    plt = common.pyplot()
    names = [b["name"] for b in s["blocks"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * len(names) + 1.8), sharey=True)
    for ax, key in zip(axes, ("top", "trace")):
        means = np.array([b[key]["mean"] for b in s["blocks"]])
        ax.barh(names, np.abs(means), xerr=[b[key]["std"] for b in s["blocks"]],
                color=np.where(means >= 0, "tab:blue", "tab:red"))
        ax.set(xscale="log", xlabel=f"|{'top eigenvalue' if key == 'top' else 'trace'}| (red: negative)")
        ax.grid(alpha=0.3, axis="x")
    axes[0].invert_yaxis()  # the first block on top
    fig.suptitle(f"{title}: per block, BN {s['bn_mode']}, {s['images']} images, ± std over {s['repeats']} seed(s)",
                 fontsize=9)
    common.save_figure(fig, os.path.join(out, "blocks.png"))
    return "blocks.png"


def main(argv=None):
    args = parse_args(argv)
    try:
        return replot(args.replot, args.log, args.zmax) if args.replot else landscape(args)
    except common.USER_ERRORS as e:
        return common.fail(e)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def landscape(args):
    """Compute (or finish) the surface in --out, then on rank 0 the Hessian and the figures; exit code.
    Rank 0 holds --out's lock throughout."""
    rank, device = setup_distributed(args.device)
    with common.folder_lock(args.out) if rank == 0 else contextlib.nullcontext():
        return landscape_in_folder(args, rank, device)


def finish_surface(out, files, surface, extra, log=False, zmax=None):
    """Arrays (and the Hessian) saved, the figures drawn, and only then surface.json says complete, listing
    them: a surface killed between the two is finished again, not skipped. Returns the figures."""
    files.save(surface, "partial", extra)
    if files.non_finite:
        print(f"warning: {files.non_finite} points have a non-finite loss (surface.json: non_finite_points)")
    written = draw_figures(out, common.load_json(files.json), log, zmax)
    files.save(surface, "complete", dict(extra, figures=written))
    return written


def run_words(ckpt):
    """The run of a checkpoint in words (common.describe of the config.json beside it), else its folder name."""
    config = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "config.json")
    try:
        return textwrap.fill(common.describe(common.load_json(config)), 64)
    except (OSError, ValueError, KeyError):
        return os.path.basename(os.path.dirname(os.path.abspath(ckpt)))


NO_BN_MODELS = ("vgg_a", "vgg16")  # the models without BatchNorm: their surfaces have no BN mode to name


def protocol_words(info):
    """How a surface was made, for its figures' titles: 'filter-normalized random directions, loss on 2,000
    training images, BN in eval mode (running statistics)'; the BN mode only for a model with BN."""
    s = info["settings"]
    axes = ("the path's PCA plane" if s.get("trajectory") else "the straight path between two checkpoints"
            if s["interp"] else f"{s['norm']}-normalized random directions" if s["norm"] != "none" else
            "random directions (not normalized)")
    images = "all" if s["n_items"] == -1 else f"{s['n_items']:,}"
    split = "training" if s["split"] == "train" else s["split"]
    bn = "" if info.get("model") in NO_BN_MODELS else \
        ", BN in eval mode (running statistics)" if s["bn_mode"] == "eval" else \
        ", BN in train mode (statistics re-estimated)"
    return textwrap.fill(f"{axes}, loss on {images} {split} images{bn}", 60)


def draw_figures(folder, info, log, zmax):
    """The figures of the surface in `folder` (its surface.npz; `info`: its surface.json); returns their names."""
    settings = info["settings"]
    title = run_words(settings["ckpt"]) + (f" (α=0)\nto {run_words(settings['interp'])} (α=1)"
                                          if settings["interp"] else "")
    written = plot_landscape(common.load_npz(os.path.join(folder, "surface.npz")), folder,
                             f"{title}\n{protocol_words(info)}", log, zmax, "α" if settings["interp"] else "x",
                             info.get("trajectory"))
    return written + (plot_spectrum(info, folder, title) if "spectrum" in info else [])


def replot(folder, log, zmax):
    """--replot: a complete surface's figures drawn again from its files (e.g. another clip), nothing else
    changed but surface.json's list of figures; a figure it lists that is no longer drawn is removed. Exit code."""
    path = os.path.join(folder, "surface.json")
    if not os.path.exists(path):
        raise common.UsageError(f"--replot {folder}: no surface.json there, nothing to draw")
    with common.folder_lock(folder):
        info = common.load_json(path)
        if info.get("status") != "complete":
            raise common.UsageError(f"--replot {folder}: the surface is {info.get('status')}; finish it first "
                                    "(its command plus --resume)")
        stale, info["figures"] = set(info.get("figures", [])), draw_figures(folder, info, log, zmax)
        common.write_json(path, info)
        for name in sorted(stale - set(info["figures"])):
            os.remove(os.path.join(folder, name))
    print(f"drew {', '.join(info['figures']) or 'nothing (a single point)'} in {folder}", flush=True)
    return 0


def drop_old_surface(out):
    for name in ("surface.json", "surface.npz"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def landscape_in_folder(args, rank, device):
    numerics = common.numerics_for(args.precision, device)
    settings = {**{k: getattr(args, k) for k in SURFACE_KEYS if not k.endswith("_sha256")},
                "precision": numerics.precision, "ckpt_sha256": common.file_digest(args.ckpt),
                "interp_sha256": args.interp and common.file_digest(args.interp)}
    surface, seconds_before = start_surface(args.out, settings, args.resume, args.overwrite)
    model, ckpt = common.load_checkpoint(args.ckpt)
    model = numerics.place(model, device).eval()
    cfg, world = ckpt["config"], common.rank_and_world()[1]
    images, labels = evaluation_data(args.data_dir, cfg, device, args.split, args.n_items, not args.no_download)
    if rank == 0 and not args.resume:  # --overwrite: the old surface is not complete beside the new directions
        drop_old_surface(args.out)
    criterion = common.loss_fn(cfg["loss"], cfg.get("label_smoothing", 0.0))
    base = [t.detach().clone() for _, t in common.landscape_tensors(model)]
    axes, path = prepare_axes(model, device, args.out, args.ckpt, args.x, args.y, args.trajectory, args.interp,
                              rank == 0, dir_file=args.dir_file, seed=args.seed, norm=args.norm,
                              include_bn_bias=args.include_bn_bias)
    info = dict(model=cfg["model"], device=common.device_name(device), world_size=world,
                precision_used=numerics.precision, memory_format=numerics.memory_format,
                hessian_options=dataclasses.asdict(HessianOptions.from_args(args)))
    files = SurfaceFiles(args.out, args.x, args.y, settings, info, surface, seconds_before)
    if rank == 0:
        what = f"interpolation to {args.interp}" if args.interp else f"the path of {args.trajectory}" \
            if args.trajectory else f"{args.norm}-normalized directions"
        print(f"{args.ckpt}: {cfg['model']} | {what} | {len(args.x)} x {len(args.y or [1])} points on "
              f"{len(labels)} {args.split} images | {device} x {world}, {numerics} | out {args.out}", flush=True)
    with common.GracefulStop() as stop, common.preserved(model):
        finished = common.compute_surface(model, base, axes, images, labels, criterion, device, surface,
                                          files.save if rank == 0 else lambda s: None, numerics,
                                          args.bn_mode, args.batch_size, stop)
    files.stop_clock()
    if rank > 0 or not finished:
        if rank == 0:
            print(f"stopped with {int(surface['done'].sum())}/{surface['done'].size} points; resume with the "
                  f"same command plus --resume", flush=True)
        return 0 if finished else 130
    extra = hessian_extras(model, images, labels, criterion, numerics, HessianOptions.from_args(args))
    if path is not None:  # the loss at each snapshot's projection onto the plane, for the 3D figure
        with common.preserved(model):
            path["loss"] = [common.evaluate_at(model, base, [(x, axes[0][1]), (y, axes[1][1])], images, labels,
                                               criterion, device, numerics, args.bn_mode, args.batch_size)[0]
                            for x, y in zip(path["x"], path["y"])]
        extra["trajectory"] = path
    written = finish_surface(args.out, files, surface, extra, args.log, args.zmax)
    info = common.load_json(files.json)
    print(f"{info['points']} points in {info['seconds']:.1f} s ({info['points_per_s']:.2f} points/s) | "
          f"wrote surface.npz, surface.json, {', '.join(written)} in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
