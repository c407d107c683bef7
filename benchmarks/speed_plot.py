"""The speed benchmark's plot: step time against token count (docs/speed_scaling.png)."""

from __future__ import annotations

import os

from .speed_models import FLUX_SHAPE


def plot(path, scaling):
    """Top: ms per step vs tokens. Bottom: the cost ASAG adds, against attention's own cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f in ("sdxl", "flux") if f in scaling]
    fig, axes = plt.subplots(2, len(fams), figsize=(6.0 * len(fams), 8.4), squeeze=False)
    titles = {"sdxl": "SDXL-shaped U-Net: middle block (10 layers), cfg 5",
              "flux": f"Flux-shaped DiT: double{FLUX_SHAPE['depth'] // 2} (joint attention), cfg 1"}
    for col, fam in enumerate(fams):
        rows = scaling[fam]
        tokens = [r["tokens"] for r in rows]
        ax = axes[0][col]
        for key, label, style in (("cfg", "CFG", "o-"), ("pag", "CFG + PAG (separate pass)", "s-"),
                                  ("asag", "CFG + ASAG node (batched, shared prefix)", "^-"),
                                  ("node_separate", "CFG + ASAG node, separate pass (slot held)", "v--")):
            ax.plot(tokens, [r["step"][key] * 1e3 for r in rows], style, label=label)
        ax.set_title(titles[fam], fontsize=10)
        ax.set_ylabel("CPU ms per sampling step (median)")
        ax2 = axes[1][col]
        ax2.plot(tokens, [r["attention"]["sinkhorn_in_asag_step"] * 1e3 for r in rows], "r^-",
                 label="Sinkhorn attention inside the ASAG separate-pass step (measured in the run)")
        ax2.plot(tokens, [r["attention"]["sinkhorn_per_step"] * 1e3 for r in rows], "r:",
                 label="Sinkhorn attention alone x perturbed layers")
        ax2.plot(tokens, [r["attention"]["sdpa_per_step"] * 1e3 for r in rows], "gs:",
                 label="plain SDPA alone x the same layers (attention's own cost)")
        added = [(t, (r["step"]["node_separate"] - r["step"]["pag"]) * 1e3) for t, r in zip(tokens, rows, strict=True)]
        pos = [(t, a) for t, a in added if a > 0]
        if pos:
            ax2.plot(*zip(*pos, strict=True), "kx", label="ASAG separate-pass step - PAG step (where > 0; noisy)")
        ref = rows[-1]["attention"]["sdpa_per_step"] * 1e3
        ax2.plot(tokens, [ref * (t / tokens[-1]) ** 2 for t in tokens], color="0.6", lw=0.8, label="slope N^2")
        ax2.set_ylabel("CPU ms per sampling step")
        ax2.set_xlabel("tokens in the perturbed layer(s)")
        for a in (ax, ax2):
            a.set_xscale("log")
            a.set_yscale("log")
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=7)
    fig.suptitle("ASAG per-step cost vs token count (CPU, float32, 1 thread)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
