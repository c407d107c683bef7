"""Figures of the quality benchmark (``benchmarks.quality --out DIR``), tiny models only:

- ``quality_vs_scale.png``: FD against scale for ASAG, PAG and the zero perturbation on the
  same layers, one panel per regime (columns) and model (rows);
- ``quality_grid.png`` / ``quality_grid_small.png``: seed-0 samples of each method at its
  best scale, one row per regime;
- ``quality_ablations.png`` / ``quality_ablations_small.png``: single layers, λ, iterations,
  and the three costs' recall and diversity against how far they moved the samples.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .quality_settings import ABLATION_SCALE, METHODS, Setting, guided_model  # noqa: E402

STYLE = {"asag": ("tab:blue", "o", "ASAG"), "pag_same_layers": ("tab:red", "s", "PAG (out = V)"),
         "zero_same_layers": ("tab:green", "^", "out = 0")}


def write_all(result: dict, runners: dict, out_dir: str) -> None:
    scale_plot(result, os.path.join(out_dir, "quality_vs_scale.png"))
    for name, runner in runners.items():
        suffix = "" if name == "main" else f"_{name}"
        sample_grid(result["models"][name], runner, os.path.join(out_dir, f"quality_grid{suffix}.png"))
    for name in runners:
        summary = result["models"][name]
        if "ablations" in summary:
            suffix = "" if name == "main" else f"_{name}"
            ablation_plot(name, summary["ablations"], summary, os.path.join(out_dir, f"quality_ablations{suffix}.png"))


def _regime_title(name: str, r: dict) -> str:
    if name == "unconditional":
        return "unconditional (null class, cfg 1)"
    return f"conditional, cfg {r['cfg']:g}" + (" (FD-best)" if name == "conditional" else " (today's)")


def scale_plot(result: dict, path: str) -> None:
    models = result["models"]
    n_cols = max(len(m["regimes"]) for m in models.values())
    fig, axes = plt.subplots(len(models), n_cols, figsize=(4.6 * n_cols, 3.6 * len(models)), squeeze=False)
    for row, (model, summary) in enumerate(models.items()):
        for col, (name, r) in enumerate(summary["regimes"].items()):
            ax = axes[row, col]
            for m in METHODS:
                color, marker, label = STYLE[m]
                xs = [p["scale"] for p in r[m]["sweep"]]
                ax.errorbar(xs, [p["fd"][0] for p in r[m]["sweep"]], yerr=[p["fd"][1] for p in r[m]["sweep"]],
                            color=color, marker=marker, capsize=3, label=label)
            n = r["none"]
            ax.axhline(n["fd"], color="grey", ls="--", label="unguided")
            ax.axhspan(n["fd"] - n["fd_std"], n["fd"] + n["fd_std"], color="grey", alpha=0.15)
            p = r["pag_comfy_m0"]
            ax.plot([p["scale"]], [p["fd"]], "k*", ms=10, label="built-in PAG (m0)")
            ax.set_xscale("log")
            ax.set_xlabel("scale")
            ax.set_ylabel("classifier-feature FD ↓")
            ax.set_title(f"{model} model: {_regime_title(name, r)}", fontsize=9)
        for col in range(len(summary["regimes"]), n_cols):
            axes[row, col].axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"layers {result['layers']}, mean ± std over {len(result['seeds'])} seeds, {result['n']} images each",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _montage(images, rows: int = 4, cols: int = 10) -> np.ndarray:
    tiles = [images[i, 0].numpy() for i in range(min(len(images), rows * cols))]
    tiles += [np.zeros_like(tiles[0])] * (rows * cols - len(tiles))
    return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def sample_grid(summary: dict, runner, path: str) -> None:
    regimes = summary["regimes"]
    columns = ["none", *METHODS]
    fig, axes = plt.subplots(len(regimes), len(columns), figsize=(4.2 * len(columns), 2.0 * len(regimes) + 0.6),
                             squeeze=False)
    seed = runner.seeds[0]
    for row, (name, r) in enumerate(regimes.items()):
        regime = "unconditional" if name == "unconditional" else "conditional"
        for col, m in enumerate(columns):
            s = Setting(regime, r["cfg"]) if m == "none" else Setting(regime, r["cfg"], m, r[m]["best_scale"],
                                                                     summary["layers"])
            images = runner.backend.sample(guided_model(runner.host, runner.backend.model, s), regime, r["cfg"], seed)
            ax = axes[row, col]
            ax.imshow(_montage(images), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            fd = r[m]["fd"] if m == "none" else r[m]["at_best"]["fd"][0]
            what = "unguided" if m == "none" else f"{STYLE[m][2]} {r[m]['best_scale']:g}"
            ax.set_title(f"{what}: FD {fd:.0f}", fontsize=9)
            if col == 0:
                ax.set_ylabel(_regime_title(name, r), fontsize=8)
    fig.suptitle(f"{runner.backend.name} model, seed {seed}: same noise in every panel; each method at its "
                 f"FD-best scale (layers {summary['layers']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def ablation_plot(model: str, rows: list[dict], summary: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    base = [r for r in rows if r["cost"] == "adversarial" and _varies_only(r, "layers")]
    layers = list(dict.fromkeys(r["layers"] for r in base))
    for k, m in enumerate(("asag", "pag_same_layers")):
        vals = [next((r["fd"] for r in base if r["layers"] == name and r["method"] == m), (np.nan, 0))
                for name in layers]
        axes[0].bar(np.arange(len(layers)) + 0.4 * k, [v[0] for v in vals], 0.4, yerr=[v[1] for v in vals],
                    color=STYLE[m][0], label=STYLE[m][2], capsize=2)
    axes[0].set_xticks(np.arange(len(layers)) + 0.2, layers)
    axes[0].axhline(summary["regimes"]["unconditional"]["none"]["fd"], color="grey", ls="--", label="unguided")
    axes[0].set_title("single layer", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, field, label in ((axes[1], "lam", "λ"), (axes[2], "iterations", "Sinkhorn iterations")):
        pts = sorted((r[field], r["fd"]) for r in rows if r["method"] == "asag" and r["cost"] == "adversarial"
                     and r["layers"] == summary["layers"] and _varies_only(r, field))
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", capsize=3)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(label)
        ax.set_title(f"ASAG FD vs {label}", fontsize=9)
    for ax, metric, label in ((axes[3], "rec", "recall"), (axes[4], "div", "within-class diversity")):
        for cost, color in (("adversarial", "tab:blue"), ("similarity", "tab:orange"), ("uniform", "tab:purple")):
            pts = sorted((r["move"][0], r[metric][0], r["scale"]) for r in rows if r["cost"] == cost
                         and r["method"] == "asag" and r["layers"] == summary["layers"] and r["lam"] == 1.0
                         and r["iterations"] == 2)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=cost)
        ax.axhline(summary["regimes"]["unconditional"]["none"][metric][0], color="grey", ls="--")
        ax.set_xlabel("move (RMS pixel change vs unguided)")
        ax.set_title(f"{label} vs guidance strength, per cost", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[:3]:
        ax.set_ylabel("FD ↓")
    fig.suptitle(f"{model} model, unconditional regime, ablations at scale {ABLATION_SCALE:g} "
                 "(costs: scales 0.25/0.5/1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _varies_only(r: dict, field: str) -> bool:
    defaults = {"lam": 1.0, "iterations": 2, "scale": ABLATION_SCALE}
    return all(r[k] == v for k, v in defaults.items() if k != field)
