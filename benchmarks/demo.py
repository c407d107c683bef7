"""Unguided vs ASAG vs PAG on the same layers, on the committed tiny digits model, as one image.

    python -m benchmarks.demo [--out PATH] [--per-digit 4] [--seed 0] [--cfg 3] [--scale 1]

ComfyUI is found and started as the host tests do (``tests/comfy_host.py``); the pack's
``ASAGAdvanced`` node and the layer-matched PAG of ``benchmarks.perturb`` patch the model
on the same layers, and ``comfy.sample.sample`` samples every column from the same seed and
the same initial noise.  Rows: digits 0-9; columns: unguided, + ASAG, + PAG (attention
output = V) on the same layers.  The image goes to ComfyUI's output folder
(``folder_paths.get_output_directory()``) unless ``--out`` names another path; the path
written is printed.  Nothing in the repository is touched unless ``--out`` points there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from .host import start_host
from .quality_settings import TINY_LAYERS, asag_model

DEFAULT_NAME = "asag_demo.png"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help=f"image path (default: ComfyUI's output folder / {DEFAULT_NAME})")
    p.add_argument("--model", choices=("main", "small"), default="main", help="which committed tiny model")
    p.add_argument("--per-digit", type=int, default=4, help="samples per digit (row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--scale", type=float, default=1.0, help="ASAG and PAG scale")
    p.add_argument("--layers", default=TINY_LAYERS, help="layers of both methods")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def columns(host, base, args) -> list[tuple[str, object]]:
    from .perturb import perturbed_guidance, resolve_unet_layers

    asag = asag_model(host, base, scale=args.scale, layers=args.layers)
    pag = perturbed_guidance(base, args.scale, resolve_unet_layers(host, base, args.layers), "pag")
    return [(f"CFG {args.cfg:g}", base), (f"+ ASAG {args.scale:g}\n(layers {args.layers})", asag),
            (f"+ PAG {args.scale:g}, same layers\n(attention output = V)", pag)]


def draw(labels, images, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = args.per_digit
    fig, axes = plt.subplots(10, len(labels), figsize=(1.0 + 0.75 * k * len(labels), 8.6))
    axes = np.asarray(axes).reshape(10, len(labels))
    for c, (label, imgs) in enumerate(zip(labels, images, strict=True)):
        for d in range(10):
            ax = axes[d, c]
            ax.imshow(np.concatenate([imgs[d * k + j, 0].numpy() for j in range(k)], axis=1), cmap="gray",
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if d == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"digit {d}", fontsize=8)
    fig.suptitle(f"tiny digits UNet ({args.model}) in ComfyUI, {args.steps} euler/karras steps, seed {args.seed}: "
                 "same noise in every column", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    host = start_host()
    import folder_paths

    from .tiny.model import MODELS, load_tiny_model

    tiny = load_tiny_model(MODELS[args.model][1])
    digits = [d for d in range(10) for _ in range(args.per_digit)]
    cols = columns(host, tiny.model_patcher, args)
    t0 = time.perf_counter()
    images = [tiny.sample(digits, seed=args.seed, steps=args.steps, cfg=args.cfg, model_patcher=m) for _, m in cols]
    print(f"sampled {len(cols)} x {len(digits)} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    path = args.out or os.path.join(folder_paths.get_output_directory(), DEFAULT_NAME)
    draw([label for label, _ in cols], images, args, path)
    print(f"wrote {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
