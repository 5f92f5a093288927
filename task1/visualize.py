"""Pictures of a trained network: the first conv layer's filters as small RGB images, and the feature
maps of one test image at a chosen layer.

    python task1/visualize.py --ckpt runs/X/best.pt --out runs/X/visualize --n 16 --layer features.3

Writes filters.png and feature_maps.png to --out (default <checkpoint folder>/visualize).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import common  # noqa: E402

MAX_MAPS = 64


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", help="output folder")
    p.add_argument("--n", type=int, help="show only the first N filters (default: all)")
    p.add_argument("--layer", help="module whose output to show (default: the first conv layer)")
    p.add_argument("--image-index", type=int, default=0, help="which test image")
    p.add_argument("--data-dir", default=common.default_data_dir())
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "visualize")
    os.makedirs(out, exist_ok=True)
    device = common.resolve_device(args.device)
    model, ckpt = common.load_checkpoint(args.ckpt, device)
    model.eval()
    modules = dict(model.named_modules())
    first_conv = next(name for name, m in modules.items() if isinstance(m, torch.nn.Conv2d))
    layer = args.layer or first_conv
    if layer not in modules:
        top = [n for n in modules if n and n.count(".") <= 1][:20]
        sys.exit(f"error: no layer {layer!r} in {ckpt['config']['model']}; some names: {', '.join(top)}")

    weight = modules[first_conv].weight
    grid = common.filter_grid(weight, args.n)
    shown = len(weight) if args.n is None else min(args.n, len(weight))
    common.plot_images_grid(grid, os.path.join(out, "filters.png"),
                            f"{first_conv}: {shown} of {len(weight)} filters (each min-max normalized)")

    try:
        data = common.load_cifar10(args.data_dir, download=not args.no_download)
    except common.DataError as e:
        sys.exit(f"error: {e}")
    image = data["test_x"][args.image_index:args.image_index + 1].to(device)
    captured = {}
    handle = modules[layer].register_forward_hook(lambda m, i, o: captured.setdefault("maps", o.detach()))
    with torch.no_grad():
        model(common.normalize(image))
    handle.remove()
    maps = captured["maps"][0].float().cpu()
    if maps.dim() != 3:
        sys.exit(f"error: layer {layer!r} outputs shape {list(maps.shape)}, not feature maps; pick a conv layer")
    label = data["classes"][int(data["test_y"][args.image_index])]
    common.plot_images_grid([m.numpy() for m in maps[:MAX_MAPS]], os.path.join(out, "feature_maps.png"),
                            f"{layer}: {min(len(maps), MAX_MAPS)} of {len(maps)} feature maps, test image "
                            f"{args.image_index} ({label})", cmap="viridis")
    print(f"wrote filters.png and feature_maps.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
