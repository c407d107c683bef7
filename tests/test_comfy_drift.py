"""Newer ComfyUI internals, emulated on 0.3.64: the pack keeps giving the same results.

Each emulation reproduces one behaviour read in the 0.38-era ComfyUI files (README, "Supported
ComfyUI versions"), on the real 0.3.64 host:

* comfy/model_base.py (094c74c1): ``BaseModel._apply_model`` hands the diffusion model
  ``transformer_options.copy()``: a forward pre-hook on the diffusion model replaces the
  transformer_options it gets by a shallow copy;
* comfy/samplers.py (311c014): with several GPUs, ``_calc_cond_batch_multigpu`` runs a batch on a
  per-device model (comfy/model_patcher.py ``deepclone_multigpu``: a fresh BaseModel from the
  loader, with the patcher's patches) in a worker thread: a CALC_COND_BATCH wrapper runs the call
  on such a fresh BaseModel, in a thread;
* comfy/model_patcher.py (08d0e51): ``ModelPatcher.clone`` copies model_options with a
  list/dict-only deep copy that shares every other object between the clones.

The scale= / GQA attention kwargs (comfy/ldm/modules/attention.py 05080f60) and LTX-2's
cross-modal block (comfy/ldm/lightricks/av_model.py 0a29dda) are in ``test_comfy_drift_attention.py``.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sampling
import tiny_dits
import tiny_models
import torch
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2


# ---------------------------------------------------------------------------------------------
# transformer_options copied before the diffusion model, and a per-slot attn2 patch in the prefix
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def copied_transformer_options(model):
    """0.38's _apply_model: the diffusion model gets a shallow copy of transformer_options."""
    def hand_a_copy(module, args, kwargs):
        if "transformer_options" in kwargs:
            kwargs = {**kwargs, "transformer_options": kwargs["transformer_options"].copy()}
        return args, kwargs

    handle = model.model.diffusion_model.register_forward_pre_hook(hand_a_copy, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _attention(q, k, v, heads):
    b = q.shape[0]
    q, k, v = (t.view(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def per_slot_attn2(seen):
    """An attn2 replace patch in the IPAdapter_plus / InstantID pattern: image tokens per slot,
    picked as ``(cond, uncond)[i] for i in cond_or_uncond``, one per chunk of the batch."""
    g = torch.Generator().manual_seed(3)
    tokens = {}

    def attn2_replace(q, k, v, extra_options):
        order, heads = extra_options["cond_or_uncond"], extra_options["n_heads"]
        seen.append(list(order))
        if q.shape[0] % len(order):
            raise AssertionError(f"rows {q.shape[0]} vs {len(order)} slots")
        per = q.shape[0] // len(order)
        inner = q.shape[-1]
        if inner not in tokens:  # (cond, uncond) image tokens
            tokens[inner] = [torch.randn(1, 4, inner, generator=g) for _ in range(2)]
        image = torch.cat([tokens[inner][slot].expand(per, -1, -1) for slot in order]).to(q)
        return _attention(q, k, v, heads) + 0.7 * _attention(q, image, image, heads)

    return attn2_replace


def _with_per_slot_attn2(host, model, seen, layers):
    """``model`` with the per-slot attn2 patch on the transformers of ``layers`` (input blocks)."""

    plan = host.internal("nodes.plan").make_plan
    settings = host.internal("asag_core").ASAGSettings(layers=layers)
    patched = model.clone()
    for layer in plan(model, settings).layers:
        patched.set_model_attn2_replace(per_slot_attn2(seen), *layer.patch_key)
    return patched


@pytest.mark.parametrize("family,prefix_layers", [("sd15", "d0, d1"), ("sdxl", "d0, d1")])
@pytest.mark.parametrize("batch", [1, 3])
def test_copied_transformer_options_and_a_per_slot_patch_in_the_prefix(host, family, prefix_layers, batch,
                                                                        sinkhorn_calls):
    model = tiny_models.FAMILIES[family]()
    seen = []
    ip = _with_per_slot_attn2(host, model, seen, prefix_layers)
    latent = tiny_models.latent(family, batch=batch)
    out, orders = {}, {}
    with copied_transformer_options(model):
        for path in sampling.PATHS:
            seen.clear()
            out[path] = sampling.ksampler(host, sampling.asag_on(host, ip, path), family, batch=batch, latent=latent,
                                          steps=STEPS)
            orders[path] = sorted({tuple(sorted(order)) for order in seen})
    assert sinkhorn_calls and {rows for _, rows, _ in sinkhorn_calls} == {batch}
    # the fast path's prefix (before m0) ran cond and uncond, the shared adversarial copy skipped;
    # the separate pass ran the adversarial copy as a conditional chunk of its own
    assert orders == {"fast": [(0, 1)], "separate": [(0,), (0, 1)]}, orders
    assert_relative(out["fast"], out["separate"], 1e-5)
    plain = sampling.ksampler(host, ip, family, batch=batch, latent=latent, steps=STEPS)
    assert not torch.allclose(out["fast"], plain, atol=1e-3), "ASAG changed nothing"


# ---------------------------------------------------------------------------------------------
# batches run on a copy of the BaseModel, in a worker thread (0.38 multi-GPU)
# ---------------------------------------------------------------------------------------------

def per_device_model(patcher):
    """The BaseModel a 0.38 per-device patcher runs (ModelPatcher.deepclone_multigpu, 08d0e51): a
    fresh model from the loader (``model_config.get_model``, then the weights, as
    load_diffusion_model_state_dict / load_checkpoint_guess_config build one) under a patcher of
    its own that carries ``patcher``'s weight and object patches and applies them on load. Not a
    ``copy.deepcopy`` of the loaded model: 0.38 avoids that, and 0.22's model config answers None
    for every missing attribute (``BASE.__getattr__``), which breaks deepcopy's protocol lookups."""
    import comfy.model_patcher

    base = patcher.model
    weights = base.diffusion_model.state_dict()
    fresh = base.model_config.get_model(weights, "")
    assert type(fresh) is type(base) and fresh.model_type == base.model_type, "the loader built another model"
    fresh.diffusion_model.load_state_dict(weights, strict=True)
    device_patcher = comfy.model_patcher.ModelPatcher(fresh, patcher.load_device, patcher.offload_device)
    device_patcher.patches = {key: list(patches) for key, patches in patcher.patches.items()}
    device_patcher.object_patches = dict(patcher.object_patches)
    device_patcher.patch_model(device_to=patcher.load_device)
    return fresh


class OnACopy:
    """A CALC_COND_BATCH wrapper that runs every batch on a per-device copy of the BaseModel in a
    worker thread, as _calc_cond_batch_multigpu runs it on ``multigpu_clones[device].model`` in its
    thread pool. The copy (:func:`per_device_model`) is made at the first call, from the patcher
    being sampled, so it has that patcher's object patches, as a per-device clone of it has."""

    def __init__(self):
        self.copy = None
        self.threads = set()

    def __call__(self, executor, model, conds, x, timestep, model_options):
        if self.copy is None:
            self.copy = per_device_model(model.current_patcher)
        self.copy.current_patcher = model.current_patcher

        def run():
            self.threads.add(threading.get_ident())
            return executor(self.copy, conds, x, timestep, model_options)

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(run).result()


def _on_a_copy(model, runner):
    import comfy.patcher_extension

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "drift_multigpu", runner)
    return clone


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.diffusion_model.modules())


def _sample(host, model, family, cfg):
    if family in tiny_dits.FAMILIES:
        pos, neg = tiny_dits.conditioning(family)
        latent = tiny_dits.latent(family)
        (out,) = host.nodes.KSampler().sample(model, 1, STEPS, cfg, "euler", "normal", pos, neg, latent, denoise=1.0)
        return out["samples"]
    return sampling.ksampler(host, model, family, cfg=cfg, steps=STEPS)


@pytest.mark.parametrize("family,cfg", [("sd15", 4.0), ("flux", 1.0), ("wan21", 4.0)])
@pytest.mark.parametrize("path", sampling.PATHS)
def test_batches_on_a_model_copy_in_a_worker_thread(host, family, cfg, path, sinkhorn_calls):
    model = (tiny_models.FAMILIES.get(family) or tiny_dits.FAMILIES[family])()
    asag = sampling.asag_on(host, model, path)
    reference = _sample(host, asag, family, cfg)
    calls = len(sinkhorn_calls)
    assert calls, "ASAG never ran"

    runner = OnACopy()
    hooks = _hook_count(model)
    on_copy = _sample(host, sampling.asag_on(host, _on_a_copy(model, runner), path), family, cfg)
    assert runner.copy is not None and threading.get_ident() not in runner.threads, "the emulation did not run"
    assert len(sinkhorn_calls) == 2 * calls, "the Sinkhorn attention must run on the copy, as often"
    assert_relative(on_copy, reference, 1e-6)
    assert not torch.allclose(on_copy, _sample(host, model, family, cfg), atol=1e-3), "ASAG was a no-op on the copy"
    assert _hook_count(model) == hooks and sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in runner.copy.diffusion_model.modules()) == 0


def test_hunyuan_dit_on_a_model_copy(host, sinkhorn_calls):
    """The per-model object patches reach the copy too (it is made with them applied)."""
    family = "hunyuan_dit"
    model = tiny_dits.FAMILIES[family]()
    reference = _sample(host, sampling.asag_on(host, model, "fast"), family, 4.0)
    calls = len(sinkhorn_calls)
    on_copy = _sample(host, sampling.asag_on(host, _on_a_copy(model, OnACopy()), "fast"), family, 4.0)
    assert calls and len(sinkhorn_calls) == 2 * calls
    assert_relative(on_copy, reference, 1e-6)


# ---------------------------------------------------------------------------------------------
# clones that share the leaves of model_options
# ---------------------------------------------------------------------------------------------

def _copy_lists_and_dicts(obj):
    """0.38's comfy.utils.deepcopy_list_dict: containers copied, every other object shared."""
    if isinstance(obj, dict):
        return {k: _copy_lists_and_dicts(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_lists_and_dicts(v) for v in obj]
    return obj


def _graph(host, model):
    """One model patched three ways from the same ASAG model, each sampled, then the first again."""
    first = sampling.patch(host, "ASAG", model, scale=1.5)
    deeper = sampling.patch(host, "ASAGAdvanced", first, layers="d1, u1", iterations=3, scale=2.0)
    guider = sampling.asag_guider(host, first, "sd15", 4.0, 0.75)
    out = {"first": sampling.ksampler(host, first, "sd15", steps=STEPS),
           "deeper": sampling.ksampler(host, deeper, "sd15", steps=STEPS),
           "guider": sampling.custom_advanced(host, guider, first, steps=STEPS)}
    out["first again"] = sampling.ksampler(host, first, "sd15", steps=STEPS)
    return out, first, deeper


def test_objects_in_model_options_survive_clones_that_share_leaves(host):
    model = tiny_models.sd15()
    deep, _, _ = _graph(host, model)  # 0.3.64's ModelPatcher.clone: copy.deepcopy of model_options
    with pytest.MonkeyPatch.context() as mp:
        import comfy.model_patcher

        real = comfy.model_patcher.ModelPatcher.clone

        def clone(self, *args, **kwargs):
            n = real(self, *args, **kwargs)
            n.model_options = _copy_lists_and_dicts(self.model_options)
            return n

        mp.setattr(comfy.model_patcher.ModelPatcher, "clone", clone)
        probe = model.clone()
        probe.model_options["drift_probe"] = object()
        assert probe.clone().model_options["drift_probe"] is probe.model_options["drift_probe"], "no leaf sharing"
        shared, _, _ = _graph(host, model)
    for key, value in deep.items():
        assert torch.equal(shared[key], value), key
    assert torch.equal(shared["first again"], shared["first"]), "sampling other clones changed the first"
    assert not torch.equal(shared["deeper"], shared["first"]) and not torch.equal(shared["guider"], shared["first"])
