"""ASAGGuider's shared prefix: the adversarial rows reuse the conditional rows' activations
up to the first perturbed layer (nodes/adversarial_call.py, "Shared prefix").

Checked on tiny SD1.5, SDXL, Flux and SD3 models in the real ComfyUI: the shared result
equals the unshared batched call to 1e-5 (relative to the output's magnitude); the prefix
modules really ran on fewer rows and the first perturbed layer on all of them; nothing
stays registered on the model afterwards, also after an exception mid-call; rows whose
inputs differ, or that lack their conditional partner in the call, are not shared.
"""

import contextlib

import pytest
import sampling
import tiny_models
import torch

pytestmark = pytest.mark.host

# (family, layers spec, cfg): the default layers, and deeper first layers that put the fork
# inside a SpatialTransformer (sdxl d1.1), after the middle block (sd15 u1) or in the single stack
CASES = [
    ("sd15", "auto", 4.0),
    ("sd15", "u1", 4.0),
    ("sdxl", "auto", 4.0),
    ("sdxl", "d1.1", 4.0),
    ("sdxl", "auto", 1.0),
    ("flux", "auto", 1.0),
    ("flux", "single2", 4.0),
    ("sd3", "auto", 4.0),
]


@pytest.fixture(scope="module")
def models(host):
    return {family: tiny_models.FAMILIES[family]() for family in ("sd15", "sdxl", "flux", "sd3")}


def _module(host, name):
    return host.internal(f"nodes.{name}")


def _guider(host, model, family, spec, cfg, share):
    if spec != "auto":
        model = sampling.patch(host, "ASAGAdvanced", model, layers=spec)
    guider = sampling.asag_guider(host, model, family, cfg, 1.5)
    guider.step.share_prefix = share
    return guider, model


def _denoise_once(host, guider, model, family, batch=1):
    """One Euler step from sigma_max to 0: the guided prediction itself."""
    return sampling.custom_advanced(host, guider, model, family=family, steps=1, batch=batch)


def prefix_rank(layer):
    if hasattr(layer, "part"):
        return ({"input": 0, "middle": 1, "output": 2}[layer.part], layer.block_id, layer.transformer_index)
    return (0 if layer.stack == "double" else 1, layer.index, 0)


def _first_layer_module(diffusion_model, layer):
    if hasattr(layer, "part"):
        blocks = {"input": diffusion_model.input_blocks, "output": diffusion_model.output_blocks}
        block = diffusion_model.middle_block if layer.part == "middle" else blocks[layer.part][layer.block_id]
        transformer = next(child for child in block.children() if hasattr(child, "transformer_blocks"))
        return transformer.transformer_blocks[layer.transformer_index]
    stacks = {"double": ("double_blocks", "joint_blocks"), "single": ("single_blocks",)}[layer.stack]
    stack = next(getattr(diffusion_model, name) for name in stacks if hasattr(diffusion_model, name))
    return stack[layer.index]


@contextlib.contextmanager
def rows_seen(modules):
    """Record the batch size each module's forward receives (after any hooks ran)."""
    seen = {m: [] for m in modules}
    for m in modules:
        real = m.forward

        def forward(*args, _real=real, _m=m, **kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            seen[_m].append(tensors[0].shape[0])
            return _real(*args, **kwargs)

        m.forward = forward
    try:
        yield seen
    finally:
        for m in modules:
            del m.forward


def _hook_count(module):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def _assert_close(actual, expected):
    scale = max(1.0, float(expected.abs().max()))
    diff = float((actual - expected).abs().max())
    assert diff <= 1e-5 * scale, f"shared differs from unshared by {diff} (output scale {scale})"


@pytest.mark.parametrize("family, spec, cfg", CASES)
def test_shared_equals_unshared_and_prefix_runs_on_fewer_rows(host, models, family, spec, cfg):
    shared_prefix = _module(host, "model_layers")
    base = models[family]
    diffusion_model = base.model.diffusion_model
    guider, model = _guider(host, base, family, spec, cfg, share=False)
    layers = guider.plan.layers
    prefix = shared_prefix.prefix_modules(diffusion_model, layers)
    assert prefix, f"no shareable prefix before {layers}"
    first = _first_layer_module(diffusion_model, min(layers, key=prefix_rank))
    hooks_before = _hook_count(diffusion_model)

    batch = 2
    full = batch * (3 if cfg != 1.0 else 2)  # cond, [uncond,] adversarial
    with rows_seen(prefix + [first]) as seen:
        unshared = _denoise_once(host, guider, model, family, batch=batch)
    assert all(rows == [full] for rows in seen.values()), "unshared: every module runs on the full batch"

    guider, model = _guider(host, base, family, spec, cfg, share=True)
    with rows_seen(prefix + [first]) as seen:
        shared = _denoise_once(host, guider, model, family, batch=batch)
    assert all(seen[m] == [full - batch] for m in prefix), "the prefix must run without the adversarial rows"
    assert seen[first] == [full], "the first perturbed layer must see every row"
    _assert_close(shared, unshared)

    assert _hook_count(diffusion_model) == hooks_before, "hooks left on the diffusion model"
    wrappers = model.model_options.get("transformer_options", {}).get("wrappers", {})
    assert not any(_module(host, "adversarial_call").WRAPPER_KEY in by_key for by_key in wrappers.values())


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_nothing_stays_registered_after_an_exception(host, models, family):
    shared_prefix = _module(host, "model_layers")
    model = models[family]
    diffusion_model = model.model.diffusion_model
    guider, _ = _guider(host, model, family, "auto", 4.0, share=True)
    prefix = shared_prefix.prefix_modules(diffusion_model, guider.plan.layers)
    victim = prefix[-1]
    hooks_before = _hook_count(diffusion_model)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("interrupted inside the shared prefix")

    victim.forward = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            _denoise_once(host, guider, model, family)
    finally:
        del victim.forward
    assert _hook_count(diffusion_model) == hooks_before
    # and the model still samples, identically to the unshared path
    shared = _denoise_once(host, guider, model, family)
    guider_plain, _ = _guider(host, model, family, "auto", 4.0, share=False)
    _assert_close(shared, _denoise_once(host, guider_plain, model, family))


def test_rows_with_different_inputs_are_not_shared(host, models):
    """A model_function_wrapper that changes the adversarial rows' input: sharing must back off."""
    shared_prefix = _module(host, "model_layers")
    family = "sd15"
    model = models[family].clone()

    def nudge_adversarial(apply_model, args):
        x = args["input"].clone()
        # the pack's own tag: every other node sees the adversarial rows as slot 0 (conditional)
        tags = args["c"]["transformer_options"]["asag_adversarial_rows"]
        # the batch is [uncond, cond, adversarial]: calc_cond_batch reverses [adversarial, cond, uncond]
        assert args["cond_or_uncond"] == [1, 0, 0] and tags[:2] == [None, None] and tags[2] is not None
        per = x.shape[0] // len(tags)
        for i, partner in enumerate(tags):
            if partner is not None:
                x[i * per:(i + 1) * per] += 0.01
        return apply_model(x, args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(nudge_adversarial)
    results = {}
    for share in (True, False):
        guider, _ = _guider(host, model, family, "auto", 4.0, share=share)
        prefix = shared_prefix.prefix_modules(model.model.diffusion_model, guider.plan.layers)
        with rows_seen(prefix) as seen:
            results[share] = _denoise_once(host, guider, model, family)
        assert all(rows == [3] for rows in seen.values()), "rows with different inputs must not be shared"
    _assert_close(results[True], results[False])


def _call(order, uuids, tags):
    """transformer_options of one model call as the pack tags it (adversarial chunks: slot 0, own uuid)."""
    return {"cond_or_uncond": order, "uuids": uuids, "asag_adversarial_rows": tags}


def test_fork_pairs_chunks_by_tag_and_uuid(host):
    plan_fork = _module(host, "row_split").plan_fork
    x = torch.zeros(6, 2)

    # the fast path's call: calc_cond_batch reverses [positive, uncond, adversarial] to [adv, uncond, positive]
    fork = plan_fork(6, _call([0, 1, 0], ["p*", "n", "p"], ["p", None, None]), (x,))
    assert fork.keep.tolist() == [2, 3, 4, 5] and fork.keep_range == (2, 4)
    assert fork.gather.tolist() == [2, 3, 0, 1, 2, 3]
    assert fork.narrowed_lists == {"cond_or_uncond": [1, 0], "uuids": ["n", "p"], "asag_adversarial_rows": [None, None]}

    # the conditional partner went to another chunk (memory split): nothing to share
    assert plan_fork(4, _call([0, 1], ["p*", "n"], ["p", None]), (x[:4],)) is None
    # an uncond chunk with the partner's uuid is no partner: only slot 0 is
    assert plan_fork(4, _call([0, 1], ["p*", "p"], ["p", None]), (x[:4],)) is None
    # two positive conds (e.g. areas): each adversarial chunk pairs with the cond chunk of its own uuid
    call = _call([0, 0, 0, 0], ["b*", "a*", "a", "b"], ["b", "a", None, None])
    fork = plan_fork(4, call, (torch.tensor([[1.0], [2.0], [2.0], [1.0]]),))
    assert fork.keep.tolist() == [2, 3] and fork.gather.tolist() == [1, 0, 0, 1]
    # equal partner but different input rows: not shared
    assert plan_fork(2, _call([0, 0], ["p*", "p"], ["p", None]), (torch.tensor([1.0, 2.0]),)) is None
    # no tags (a call the pack did not mark): nothing to share
    assert plan_fork(2, {"cond_or_uncond": [0, 0], "uuids": ["p", "p"]}, (torch.zeros(2),)) is None
    # non-contiguous kept rows
    fork = plan_fork(3, _call([0, 0, 1], ["p", "p*", "n"], [None, "p", None]), (torch.zeros(3),))
    assert fork.keep.tolist() == [0, 2] and fork.keep_range is None and fork.gather.tolist() == [0, 0, 1]
