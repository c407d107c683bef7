"""Snapshots of a ComfyUI ModelPatcher, to prove that nothing was changed or left behind.

``patcher_state`` captures everything a node could mutate on a MODEL it received: the
model_options tree (post-CFG function lists, transformer_options with patches and
patches_replace, wrappers...), the weight patches (LoRA), object patches, wrappers,
callbacks and attachments. Containers are compared by content, tensors by value, and
everything else (functions, patch objects) by identity, so a swapped or added function
shows up as a difference. ``weights`` holds copies of the model's tensors.
"""

from __future__ import annotations

import torch


def _snap(value, seen):
    if isinstance(value, dict):
        if id(value) in seen:
            return ("cycle",)
        seen = seen | {id(value)}
        return ("dict", sorted(((repr(k), _snap(v, seen)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return (type(value).__name__, [_snap(v, seen) for v in items])
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return ("tensor", t.dtype, tuple(t.shape), t.float().flatten().tolist() if t.numel() <= 4096 else id(value))
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return ("object", type(value).__qualname__, id(value))


def snapshot(value):
    """A comparable picture of a nested options structure."""
    return _snap(value, frozenset())


def patcher_state(patcher) -> dict:
    return {
        "model_options": snapshot(patcher.model_options),
        "patches": snapshot(patcher.patches),
        "patches_uuid": patcher.patches_uuid,
        "object_patches": snapshot(patcher.object_patches),
        "wrappers": snapshot(patcher.wrappers),
        "callbacks": snapshot(patcher.callbacks),
        "attachments": snapshot(patcher.attachments),
        "additional_models": snapshot(patcher.additional_models),
        "injections": snapshot(patcher.injections),
    }


def assert_state_unchanged(patcher, before: dict, what: str = "the input MODEL"):
    after = patcher_state(patcher)
    changed = [key for key in before if before[key] != after[key]]
    assert not changed, f"{what} was changed: {', '.join(changed)}"


def weights(patcher) -> dict:
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def assert_weights_equal(patcher, before: dict, what: str = "the input MODEL"):
    after = patcher.model.state_dict()
    assert after.keys() == before.keys(), f"{what}: the set of weights changed"
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert not changed, f"{what}: {len(changed)} weights changed, e.g. {changed[:3]}"


def patch_keys(model_options) -> dict:
    """{patch kind: sorted keys} of transformer_options["patches_replace"]."""
    replace = model_options.get("transformer_options", {}).get("patches_replace", {})
    return {name: sorted(patches, key=repr) for name, patches in replace.items()}
