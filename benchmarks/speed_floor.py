"""The speed benchmark's floor: the share of one row's work after the first perturbed layer, in
time and in FLOPs (see ``benchmarks/speed.py``)."""

from __future__ import annotations

import statistics
import time

from .flops import count_forward
from .host import pack_module
from .speed_memory import rows_of


def _prefix_time_share(dm, prefix, args, kwargs, repeats):
    """Median over ``repeats`` forwards of (thread CPU time inside the prefix modules) / (forward time)."""
    clock = {"in": 0.0, "start": 0.0}

    def enter(module, a):
        clock["start"] = time.thread_time()

    def leave(module, a, out):
        clock["in"] += time.thread_time() - clock["start"]

    handles = [h for m in prefix for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        dm(*args, **kwargs)  # warm
        shares = []
        for _ in range(repeats):
            clock["in"] = 0.0
            start = time.thread_time()
            dm(*args, **kwargs)
            shares.append(clock["in"] / (time.thread_time() - start))
    finally:
        for h in handles:
            h.remove()
    return statistics.median(shares)


def work_after_prefix(host, model, inputs, repeats):
    """The fraction of one cond row's model work that is NOT in the shared prefix (the modules
    ``model_layers.prefix_modules`` lists for the ASAG node's default layers): the part the
    fast path's adversarial row adds to the batched call. Measured two ways on one row of the
    plain model: forward time (median over ``repeats`` calls) and FLOPs (torch's FLOP counter,
    matmuls, convolutions and attention; elementwise work uncounted; ``benchmarks/flops.py``)."""
    node_model = host.node("ASAG").execute(model, 1.5).result[0]
    plan = pack_module(host, "nodes.guidance_step").carried_plan(node_model.model_options)
    dm = model.model.diffusion_model
    prefix = pack_module(host, "nodes.model_layers").prefix_modules(dm, plan.layers)
    args, kwargs = rows_of(inputs, 1)
    time_share = _prefix_time_share(dm, prefix, args, kwargs, repeats)
    names = [f"prefix {i}" for i in range(len(prefix))]
    count = count_forward(lambda: dm(*args, **kwargs), dict(zip(names, prefix, strict=True)))
    return {"floor_time": 1.0 - time_share, "floor_flops": 1.0 - count.share_inside(names),
            "prefix_modules": len(prefix), "perturbed_layers": len(plan.layers), "gflops_per_row": count.total / 1e9}
