"""CFG vs CFG + ASAG on the committed tiny digits model, as one labelled image.

    python -m benchmarks.demo [--out docs/asag_demo.png] [--per-digit 4] [--seed 0]

ComfyUI is found and started as the host tests do (``tests/comfy_host.py``); the pack's
``ASAGAdvanced`` node patches the model and ``comfy.sample.sample`` samples both columns
from the same seed and the same initial noise.  Rows: digits 0-9; columns: CFG, CFG + ASAG
(and, with ``--pag``, CFG + ComfyUI's PerturbedAttentionGuidance).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv=None):
    from benchmarks.quality import TINY_LAYERS, TINY_SCALE

    p = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "asag_demo.png"))
    p.add_argument("--per-digit", type=int, default=4, help="samples per digit (row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--scale", type=float, default=TINY_SCALE)
    p.add_argument("--layers", default=TINY_LAYERS)
    p.add_argument("--pag", action="store_true", help="add a CFG + PAG column (ComfyUI's node, middle block)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from benchmarks.quality import start_comfy_host

    host = start_comfy_host()
    from benchmarks.tiny_model import load_tiny_model

    tiny = load_tiny_model()
    digits = [d for d in range(10) for _ in range(args.per_digit)]
    columns = [("CFG %g" % args.cfg, tiny.model_patcher)]
    asag = host.node("ASAGAdvanced").execute(
        tiny.model_patcher, scale=args.scale, iterations=2, lam=1.0, cost="adversarial", layers=args.layers,
        start_percent=0.0, end_percent=1.0, rescale=0.0, rescale_mode="full",
    ).result[0]
    columns.append((f"CFG {args.cfg:g} + ASAG {args.scale:g}\n(layers {args.layers})", asag))
    if args.pag:
        from comfy_extras.nodes_pag import PerturbedAttentionGuidance

        columns.append((f"CFG {args.cfg:g} + PAG {args.scale:g}\n(ComfyUI, middle block)",
                        PerturbedAttentionGuidance.execute(tiny.model_patcher, args.scale).result[0]))
    t0 = time.perf_counter()
    images = [tiny.sample(digits, seed=args.seed, steps=args.steps, cfg=args.cfg, model_patcher=m) for _, m in columns]
    print(f"sampled {len(columns)} x {len(digits)} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = args.per_digit
    fig, axes = plt.subplots(10, len(columns), figsize=(1.0 + 0.75 * k * len(columns), 8.6))
    axes = np.asarray(axes).reshape(10, len(columns))
    for c, ((label, _), imgs) in enumerate(zip(columns, images, strict=False)):
        for d in range(10):
            strip = np.concatenate([imgs[d * k + j, 0].numpy() for j in range(k)], axis=1)
            ax = axes[d, c]
            ax.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if d == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"digit {d}", fontsize=8)
    fig.suptitle(f"tiny digits UNet in ComfyUI, {args.steps} euler/karras steps, seed {args.seed}: "
                 "same noise in every column", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(args.out)


if __name__ == "__main__":
    main()
