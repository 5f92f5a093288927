"""Pictures of a trained network: the first conv layer's filters as small RGB images, and the feature
maps of one test image at a chosen layer.

    python task1/visualize.py --ckpt runs/X/best.pt --out runs/X/visualize --n 16 --layer features.3

Writes filters.png and feature_maps.png to --out (default <checkpoint folder>/visualize).
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402

MAX_MAPS = 64


def filter_grid(weight, n=None, pad=1):
    """The first conv layer's filters [C_out, 3, k, k] as one RGB image: each filter min-max normalized
    to [0, 1] on its own, laid out in a near-square grid with `pad` white pixels between filters."""
    w = weight.detach().float().cpu()[:n]
    lo = w.flatten(1).min(1).values[:, None, None, None]
    hi = w.flatten(1).max(1).values[:, None, None, None]
    w = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()  # [n, k, k, 3]
    count, k = len(w), w.shape[1]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = np.ones((rows * (k + pad) - pad, cols * (k + pad) - pad, 3))
    for i, f in enumerate(w):
        r, c = divmod(i, cols)
        grid[r * (k + pad):r * (k + pad) + k, c * (k + pad):c * (k + pad) + k] = f
    return grid


def plot_images_grid(images, path, title, cmap=None):
    """Save one image (H x W or H x W x 3) or a list of single-channel maps as a tiled figure."""
    plt = common.pyplot()
    if isinstance(images, list):
        cols = math.ceil(math.sqrt(len(images)))
        rows = math.ceil(len(images) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img in zip(axes.flat, images):
            ax.imshow(img, cmap=cmap)
    else:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(images, interpolation="nearest")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    common.save_figure(fig, path)


def feature_maps(model, layer, image, numerics=common.FP32):
    """The output of module `layer` for one normalized image, [C, H, W] on the CPU."""
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: captured.setdefault("maps", o.detach()))
    with torch.no_grad(), numerics.autocast(image.device):
        model(numerics.inputs(image))
    handle.remove()
    maps = captured["maps"][0].float().cpu()
    if maps.dim() != 3:
        raise common.UsageError(f"layer {layer!r} outputs shape {list(maps.shape)}, not feature maps; "
                                "pick a conv layer")
    return maps


def _load(args):
    """The checkpoint's model on the device, its config, the numerics, the first conv and the layer to show."""
    device = common.resolve_device(args.device)
    numerics = common.numerics_for(args.precision, device)
    model, ckpt = common.load_checkpoint(args.ckpt)
    model = numerics.place(model, device).eval()
    modules = dict(model.named_modules())
    first_conv = next(name for name, m in modules.items() if isinstance(m, torch.nn.Conv2d))
    layer = args.layer or first_conv
    if layer not in modules:
        top = [n for n in modules if n and n.count(".") <= 1][:20]
        raise common.UsageError(f"no layer {layer!r} in {ckpt['config']['model']}; some names: {', '.join(top)}")
    return model, numerics, modules[first_conv].weight, first_conv, layer


def _test_image_maps(args, model, layer, numerics):
    """(feature maps, label) of test image --image-index, or (None, why) when the data cannot be read."""
    try:
        data = common.load_cifar10(args.data_dir, download=not args.no_download)
    except common.DataError as e:
        return None, str(e)
    if not 0 <= args.image_index < len(data["test_y"]):
        raise common.UsageError(f"--image-index {args.image_index}: the test set has {len(data['test_y'])} images")
    image = data["test_x"][args.image_index:args.image_index + 1].to(next(model.parameters()).device)
    return feature_maps(model, layer, image, numerics), data["classes"][int(data["test_y"][args.image_index])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", help="output folder")
    p.add_argument("--n", type=int, help="show only the first N filters (default: all)")
    p.add_argument("--layer", help="module whose output to show (default: the first conv layer)")
    p.add_argument("--image-index", type=int, default=0, help="which test image")
    common.add_precision_arg(p)
    args = common.add_data_args(p).parse_args(argv)
    if args.n is not None and args.n < 1:
        p.error("--n must be at least 1")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "visualize")
    try:  # everything checked before anything is written
        model, numerics, weight, first_conv, layer = _load(args)
        maps, label = _test_image_maps(args, model, layer, numerics)
        os.makedirs(out, exist_ok=True)
    except common.USER_ERRORS as e:
        return common.fail(e)
    shown = len(weight) if args.n is None else min(args.n, len(weight))
    plot_images_grid(filter_grid(weight, args.n), os.path.join(out, "filters.png"),
                     f"{first_conv}: {shown} of {len(weight)} filters (each min-max normalized)")
    if maps is None:
        print(f"wrote filters.png to {out}; no feature maps, they need a test image: {label}")
        return 0
    plot_images_grid([m.numpy() for m in maps[:MAX_MAPS]], os.path.join(out, "feature_maps.png"),
                     f"{layer}: {min(len(maps), MAX_MAPS)} of {len(maps)} feature maps, test image "
                     f"{args.image_index} ({label})", cmap="viridis")
    print(f"wrote filters.png and feature_maps.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
