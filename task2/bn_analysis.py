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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

ANALYSIS_KEYS = ("models", "lrs", "probe_every", "probe_etas", "smooth", "replot")


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


def analysis_run(args, base, model, lr, out):
    """Train one model at one lr with the probe, or reuse a finished run of an earlier call with the
    same settings."""
    import numpy as np
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
    probe = common.BNProbe(common.loss_fn(cfg["loss"], cfg["label_smoothing"]), etas, args.probe_every,
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
        runs, settings = common.load_bn_analysis(args.replot)
        common.write_bn_report(runs, args.replot, args.smooth)
        print(f"redrew {', '.join(common.BN_FIGURES)} and summary.md in {args.replot}")
        return 0
    out = args.out or os.path.join("runs", "bn_analysis")
    os.makedirs(out, exist_ok=True)
    base = {k: v for k, v in vars(args).items() if k not in ANALYSIS_KEYS}
    runs = []
    for i, (model, lr) in enumerate((m, lr) for m in args.models for lr in args.lrs):
        print(f"=== run {i + 1} of {len(args.models) * len(args.lrs)}: {model}, {args.opt} lr {lr:g}", flush=True)
        try:
            run = analysis_run(args, base, model, lr, out)
        except common.DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if run is None:
            print("interrupted; rerun the same command to resume (finished runs are reused)", flush=True)
            return 130
        runs.append(run)
    settings = {k: getattr(args, k) for k in ("models", "lrs", "probe_every", "probe_etas", "opt", "epochs",
                                              "batch_size", "subset", "width", "seed")}
    common.save_bn_analysis(runs, out, settings)
    common.write_bn_report(runs, out, args.smooth)
    print(common.bn_summary_table(runs))
    print(f"figures, summary.md and raw numbers in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
