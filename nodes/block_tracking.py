"""What runs inside the chosen layers during one model call with adversarial rows.

A model call with adversarial rows (see ``adversarial_call.py``) is tracked by one
:class:`ModelCall`: the per-chunk adversarial flags, the call's report, the chosen DiT block
now running, and the module calls open inside it. Forward hooks feed it. They are registered
by the call itself, on the model that executes it (the APPLY_MODEL wrapper's
``executor.class_obj``: the model, or on ComfyUI 0.38 with several GPUs a per-device copy), and
removed when the call returns, so nothing lives on a model object between calls, and a model
copy ComfyUI makes for another device is tracked like the original. A hook acts only for the
call whose :class:`ModelCall` is current in its context (thread), so another thread's
sampling of the same model object never sees them.

Which attention calls inside a chosen block get the plan: those whose keys are the queries' own
tokens (:func:`keys_are_own_tokens`). Cross-attention is recognised by what it attends to, not
by module names: the key count differs from the query count, or the module making the call was
handed a second token sequence of the keys' length (a text context, another modality's stream)
besides its queries. Joint attention (Flux, SD3, Qwen-Image), whose queries and keys both span
every token sequence the module was handed, attends its own tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading

import torch

from ..asag_core import DiTLayer
from .model_layers import layer_module

_CURRENT = contextvars.ContextVar("asag_model_call", default=None)


class CallReport:
    """What one adversarial calc_cond_batch call did: Sinkhorn calls, and entries into the chosen
    layers (counted from every thread and model copy the call ran on)."""

    def __init__(self, plan):
        self.plan = plan
        self.sinkhorn_calls = 0
        self.layer_runs = 0
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):  # a deep copy of model_options (ModelPatcher.clone in 0.3.64) shares it
        return self

    def count(self, sinkhorn=0, layers=0):
        with self._lock:
            self.sinkhorn_calls += sinkhorn
            self.layer_runs += layers

    @property
    def ran(self) -> bool:
        """True: the plan ran. False: the chosen layers never ran (a cache reused an output).
        Raises when the layers ran but their attention never reached the Sinkhorn."""
        if self.sinkhorn_calls:
            return True
        if self.layer_runs:
            raise_unreachable(self.plan)
        return False


def raise_unreachable(plan):
    names = ", ".join(str(layer.patch_key) for layer in plan.layers)
    raise RuntimeError(
        f"ASAG: the chosen layers ({names}) of this {plan.family} model ran, but their self-attention never "
        "reached the Sinkhorn attention: this architecture does not route it through ComfyUI's attention hooks "
        "(attn1 patches, optimized_attention_override with transformer_options, or an attention function "
        "called by name that ASAG can redirect), so ASAG cannot guide it. Remove the ASAG node for this model."
    )


class ModelCall:
    """One model call with adversarial rows: its flags and report, and what is open inside it."""

    def __init__(self, report: CallReport, flags: list, override=None):
        self.report = report
        self.flags = flags
        #: the call's DiT attention override, for attention reached without transformer_options
        self.override = override
        self.layers = []  # chosen DiT blocks now running (innermost last)
        self.frames = []  # module calls open inside them: (module, token tensors handed to it)

    @property
    def layer(self):
        return self.layers[-1] if self.layers else None

    @property
    def frame(self):
        return self.frames[-1] if self.frames else None


def current() -> ModelCall | None:
    """The tracked model call running in this context, or None (no adversarial rows here)."""
    return _CURRENT.get()


@contextlib.contextmanager
def running(call: ModelCall):
    """``call`` is the tracked model call of this context while the block runs."""
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


def _token_tensors(args, kwargs) -> tuple:
    """The token sequences handed to a module: batch-leading float tensors of 3+ dims, by identity."""
    seen, out = set(), []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= 3 and id(value) not in seen:
            seen.add(id(value))
            out.append(value)
    return tuple(out)


def _tokens(t: torch.Tensor) -> int:
    return math.prod(t.shape[1:-1])


def keys_are_own_tokens(n_queries: int, n_keys: int, frame, batch: int, exclude=()) -> bool:
    """Whether an attention call with ``n_queries`` queries and ``n_keys`` keys, made inside the module
    call ``frame`` (None: directly in the block), attends to its queries' own tokens.

    ``exclude``: the call's own q, k, v (a module handed them is an attention kernel, not a source)."""
    if n_queries != n_keys:
        return False
    if frame is None:
        return True
    sequences = [t for t in frame[1] if t.shape[0] == batch and not any(t is e for e in exclude)]
    if len(sequences) >= 2 and sum(_tokens(t) for t in sequences) == n_queries:
        return True  # joint attention over every sequence the module was handed
    # two sequences of the query length: the queries come from one, the keys from another
    return sum(1 for t in sequences if _tokens(t) == n_queries) < 2


def _inner_modules(block):
    """The block and every submodule that has submodules of its own (attention is made in those)."""
    return [m for m in block.modules() if m is block or next(m.children(), None) is not None]


@contextlib.contextmanager
def tracking(diffusion_model, layers, call: ModelCall):
    """Track ``call`` while it runs on ``diffusion_model`` (the executing model): count entries into
    ``layers``, and for DiT blocks keep the running block and the module calls open inside it."""
    handles = []

    def ours():
        return _CURRENT.get() is call

    def count(module, args):
        if ours():
            call.report.count(layers=1)

    def stack_hooks(stack, value_of):
        def enter(module, args, kwargs):
            if ours():
                stack.append(value_of(module, args, kwargs))

        def leave(module, args, output):
            if ours() and stack:
                stack.pop()

        return enter, leave

    try:
        for layer in layers:
            module = layer_module(diffusion_model, layer)
            handles.append(module.register_forward_pre_hook(count))
            if not isinstance(layer, DiTLayer):
                continue
            enter, leave = stack_hooks(call.layers, lambda _m, _a, _k, lay=layer: lay)
            handles += [module.register_forward_pre_hook(enter, with_kwargs=True),
                        module.register_forward_hook(leave)]
            enter, leave = stack_hooks(call.frames, lambda m, a, k: (m, _token_tensors(a, k)))
            for inner in _inner_modules(module):
                handles += [inner.register_forward_pre_hook(enter, with_kwargs=True),
                            inner.register_forward_hook(leave)]
        with running(call):
            yield call
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["CallReport", "ModelCall", "current", "keys_are_own_tokens", "raise_unreachable", "running", "tracking"]
