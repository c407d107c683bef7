"""What ASAG costs per step on the models users run, counted on ComfyUI's own full-size architectures.

    python -m benchmarks.cost                      # the rows this ComfyUI counts, into docs/cost_table.json
    python -m benchmarks.cost --models sd15,ltxv   # a subset (prints only; --out to write)

Each row is counted on one ComfyUI (``Architecture.host`` in ``benchmarks/cost_models.py``): the
models ComfyUI 0.3.64 has on 0.3.64; the models new in 0.22 (FLUX.2, Z-Image, HunyuanVideo 1.5,
LTX-2, Kandinsky 5), and Qwen-Image-Edit (which 0.3.64 counts the same), on 0.22. The whole table is
two runs, one per ComfyUI (``COMFYUI_PATH=.../0.3.64/ComfyUI`` and ``.../0.22.0/ComfyUI``); each puts
its rows into the file and keeps the other's. Every row records the ComfyUI that counted it
(``counted_on``), ``runs`` what each run counted with (torch, python, seconds).

No weights, no GPU: every diffusion model is built on the meta device (``torch.device("meta")``:
shapes without memory) from the config ComfyUI detects for the real checkpoint
(``benchmarks/cost_models.py``), and one forward of one conditional row, with the text lengths
ComfyUI's text encoders give, runs under torch's FLOP counter (``benchmarks/flops.py``: matrix
products, convolutions and attention; elementwise work is not counted). Attention is ComfyUI's
PyTorch-SDPA function, the default on GPUs, whatever this CPU process picked
(``cost_models.sdpa_transformer_options``).
Weights are bf16; FLOP counts do not depend on the dtype.

Per model: ``row_tflops``, one row's whole forward. Per layer, named as a user types it in the
pack's ``layers`` input (resolved by ``nodes/plan.resolve`` as the nodes resolve it,
as the node resolves it; ``auto`` as the family record (``nodes/families.py``) picks it):

``after_share``
    the share of one row's FLOPs from the first perturbed layer on, in execution order (forward
    hooks on the layer modules read the running count when the first of them starts; a U-Net
    layer named by its block, e.g. ``m0``, starts at the first transformer of that block). The
    adversarial row equals the conditional row before that point, so this is what it adds at best.
``ideal_over_cfg`` = 1 + after_share / 2
    a step against CFG at cfg > 1 (three rows' worth of work against two), if the shared prefix
    is computed once;
``ideal_over_cfg1`` = 1 + after_share
    the same at cfg 1 (guidance-distilled models, step-distilled LoRAs): two rows against one.
``layer_attention_tflops``
    the softmax attention (QKᵀ and PV) of every self/joint attention call inside the chosen
    blocks, at the shapes the forward gave it (an attention call counts as self/joint when its
    keys are as many as its queries; cross-attention to the text is left out, as ASAG leaves it);
``sinkhorn_tflops``
    the Sinkhorn attention that replaces those calls: ``asag_core.adversarial_attention`` run
    on meta tensors of each call's q/k/v shape, with the node's defaults (``ASAGSettings()``)
    and the dtype of the model, under the same FLOP counter. This counts whatever asag_core
    does at run time. The analytic rule beside it: the Sinkhorn plan takes 2·iterations + 1
    passes over QKᵀ (a row and a column normalisation per iteration, then the output). A pass
    costs at least the logits' QKᵀ (with PV once for the output) and at most one attention whose
    head dim carries the potentials (asag_core's kernel path, CUDA and meta: 3 extra head dims,
    zero-padded to a multiple of 8, so at most D + 10). So ``1 <= sinkhorn_over_attention <=
    (2·iterations + 1)·(D + 10)/D`` (``analytic_passes`` = 2·iterations + 1). Today's count is
    exactly ``analytic_passes`` attentions at the padded head dim (D 128: 5·136/128 = 5.3125).

Extra keys: ``roles`` (auto / first / middle / last / why a layer is listed), ``resolves_to``
(what ``auto`` picks), ``perturbed_layers``, ``attention_calls``, ``attention_shapes``
(batch, heads, q tokens, k tokens, head dim, value head dim), ``sinkhorn_over_attention``,
``sinkhorn_extra_share`` ((Sinkhorn − the attention it replaces) / row: what the plan itself adds
to the adversarial row, beyond the ideals), and what the node does today: ``node_shares_prefix``
(``nodes/model_layers.prefix_modules`` is non-empty: the fast path computes the prefix once)
and, from it, ``node_after_share`` (1 − the prefix modules' share: the embedders are not shared;
1.0 where nothing is shared), ``node_ideal_over_cfg`` = 1 + node_after_share / 2 and
``node_ideal_over_cfg1`` = 1 + node_after_share. Where the node shares nothing the adversarial
row costs a whole row: 1.5 and 2.0.

Output: a table, then the JSON as one line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from .cost_models import (
    ARCHITECTURES,
    BY_KEY,
    NAMES,
    build_on,
    detection_round_trip,
    has,
    model_inputs,
    sdpa_transformer_options,
)
from .flops import attention_flops, count_call, count_forward
from .host import ROOT, pack_module, start_host

DEFAULT_OUT = os.path.join(ROOT, "docs", "cost_table.json")
META = torch.device("meta")
DIGITS = 6
RUN_KEYS = ("comfyui", "torch", "python", "sinkhorn_count_seconds", "seconds")


# ---------------------------------------------------------------------------
# which layers
# ---------------------------------------------------------------------------

def _execution_order(catalog) -> list[str]:
    """Every block a user can name, in the order the model runs them."""
    if catalog.is_unet:
        letters = {"input": "d", "middle": "m", "output": "u"}
        return [f"{letters[p]}{i}" for p in ("input", "middle", "output") for i in range(len(catalog.unet.get(p, [])))]
    if "single" not in catalog.dit:
        return [f"b{i}" for i in range(catalog.dit.get("double", 0))]
    return [f"{s}{i}" for s in ("double", "single") for i in range(catalog.dit.get(s, 0))]


def spec_of(layers, catalog) -> str:
    """The name a user would type for these resolved layers (``auto``'s pick): a DiT block, or a
    whole U-Net block (``m0``)."""
    if catalog.is_unet:
        letters = {"input": "d", "middle": "m", "output": "u"}
        parts = {(layer.part, layer.block_id) for layer in layers}
        if len(parts) == 1:
            part, block_id = parts.pop()
            index = [b for b, _ in catalog.unet[part]].index(block_id)
            return f"{letters[part]}{index}"
        return ", ".join(repr(layer.patch_key) for layer in layers)
    prefix = {"double": "b", "single": "single"} if "single" not in catalog.dit else {}
    return ", ".join(f"{prefix.get(layer.stack, layer.stack)}{layer.index}" for layer in layers)


def layer_choices(arch, catalog, resolve) -> dict:
    """{layer spec: [roles]}: auto, first, a middle and the last block, then the arch's extras.
    The middle block is m0 for a U-Net and the middle of the execution order for a DiT."""
    order = _execution_order(catalog)
    middle = "m0" if catalog.is_unet and catalog.unet.get("middle") else order[len(order) // 2]
    choices = {"auto": ["auto"]}
    auto = resolve("auto")
    for name, role in ((order[0], "first"), (middle, "middle"), (order[-1], "last"), *arch.extra_layers):
        roles = choices.setdefault(name, [])
        roles.append(role)
        if resolve(name) == auto and "= auto" not in roles:
            roles.append("= auto")
    return choices


# ---------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------

class SinkhornCounter:
    """FLOPs of the pack's Sinkhorn attention per q/k/v shape (counted once per shape, the whole
    call: every head, on meta tensors)."""

    def __init__(self, host, dtype):
        core = pack_module(host, "asag_core")
        self.attention, self.settings, self.dtype = core.adversarial_attention, core.ASAGSettings(), dtype
        self.cache, self.seconds = {}, 0.0

    def __call__(self, shape) -> int:
        if shape not in self.cache:
            b, h, nq, nk, d, dv = shape
            q = torch.empty(b, h, nq, d, device=META, dtype=self.dtype)
            k = torch.empty(b, h, nk, d, device=META, dtype=self.dtype)
            v = torch.empty(b, h, nk, dv, device=META, dtype=self.dtype)
            s = self.settings
            start = time.perf_counter()
            self.cache[shape] = count_call(lambda: self.attention(
                q, k, v, h, iterations=s.iterations, lam=s.lam, cost=s.cost, skip_reshape=True,
                skip_output_reshape=True))
            self.seconds += time.perf_counter() - start
        return self.cache[shape]


def _self_attention(shapes):
    return [s for s in shapes if s[2] == s[3]]


def _r(x):
    return round(x, DIGITS)


def layer_entry(count, names, prefix_names, roles, sinkhorn, iterations):
    """One layer spec's row of the table from the counted forward (see the module docstring)."""
    after = _r(count.share_from(names))
    calls = [s for n in names for s in _self_attention(count.attention[n])]
    attention = sum(attention_flops(b, h, nq, nk, d, dv) for b, h, nq, nk, d, dv in calls)
    sk = sum(sinkhorn(s) for s in calls)
    node_after = _r(1.0 - count.share_inside(prefix_names)) if prefix_names else 1.0
    return {
        "after_share": after, "ideal_over_cfg": _r(1 + after / 2), "ideal_over_cfg1": _r(1 + after),
        "sinkhorn_tflops": _r(sk / 1e12), "layer_attention_tflops": _r(attention / 1e12),
        "roles": roles, "perturbed_layers": len(names), "attention_calls": len(calls),
        "attention_shapes": sorted({list(s).__repr__(): list(s) for s in calls}.values()),
        "sinkhorn_over_attention": _r(sk / attention) if attention else None,
        "analytic_passes": 2 * iterations + 1,
        "sinkhorn_extra_share": _r((sk - attention) / count.total),
        "node_shares_prefix": bool(prefix_names), "node_after_share": node_after,
        "node_ideal_over_cfg": _r(1 + node_after / 2), "node_ideal_over_cfg1": _r(1 + node_after),
    }


def measure(host, arch, sinkhorn, only=None) -> dict:
    """The table's entry for one architecture (``only``: a subset of layer specs)."""
    model_layers = pack_module(host, "nodes.model_layers")
    prefix_modules = model_layers.prefix_modules
    import comfy.model_patcher

    config, model = build_on(arch, META, sinkhorn.dtype)
    round_trip = detection_round_trip(arch, config, model)
    if round_trip:
        raise RuntimeError(f"{arch.key}: ComfyUI's detection does not give the config back: {round_trip}")
    cpu = torch.device("cpu")  # never loaded: the patcher only carries the model to layer_catalog
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    catalog = model_layers.layer_catalog(patcher)
    dm = model.diffusion_model

    def resolve(spec):
        return list(pack_module(host, "nodes.plan").resolve(patcher, spec))

    choices = layer_choices(arch, catalog, resolve)
    if only is not None:
        choices = {k: v for k, v in choices.items() if k in only}
    watched, selections = {}, {}
    for spec in choices:
        layers = resolve(spec)
        names = [repr(layer.patch_key) for layer in layers]
        for layer, name in zip(layers, names, strict=True):
            watched[name] = model_layers.layer_module(dm, layer)
        shared = prefix_modules(dm, layers)
        prefix = [f"prefix {spec} {i}" for i in range(len(shared))]
        watched.update(zip(prefix, shared, strict=True))
        selections[spec] = (names, prefix)
    x, sigma, conds = model_inputs(arch, model, META)
    options = sdpa_transformer_options(pack_module(host, "nodes.comfy_contract").ATTENTION_OVERRIDE)
    start = time.perf_counter()
    with torch.inference_mode():
        count = count_forward(lambda: model.apply_model(x, sigma, transformer_options=dict(options), **conds),
                              watched)
    seconds = time.perf_counter() - start
    layers = {spec: layer_entry(count, names, prefix, choices[spec], sinkhorn, sinkhorn.settings.iterations)
              for spec, (names, prefix) in selections.items()}
    if "auto" in layers:
        layers["auto"]["resolves_to"] = spec_of(resolve("auto"), catalog)
    import comfyui_version

    row = {
        "name": NAMES[arch.key], "resolution": arch.resolution, "row_tflops": _r(count.total / 1e12), "layers": layers,
        "checkpoint": arch.checkpoint, "config_class": type(config).__name__, "config_source": arch.source,
        "unet_config": arch.unet_config, "text": arch.text, "text_tokens": conds["c_crossattn"].shape[1],
        "latent": [list(s) for s in arch.latent] if _packed(arch) else list(arch.latent),
        "layer_catalog": catalog.describe(),
        "node_shares_prefix": any(e["node_shares_prefix"] for e in layers.values()), "notes": arch.notes,
        "forward_seconds": round(seconds, 1), "counted_on": comfyui_version.__version__,
    }
    if arch.template:
        row["template"] = f"{arch.template} (comfyui-workflow-templates 0.11.97)"
    return row


def _packed(arch) -> bool:
    return isinstance(arch.latent[0], tuple)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def table_lines(models) -> list[str]:
    head = (f"| {'model':<13} | {'row TFLOP':>9} | {'layer':<8} | {'after':>6} | {'x CFG':>6} | {'x CFG 1':>7} | "
            f"{'node x CFG':>10} | {'attn TFLOP':>10} | {'Sinkhorn TFLOP':>14} | {'Sk/attn':>7} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for key, m in models.items():
        for spec, e in m["layers"].items():
            name = f"{spec} ({e['resolves_to']})" if "resolves_to" in e else spec
            lines.append(
                f"| {key:<13} | {m['row_tflops']:>9.2f} | {name:<8} | {e['after_share']:>6.3f} | "
                f"{e['ideal_over_cfg']:>6.3f} | {e['ideal_over_cfg1']:>7.3f} | {e['node_ideal_over_cfg']:>10.3f} | "
                f"{e['layer_attention_tflops']:>10.3f} | {e['sinkhorn_tflops']:>14.3f} | "
                f"{(e['sinkhorn_over_attention'] or 0):>7.2f} |")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(BY_KEY)} (default: the rows this "
                                                  "ComfyUI counts)")
    p.add_argument("--out", default=None, help="JSON path (default docs/cost_table.json when --models is not "
                                               "given; '-' for none); the rows go into the file, its other rows "
                                               "stay")
    args = p.parse_args(argv)
    keys = None if args.models is None else [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in keys or () if k not in BY_KEY]
    if bad or keys == []:
        p.error(f"--models {bad or args.models!r}: valid values are {', '.join(BY_KEY)}")
    args.keys = keys
    if args.out is None:
        args.out = DEFAULT_OUT if args.models is None else "-"
    return args


def rows_to_count(keys, version) -> list:
    """The architectures to count on ComfyUI ``version``: ``keys``, or every row this ComfyUI counts.
    A row goes into the table only from the ComfyUI that counts it (``Architecture.host``)."""
    if keys is None:
        return [a for a in ARCHITECTURES if a.host == version]
    archs = [BY_KEY[k] for k in keys]
    absent = [a.key for a in archs if not has(a, version)]
    if absent:
        raise SystemExit(f"--models {', '.join(absent)}: ComfyUI {version} has no such model "
                         f"(valid here: {', '.join(a.key for a in ARCHITECTURES if has(a, version))})")
    return archs


def merged(out, models, run) -> dict:
    """The table at ``out`` with ``models`` put in (replacing rows of the same name) and this run's
    record under its ComfyUI version."""
    table = {}
    if os.path.exists(out):
        with open(out) as f:
            table = json.load(f)
    # one run's records live under "runs" now (one per ComfyUI), not at the top
    table = {"benchmark": "cost", **{k: v for k, v in table.items() if k not in RUN_KEYS}}
    table["models"] = {**table.get("models", {}), **models}
    order = [a.key for a in ARCHITECTURES]
    table["models"] = {k: table["models"][k] for k in sorted(table["models"], key=order.index)}
    earlier = table.get("runs", {}).get(run["comfyui"], {}).get("models", [])
    run = {**run, "models": [k for k in order if k in set(earlier) | set(run["models"])]}
    table["runs"] = {**table.get("runs", {}), run["comfyui"]: run}
    return table


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    host = start_host()
    import comfyui_version

    version = comfyui_version.__version__
    archs = rows_to_count(args.keys, version)
    wrong = [a.key for a in archs if a.host != version]
    if wrong and args.out != "-":
        raise SystemExit(f"{', '.join(wrong)}: the table counts these on ComfyUI "
                         f"{'/'.join(sorted({a.host for a in archs if a.key in wrong}))}; here they print only "
                         "(--out -)")
    sinkhorn = SinkhornCounter(host, torch.bfloat16)
    models = {}
    for arch in archs:
        models[arch.key] = measure(host, arch, sinkhorn)
        print(f"[{arch.key}] done at {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    s = sinkhorn.settings
    run = {"comfyui": version, "models": list(models), "torch": torch.__version__,
           "python": platform.python_version(), "sinkhorn_count_seconds": round(sinkhorn.seconds, 1),
           "seconds": round(time.perf_counter() - started, 1)}
    result = {
        "benchmark": "cost", "models": models,
        "asag_settings": {"iterations": s.iterations, "lam": s.lam, "cost": s.cost},
        "counted": "torch.utils.flop_counter.FlopCounterMode on the meta device: matmuls, convolutions, attention; "
                   "elementwise work not counted; one conditional row, batch 1, bf16",
        "attention": "ComfyUI's attention_pytorch (SDPA), routed by transformer_options' attention override",
    }
    print("\n".join(table_lines(models)), flush=True)
    if args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        table = merged(args.out, models, run) | {k: v for k, v in result.items() if k != "models"}
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")
        print(f"wrote {os.path.relpath(args.out, ROOT)}", file=sys.stderr)
    print(json.dumps(result | {"run": run}, separators=(",", ":")))


if __name__ == "__main__":
    main()
