"""Loss landscape of a checkpoint along filter-normalized random directions (Li et al. 2018), or the
linear interpolation between two checkpoints; optionally the top Hessian eigenvalue.

    python task2/landscape.py --ckpt runs/X/best.pt                         # 1D, x in -1:1:51
    python task2/landscape.py --ckpt runs/X/best.pt --y -1:1:51             # 2D surface
    python task2/landscape.py --ckpt runs/sgd/best.pt --interp runs/adam/best.pt --x -0.5:1.5:41
    torchrun --nproc_per_node 4 task2/landscape.py --ckpt runs/X/best.pt --y -1:1:51   # sharded

Writes surface.npz (x, y, loss, acc, done; loss[i, j] at (x[i], y[j])), surface.json, directions.pt and
PNGs to --out (default <checkpoint folder>/landscape or .../interp). Ctrl-C saves; --resume goes on.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402

# settings that must match for --resume to continue a surface
SURFACE_KEYS = ("ckpt", "interp", "x", "y", "seed", "norm", "include_bn_bias", "bn_mode", "split", "n_items",
                "precision", "dir_file")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="any best.pt / last.pt of task1 or task2")
    p.add_argument("--x", default="-1:1:51", type=common.parse_axis, help="MIN:MAX:NUM along the x direction")
    p.add_argument("--y", type=common.parse_axis, help="MIN:MAX:NUM along y: a 2D surface")
    p.add_argument("--interp", metavar="CKPT2", help="1D: θ(α) = (1−α)θ1 + αθ2 with α from --x, BN stats included")
    p.add_argument("--out", help="output folder")
    p.add_argument("--norm", default="filter", choices=common.NORMS, help="direction normalization")
    p.add_argument("--include-bn-bias", action="store_true",
                   help="give biases and BN weights/biases a direction too (zero by default)")
    p.add_argument("--bn-mode", default="eval", choices=["eval", "train"],
                   help="eval: the checkpoint's BN running statistics; train: re-estimate them at every point")
    p.add_argument("--dir-file", help="reuse directions.pt of another surface (same architecture, same plane)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--n-items", type=int, default=10000, help="first N images of the split (-1: all)")
    p.add_argument("--batch-size", type=int, default=common.EVAL_BATCH, help="evaluation batch size")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="bf16 autocast applies on CUDA only")
    p.add_argument("--log", action="store_true", help="log10 z scale in the figures")
    p.add_argument("--zmax", type=float, help="clip the loss at this value in the figures")
    p.add_argument("--hessian", action="store_true", help="also the top Hessian eigenvalue at the checkpoint")
    p.add_argument("--hessian-iters", type=int, default=20)
    p.add_argument("--hessian-tol", type=float, default=1e-3, help="relative change that ends power iteration")
    p.add_argument("--resume", action="store_true", help="compute only the points --out does not have yet")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a surface")
    p.add_argument("--data-dir", default=common.default_data_dir())
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0, help="random directions")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, token in enumerate(argv[:-1]):  # let "--x -1:1:51" through: argparse reads "-1:1:51" as an option
        if token in ("--x", "--y") and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"{token}={argv[i + 1]}", ""]
    args = p.parse_args([a for a in argv if a != ""])
    if args.interp and args.y:
        p.error("--interp is one-dimensional; drop --y")
    if args.interp and args.dir_file:
        p.error("--interp takes its direction from the two checkpoints; drop --dir-file")
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)),
                                        "interp" if args.interp else "landscape")
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


def main(argv=None):
    args = parse_args(argv)
    rank, device = setup_distributed(args.device)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    settings = {k: getattr(args, k) for k in SURFACE_KEYS}
    npz_path, json_path = os.path.join(args.out, "surface.npz"), os.path.join(args.out, "surface.json")
    if rank == 0:
        if os.path.exists(json_path) and not (args.resume or args.overwrite):
            sys.exit(f"error: {args.out} already holds a surface; pass --resume to finish it or --overwrite")
        if args.resume and not os.path.exists(npz_path):
            sys.exit(f"error: --resume but {npz_path} does not exist")
        os.makedirs(args.out, exist_ok=True)

    model, ckpt = common.load_checkpoint(args.ckpt, device)
    model.eval()
    cfg = ckpt["config"]
    try:
        data = common.load_cifar10(args.data_dir, download=not args.no_download)
    except common.DataError as e:
        sys.exit(f"error: {e}")
    n = None if args.n_items < 0 else args.n_items
    images, labels = data[f"{args.split}_x"][:n].to(device), data[f"{args.split}_y"][:n].to(device)
    criterion = common.loss_fn(cfg["loss"], cfg.get("label_smoothing", 0.0))
    bf16 = args.precision == "bf16"
    base = [t.detach().clone() for _, t in common.landscape_tensors(model)]

    if args.interp:
        other, _ = common.load_checkpoint(args.interp, device)
        other_state = dict(common.landscape_tensors(other))
        directions = {"x": {name: (other_state[name] - t).detach().cpu() if name in other_state else None
                            for name, t in common.landscape_tensors(model)}}
        if any(d is None for d in directions["x"].values()):
            sys.exit(f"error: {args.interp} is not the same architecture as {args.ckpt}")
    elif args.dir_file:
        directions = torch.load(args.dir_file, map_location="cpu", weights_only=True)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        directions = {axis: common.random_direction(model, generator, args.norm, args.include_bn_bias)
                      for axis in (["x", "y"] if args.y else ["x"])}
    try:
        axes = [(coords, common.direction_list(model, directions[axis], device))
                for axis, coords in (("x", args.x), ("y", args.y)) if coords]
    except (KeyError, ValueError) as e:
        sys.exit(f"error: directions do not fit {args.ckpt}: {e}")
    if rank == 0 and not args.interp:
        common.save_checkpoint(os.path.join(args.out, "directions.pt"), directions)

    shape = (len(args.x), len(args.y or []) or 1)
    surface = dict(loss=np.full(shape[0] * shape[1], np.nan), acc=np.full(shape[0] * shape[1], np.nan),
                   done=np.zeros(shape[0] * shape[1], dtype=bool))
    elapsed_before = 0.0
    if args.resume:
        saved = common.load_json(json_path)
        elapsed_before = saved["seconds"]
        differ = [k for k in SURFACE_KEYS if saved["settings"].get(k) != common.json_safe(settings[k])]
        if differ:
            sys.exit(f"error: --resume with different settings than {json_path}: {differ}")
        with np.load(npz_path) as old:
            surface = {k: old[k].reshape(-1).copy() for k in ("loss", "acc", "done")}

    def save(surface, status="partial", extra=None):
        grid = {k: v.reshape(shape if args.y else shape[0]) for k, v in surface.items()}
        np.savez(npz_path + ".tmp.npz", x=np.array(args.x), y=np.array(args.y or []), **grid)
        os.replace(npz_path + ".tmp.npz", npz_path)
        session_seconds = timing.get("surface_end", time.time()) - started
        n_done = int(surface["done"].sum())
        common.write_json(json_path, dict(
            status=status, settings=settings, model=cfg["model"], device=str(device) if device.type == "cpu" else
            torch.cuda.get_device_name(device), world_size=world, points=int(surface["done"].size),
            points_done=n_done, seconds=elapsed_before + session_seconds,
            points_per_s=(n_done - done_before) / max(session_seconds, 1e-9),
            torch_version=torch.__version__, **(extra or {})))

    if rank == 0:
        what = f"interpolation to {args.interp}" if args.interp else f"{args.norm}-normalized directions"
        print(f"{args.ckpt}: {cfg['model']} | {what} | {len(args.x)} x {len(args.y or [1])} points on "
              f"{len(labels)} {args.split} images | "
              f"{device} x {world} | out {args.out}", flush=True)
    started, done_before, timing = time.time(), int(surface["done"].sum()), {}
    with common.GracefulStop() as stop, common.preserved(model):
        finished = common.compute_surface(model, base, axes, images, labels, criterion, device, surface,
                                          save if rank == 0 else lambda s: None, bf16, args.bn_mode,
                                          args.batch_size, stop)
    timing["surface_end"] = time.time()  # the Hessian below does not count towards points/s
    if rank == 0 and not finished:
        save(surface)
        print(f"stopped with {int(surface['done'].sum())}/{surface['done'].size} points; resume with the same "
              f"command plus --resume", flush=True)
    extra = {}
    if finished and args.hessian and rank == 0:
        def batch_losses():
            for i in range(0, len(labels), args.batch_size):
                x = common.normalize(images[i:i + args.batch_size], channels_last=device.type == "cuda")
                yield criterion(model(x).float(), labels[i:i + args.batch_size]) * len(x)
        t0 = time.time()
        eigenvalue, iters = common.hessian_top_eigenvalue(model, batch_losses, len(labels), args.hessian_iters,
                                                          args.hessian_tol, args.seed)
        extra["hessian"] = dict(top_eigenvalue=eigenvalue, iterations=iters, tol=args.hessian_tol,
                                seconds=time.time() - t0)
        print(f"top Hessian eigenvalue {eigenvalue:.4g} ({iters} iterations)", flush=True)
    if rank == 0 and finished:
        save(surface, "complete", extra)
        with np.load(npz_path) as saved:
            title = f"{cfg['model']} {os.path.basename(os.path.dirname(os.path.abspath(args.ckpt)))}"
            files = common.plot_landscape(dict(saved), args.out, title, args.log, args.zmax,
                                          xlabel="α" if args.interp else "x")
        info = common.load_json(json_path)
        print(f"{info['points']} points in {info['seconds']:.1f} s ({info['points_per_s']:.2f} points/s) | "
              f"wrote surface.npz, surface.json, {', '.join(files)} in {args.out}", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if finished else 130


if __name__ == "__main__":
    sys.exit(main())
