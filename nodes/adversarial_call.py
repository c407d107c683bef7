"""One calc_cond_batch call with adversarial conds: how its state reaches every model call.

The state of the call (its plan, its :class:`~.block_tracking.CallReport`, which conds are
adversarial copies) travels by two routes that every ComfyUI version passes along:

* **dicts of the pack's own**, in the model_options of that call only: the Sinkhorn patches
  (``attention_patch.py``) and an outermost APPLY_MODEL wrapper that hands the model a new
  transformer_options carrying the row tags (``adversarial_rows.py``). ComfyUI copies these
  dicts on the way (per chunk in calc_cond_batch; 0.38's ``_apply_model`` once more), and a
  copy carries what is in it. Nothing is written into a dict after it was handed on.
* **a context variable**, set by that wrapper around the model call, for what gets no
  transformer_options: module hooks and attention reached without them. The wrapper registers
  its hooks on the model that executes the call (``executor.class_obj``: on 0.38 with several
  GPUs a per-device model copy, run in a worker thread) and removes them when it returns.

After the call, ``report.ran`` tells: the Sinkhorn attention ran; or the chosen layers never
ran (a caching node reused an earlier output: the step gets no ASAG term); or the layers ran but
the attention never reached the Sinkhorn (a clear error).
"""

from __future__ import annotations

import contextlib

from . import adversarial_rows as rows
from . import comfy_internals as comfy
from .attention_patch import with_sinkhorn
from .block_tracking import CallReport, ModelCall, tracking


@contextlib.contextmanager
def adversarial_call(model, model_options: dict, plan, partners: dict):
    """``(options, report)`` for one calc_cond_batch call whose conds with uuids in ``partners``
    (adversarial uuid -> conditional uuid) are adversarial copies. After the call,
    ``report.ran`` says whether the Sinkhorn attention ran."""
    report = CallReport(plan)
    options, override = with_sinkhorn(model_options, plan, report)

    def around_batch(executor, run, flags):
        if not any(flags):
            return run()
        executing = comfy.uncompiled(comfy.diffusion_model(comfy.executing_model(executor)))
        with tracking(executing, plan.layers, ModelCall(report, flags, override)):
            return run()

    yield rows.with_row_marking(options, partners, around_batch=around_batch), report


def separate_adversarial_pass(model, cond, x, sigma, model_options, plan):
    """The conditional prediction with the Sinkhorn plan in the chosen layers, in a model call
    of its own; None when a cache skipped the chosen layers."""
    adversarial, partners = rows.adversarial_cond(cond)
    with adversarial_call(model, model_options, plan, partners) as (options, report):
        (adv,) = comfy.calc_cond_batch(model, [adversarial], x, sigma, options)
    return adv if report.ran else None


__all__ = ["adversarial_call", "separate_adversarial_pass"]
