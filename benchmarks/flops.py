"""Where one forward's FLOPs fall: counted with torch's FLOP counter, attributed to modules by hooks.

Shared by the cost table (``benchmarks.cost``: full-size architectures on the meta device), the
speed benchmark's floor (``benchmarks.speed_floor``) and the video step benchmark
(``benchmarks.video_speed``: tiny models on the CPU). One forward runs under
``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention; elementwise
work is not counted) with forward pre/post hooks on the watched modules, which read the running total:

- ``start[name]``: the count when the module first started, so ``1 - start / total`` is the share
  of the forward from that module on, in execution order (everything after it included);
- ``inside[name]``: the FLOPs inside the module (summed over its calls);
- ``attention[name]``: the shapes of every ``scaled_dot_product_attention`` call made inside it
  (seen by a ``TorchFunctionMode``, so on the meta device too, where the kernel itself is decomposed
  into matmuls) as ``(batch, heads, q tokens, k tokens, head dim, value head dim)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting the CPU SDPA kernel (torch maps only the GPU kernels)."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops})


def attention_flops(batch, heads, nq, nk, dim, dim_v=None) -> int:
    """Softmax attention's matmul FLOPs: QKᵀ and PV, 2 FLOPs per multiply-add (torch's own count)."""
    return 2 * batch * heads * nq * nk * (dim + (dim if dim_v is None else dim_v))


@dataclass
class ForwardCount:
    total: int = 0
    start: dict = field(default_factory=dict)
    inside: dict = field(default_factory=dict)
    attention: dict = field(default_factory=dict)

    def share_from(self, names) -> float:
        """The share of the forward from the first of ``names`` to start, to the end."""
        return 1.0 - min(self.start[n] for n in names) / self.total

    def share_inside(self, names) -> float:
        return sum(self.inside[n] for n in names) / self.total


class _AttentionShapes(TorchFunctionMode):
    def __init__(self, active):
        super().__init__()
        self.active = active  # the watched modules running now, innermost last

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and self.active:
            named = dict(zip(("query", "key", "value"), args, strict=False)) | kwargs
            q, k, v = named["query"], named["key"], named["value"]
            shape = (int(q.shape[0]), int(q.shape[-3]) if q.ndim == 4 else 1, int(q.shape[-2]), int(k.shape[-2]),
                     int(q.shape[-1]), int(v.shape[-1]))
            for name in set(self.active):
                self.result[name].append(shape)
        return func(*args, **kwargs)


def count_forward(forward, watched: dict) -> ForwardCount:
    """Run ``forward()`` once under the FLOP counter with hooks on ``watched`` ({name: module}).

    A module listed under several names is counted under each. Hooks are removed afterwards."""
    counter = flop_counter()
    result = ForwardCount(attention={n: [] for n in watched})
    active, entered = [], {}
    shapes = _AttentionShapes(active)
    shapes.result = result.attention

    def pre(names):
        def hook(module, args):
            now = counter.get_total_flops()
            for n in names:
                result.start.setdefault(n, now)
                entered[n] = now
                active.append(n)
        return hook

    def post(names):
        def hook(module, args, output):
            now = counter.get_total_flops()
            for n in names:
                result.inside[n] = result.inside.get(n, 0) + now - entered[n]
                active.remove(n)
        return hook

    by_module = {}
    for name, module in watched.items():
        by_module.setdefault(id(module), (module, []))[1].append(name)
    handles = []
    for module, names in by_module.values():
        handles += [module.register_forward_pre_hook(pre(names)), module.register_forward_hook(post(names))]
    try:
        with counter, shapes:
            forward()
    finally:
        for h in handles:
            h.remove()
    result.total = counter.get_total_flops()
    missing = [n for n in watched if n not in result.start]
    if missing:
        raise RuntimeError(f"watched modules never ran in the forward: {missing}")
    return result


def count_call(fn) -> int:
    """FLOPs of ``fn()`` (e.g. one Sinkhorn attention call on meta tensors)."""
    counter = flop_counter()
    with counter:
        fn()
    return counter.get_total_flops()
