"""What the quality benchmark runs and how a setting becomes a model (``benchmarks.quality``,
``benchmarks.quality_plots`` and ``benchmarks.demo`` share it): the scales and CFGs swept, the
methods, ``Setting`` (one row of a sweep), and ``guided_model`` (the pack's ASAGAdvanced node,
the layer-matched baselines of ``benchmarks.perturb`` or ComfyUI's PerturbedAttentionGuidance).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

TINY_LAYERS = "u3"  # the 8x8 decoder layer; the 4x4 layers barely change this model's samples
SCALES = (0.1, 0.25, 0.5, 1.0, 1.5, 3.0)
ZERO_SCALES = (0.25, 0.5, 1.0)
BUILTIN_PAG_SCALE = 1.0
ABLATION_SCALE = 0.5
TINY_CFGS = (1.0, 1.5, 2.0, 3.0, 4.0)
CHECKPOINT_CFGS = (1.0, 3.0, 5.0, 7.5)
QUICK_SCALES = (0.25, 1.0)
METHODS = ("asag", "pag_same_layers", "zero_same_layers")
METRICS = ("fd", "fd_pix", "acc", "prec", "rec", "div", "sat", "move", "s_per_img")


@dataclass(frozen=True)
class Setting:
    regime: str  # "unconditional" | "conditional"
    cfg: float
    method: str = "none"  # "none" | METHODS | "pag_comfy_m0"
    scale: float = 0.0
    layers: str = ""
    iterations: int = 2
    lam: float = 1.0
    cost: str = "adversarial"

    def key(self) -> str:
        if self.method == "none":
            return f"{self.regime}|cfg{self.cfg:g}|none"
        return (f"{self.regime}|cfg{self.cfg:g}|{self.method}|s{self.scale:g}|{self.layers}|it{self.iterations}"
                f"|lam{self.lam:g}|{self.cost}")


# --------------------------------------------------------------------------- what to run


def single_layer_names(host, model) -> list[str]:
    """Every self-attention layer of the model in ASAG's grammar (d0, d1, m0, u0, ...)."""
    catalog = sys.modules[f"{host.pack_module_name}.nodes.model_layers"].layer_catalog(model)
    prefix = {"input": "d", "middle": "m", "output": "u"}
    parts = ("input", "middle", "output")
    return [f"{prefix[part]}{i}" for part in parts for i in range(len(catalog.unet.get(part, [])))]


def ablation_settings(host, model, layers, scale):
    """Unconditional regime, at ``scale``: single layers, λ, iterations, the three costs."""
    base = Setting("unconditional", 1.0, "asag", scale, layers)
    out = []
    for name in single_layer_names(host, model):
        out += [replace(base, layers=name), replace(base, method="pag_same_layers", layers=name)]
    out += [replace(base, lam=v) for v in (0.25, 0.5, 1.0, 2.0, 4.0)]
    out += [replace(base, iterations=v) for v in (0, 1, 2, 5, 10)]
    out += [replace(base, cost=c, scale=s) for c in ("adversarial", "similarity", "uniform") for s in ZERO_SCALES]
    return out


# --------------------------------------------------------------------------- building the guided model


def guided_model(host, base, s: Setting):
    if s.method == "none":
        return base
    if s.method == "pag_comfy_m0":
        from comfy_extras.nodes_pag import PerturbedAttentionGuidance

        return PerturbedAttentionGuidance.execute(base, s.scale).result[0]
    if s.method == "asag":
        return asag_model(host, base, scale=s.scale, iterations=s.iterations, lam=s.lam, cost=s.cost, layers=s.layers)
    from .perturb import perturbed_guidance, resolve_unet_layers

    keys = resolve_unet_layers(host, base, s.layers)
    return perturbed_guidance(base, s.scale, keys, "pag" if s.method == "pag_same_layers" else "zero")


def asag_model(host, base, **inputs):
    """``base`` patched by the pack's ASAGAdvanced node: ``inputs`` given, every other input at
    its schema default (so the benchmark follows the node's inputs as they are today)."""
    node = host.node("ASAGAdvanced")
    defaults = {i.id: i.default for i in node.define_schema().inputs if i.id != "model"}
    return node.execute(base, **{**defaults, **inputs}).result[0]
