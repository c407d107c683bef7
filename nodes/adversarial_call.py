"""One calc_cond_batch call with adversarial rows: its whole life, in :class:`AdversarialCall`.

The adversarial branch is the conditional prediction with the Sinkhorn plan in the chosen layers.
An :class:`AdversarialCall` is made for one ``calc_cond_batch`` call that evaluates adversarial copies
of the conditional conds (beside cond and uncond on the fast path, alone on the separate pass). It
owns, for that call only:

* **the options** (:meth:`AdversarialCall.model_options`): U-Nets get ComfyUI's ``attn1`` replace
  patches in the chosen layers (the mechanism PAG uses), DiTs an ``optimized_attention_override``
  (honoured by every ComfyUI attention function whose caller passes transformer_options); both are
  chained to what was there. An outermost ``APPLY_MODEL`` wrapper runs each model call of the batch.
  Nothing is written into a dict ComfyUI handed over: each stage gets dicts of the call's own, so
  ComfyUI's copies (per chunk; 0.22's ``_apply_model`` copies once more) carry everything;
* **each model call** (:class:`ModelCall`): the model sees its adversarial chunks tagged and
  relabelled slot 0 (``row_split.py``). For the duration of the call, forward hooks on the model
  that *executes* it (the wrapper's ``executor.class_obj``: on 0.38 with several GPUs a per-device
  copy, run in a worker thread) track the chosen DiT block and its own attention modules (the family
  record's ``own``), and narrow the prefix modules to the rows that are not shared. The hooks are
  removed when the call returns, also on an exception;
* **the attention**: inside a chosen block's own attention, the adversarial rows get the Sinkhorn
  plan and the other rows the attention they would have run, through any patch chained before ours;
* **the report**: after the call, :attr:`AdversarialCall.ran` says whether the plan ran; False when
  the chosen layers never ran (a caching node reused an output: the step gets no ASAG term); an error
  when they ran but their attention never reached the Sinkhorn.

Hooks and attention reached without transformer_options (``unreachable_attention.py``) learn which
call they serve from one context variable, :func:`current`: it is set per thread around the model
call, so another thread's sampling of the same model object never sees this call's state.

**Shared prefix.** On the fast path the adversarial rows equal their conditional partner's rows up
to the first perturbed layer. Every module before it (``model_layers.prefix_modules``) is handed
only the rows that are not shared adversarial ones (tensor arguments whose leading dim is the batch,
inside lists, tuples and dataclasses; transformer_options as a copy with its per-chunk lists cut to
match) and its output is widened back, the adversarial rows copied from their partners. Between
prefix modules the full batch flows as before (skip connections, ControlNet residuals and block
patches see what they always saw). Rows are shared only when the adversarial and conditional rows
the diffusion model is handed are equal (``row_split.plan_fork``), never under torch.compile or beside
patches of an attention's output, which may combine a batch's chunks (``patches["attn1_output_patch"]``),
and a module whose arguments hold a batch-derived tensor that cannot be narrowed exactly runs unshared.
Every prefix module must be row-independent (convolutions, norms, linear layers and attention in
eval mode are).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading

from ..asag_core import DiTLayer, UNetLayer, adversarial_attention
from . import comfy_bridge as bridge
from . import comfy_contract as contract
from . import row_split
from .model_layers import layer_module, prefix_modules

_CURRENT = contextvars.ContextVar("asag_model_call", default=None)

WRAPPER_KEY = "asag_adversarial_call"


def current():
    """The model call with adversarial rows running in this context (thread), or None."""
    return _CURRENT.get()


def sinkhorn_attention(q, k, v, heads, settings, layer, **layout):
    """The one place the Sinkhorn attention is called from a model (tests count the calls here).

    ``layout``: mask, skip_reshape, skip_output_reshape, and ComfyUI's scale and enable_gqa."""
    if not layout.get(contract.SKIP_RESHAPE, False):
        # some callers (SD3's MMDiT) hand v over as (B, N, H, D); ComfyUI's own kernels view it flat
        q, k, v = (t.flatten(2) if t.ndim == 4 else t for t in (q, k, v))
    return adversarial_attention(q, k, v, heads, iterations=settings.iterations, lam=settings.lam,
                                 cost=settings.cost, **layout)


def _sinkhorn_layout(bound: dict) -> dict:
    layout = {name: bound.get(name, default) for name, default in
              ((contract.ATTENTION_MASK, None), (contract.SKIP_RESHAPE, False), (contract.SKIP_OUTPUT_RESHAPE, False))}
    for name in (contract.ATTENTION_SCALE, contract.ATTENTION_GQA):  # 0.22 / 0.38 attention kwargs
        if bound.get(name) is not None:
            layout[name] = bound[name]
    return layout


class AdversarialCall:
    """One calc_cond_batch call of the adversarial copies of ``cond``, beside the step's ``conds`` (the fast
    path: [cond, uncond]) or alone (the separate pass). :attr:`cond_lists` are the call's cond lists;
    :meth:`split` takes its outputs apart."""

    def __init__(self, plan, cond: list, share_prefix: bool, beside: list = ()):
        self.plan = plan
        adversarial, self.partners = row_split.adversarial_cond(cond)
        self.cond_lists, self._slots = contract.with_adversarial_conds(list(beside), adversarial)
        self.share_prefix = share_prefix
        self._sinkhorn_calls = 0
        self._layer_runs = 0
        self._lock = threading.Lock()
        self._outer_override = None

    def __deepcopy__(self, memo):  # a deep copy of model_options (0.3.64's clone) shares the call
        return self

    def split(self, outputs: list) -> tuple:
        """(the adversarial prediction, the others' predictions), or None for the first when the chosen
        layers never ran (a cache reused an output)."""
        adversarial, others = outputs[0], list(outputs[1:])
        return (adversarial if self.ran else None), others

    # ---- the options of the call ------------------------------------------------------------

    def model_options(self, model_options: dict) -> dict:
        """A copy of ``model_options`` for this call; the input dicts are not modified."""
        options = dict(model_options)
        to = dict(options.get(contract.TRANSFORMER_OPTIONS, {}))
        unet_layers = [layer for layer in self.plan.layers if isinstance(layer, UNetLayer)]
        if unet_layers:
            replace = {name: dict(patches) for name, patches in to.get(contract.PATCHES_REPLACE, {}).items()}
            attn1 = replace.setdefault(contract.ATTN1, {})
            for layer in unet_layers:
                previous = attn1.get(layer.patch_key, attn1.get(layer.patch_key[:2]))
                attn1[layer.patch_key] = self._attn1_patch(layer, previous)
            to[contract.PATCHES_REPLACE] = replace
        if len(unet_layers) < len(self.plan.layers):
            self._outer_override = to.get(contract.ATTENTION_OVERRIDE)
            to[contract.ATTENTION_OVERRIDE] = self.attention_override
        options[contract.TRANSFORMER_OPTIONS] = to
        if contract.TORCH_COMPILE_KWARGS in options:
            self.share_prefix = False  # hooks inside a compiled graph would force recompiles
        if any(kind in to.get(contract.PATCHES, {}) for kind in contract.BATCH_ATTENTION_PATCHES):
            # such a patch may treat a conditional chunk by the other chunks of its batch (NAGuidance guides
            # the first slot-0 chunk by the slot-1 one): the adversarial copy, computed in a batch of its own
            # on the separate pass, is then no copy of its partner's rows in the prefix
            self.share_prefix = False
        # outermost: every other apply_model wrapper already sees slot 0 and the pack's tags
        wrapper = contract.apply_model_wrapper(self._run_model)
        options = contract.with_apply_model_wrapper(options, WRAPPER_KEY, wrapper, outermost=True)
        if contract.MODEL_FUNCTION_WRAPPER in options:  # runs before apply_model: it sees the tags too
            options[contract.MODEL_FUNCTION_WRAPPER] = self._marking(options[contract.MODEL_FUNCTION_WRAPPER])
        return options

    def _marking(self, inner):
        def asag_model_function_wrapper(apply_model, args):
            to = contract.model_function_options(args)
            if to is not None:
                args = contract.with_model_function_options(args, row_split.marked(to, self.partners, self._slots))
            return inner(apply_model, args)

        return asag_model_function_wrapper

    # ---- one model call ---------------------------------------------------------------------

    def _run_model(self, call: contract.ApplyModelCall):
        if contract.AR_STATE in call.transformer_options:
            raise RuntimeError(
                f"ASAG: this {self.plan.model_name} model is sampled by SamplerARVideo, whose KV cache holds "
                "one row per latent: an adversarial row (in the batch or in a pass of its own) would write into "
                "the cache the conditional row reads. Use KSampler or SamplerCustomAdvanced with this model, or "
                "remove the ASAG node."
            )
        options = row_split.marked(call.transformer_options, self.partners, self._slots)
        flags = row_split.chunk_flags(options) or []
        if not any(flags):
            return call.run(options)
        if all(flags) and self.plan.family.alone_options:
            options = {**options, **dict(self.plan.family.alone_options)}
        model_call = ModelCall(self, flags, batch=call.x.shape[0])
        diffusion_model = contract.diffusion_model(call.base_model)
        with model_call.hooked(diffusion_model, options, share=self.share_prefix):
            return call.run(options)

    def _count(self, sinkhorn=0, layers=0):
        with self._lock:
            self._sinkhorn_calls += sinkhorn
            self._layer_runs += layers

    @property
    def sinkhorn_calls(self) -> int:
        return self._sinkhorn_calls

    @property
    def ran(self) -> bool:
        """True: the plan ran. False: the chosen layers never ran (a cache reused an output).
        Raises when the layers ran but their attention never reached the Sinkhorn."""
        if self._sinkhorn_calls:
            return True
        if self._layer_runs:
            names = ", ".join(str(layer.patch_key) for layer in self.plan.layers)
            raise RuntimeError(
                f"ASAG: the chosen layers ({names}) of this {self.plan.model_name} model ran, but their "
                "self-attention never reached the Sinkhorn attention: this architecture does not route it through "
                "ComfyUI's attention hooks (attn1 patches, optimized_attention_override with transformer_options, "
                "or an attention function called by name that ASAG can redirect), so ASAG cannot guide it. "
                "Remove the ASAG node for this model."
            )
        return False

    # ---- the attention ----------------------------------------------------------------------

    def _sinkhorn(self, q, k, v, heads, layer, layout):
        self._count(sinkhorn=1)
        return sinkhorn_attention(q, k, v, heads, self.plan.settings, layer, **layout)

    def _attn1_patch(self, layer: UNetLayer, previous):
        def attn1_replace(q, k, v, extra_options):
            self._count(layers=1)
            heads = extra_options[contract.N_HEADS]

            def call(index, adversarial):
                q_, k_, v_ = (row_split.take(t, index) for t in (q, k, v))
                if adversarial:
                    return self._sinkhorn(q_, k_, v_, heads, layer, {})
                options = extra_options if index is None else row_split.plain_row_options(extra_options)
                if previous is not None:
                    return previous(q_, k_, v_, options)
                return bridge.plain_attention(q_, k_, v_, heads, extra_options.get(contract.ATTN_PRECISION), options)

            return row_split.dispatch_rows(call, self._row_mask(extra_options, q.shape[0]), q.shape[0])

        return attn1_replace

    def _row_mask(self, transformer_options, batch):
        model_call = current()
        flags = model_call.flags if model_call is not None and model_call.owner is self else None
        return row_split.row_mask(flags if flags is not None else row_split.chunk_flags(transformer_options), batch)

    def attention_override(self, func, *args, **kwargs):
        """The DiT attention override: the plan for the adversarial rows of a chosen block's own attention."""
        bound = contract.bind_attention_args(args, kwargs)
        q, k, v, heads = (bound.pop(name) for name in contract.ATTENTION_PARAMS[:4])
        batch = q.shape[0]
        mask = bound.get(contract.ATTENTION_MASK)
        per_row_mask = hasattr(mask, "ndim") and mask.ndim >= 3 and mask.shape[0] == batch and batch > 1
        # attention reached without transformer_options (unreachable_attention.py) runs as ComfyUI would run
        # it there: no other node's override
        via_options = contract.TRANSFORMER_OPTIONS in bound

        def call(index, adversarial):
            q_, k_, v_ = (row_split.take(t, index) for t in (q, k, v))
            kw = dict(bound)
            if per_row_mask:
                kw[contract.ATTENTION_MASK] = row_split.take(mask, index)
            if index is not None and not adversarial and kw.get(contract.TRANSFORMER_OPTIONS):
                kw[contract.TRANSFORMER_OPTIONS] = row_split.plain_row_options(kw[contract.TRANSFORMER_OPTIONS])
            if adversarial:
                return self._sinkhorn(q_, k_, v_, heads, layer, _sinkhorn_layout(kw))
            if self._outer_override is not None and via_options:
                return self._outer_override(func, q_, k_, v_, heads, **kw)
            return func(q_, k_, v_, heads, **kw)

        model_call = current()
        layer = None
        if model_call is not None and model_call.owner is self:
            n_q, n_k = contract.attention_tokens(q, bound), contract.attention_tokens(k, bound)
            layer = model_call.own_attention_layer(n_q, n_k, batch, (q, k, v))
        if layer is None:
            return call(None, False)  # outside the chosen blocks, or not the block's own attention
        return row_split.dispatch_rows(call, row_split.row_mask(model_call.flags, batch), batch)


def _submodule(module, path):
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


class ModelCall:
    """One model call of an :class:`AdversarialCall` with adversarial rows: its chunk flags, the chosen
    DiT blocks and attention modules open now, and its prefix hooks."""

    def __init__(self, owner: AdversarialCall, flags: list, batch: int = 0):
        self.owner = owner
        self.flags = flags
        self.batch = batch
        #: (layer, role, token tensors) of the modules open inside chosen blocks, innermost last; role
        #: "block", "own" (an own attention module) or "inner" (the generic rule: any module with children)
        self.frames = []
        self._fork = None
        self._narrowed = []

    def own_attention_layer(self, n_queries, n_keys, batch, qkv):
        """The chosen layer an attention call made now belongs to as the block's own attention, else None."""
        if not self.frames:
            return None
        layer, role, sequences = self.frames[-1]
        own = self.owner.plan.family.own
        if own is None:
            is_own = row_split.keys_are_own_tokens(n_queries, n_keys, sequences, batch, exclude=qkv)
        else:
            is_own = role == "own" or (role == "block" and "" in own)
        return layer if is_own else None

    @contextlib.contextmanager
    def running(self):
        """This call is :func:`current` in this context while the block runs."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    @contextlib.contextmanager
    def hooked(self, diffusion_model, options, share: bool):
        """This call is current, with its hooks on ``diffusion_model`` (the executing model), while the block runs."""
        handles = []
        try:
            model = contract.uncompiled(diffusion_model)
            for layer in self.owner.plan.layers:
                if isinstance(layer, DiTLayer):
                    handles += self._track_block(model, layer)
            if share and not contract.is_compiled(diffusion_model):
                handles += self._share_prefix(model, options)
            with self.running():
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def _ours(self) -> bool:
        return _CURRENT.get() is self

    def _frame_hooks(self, layer, role, module, with_sequences=False):
        def enter(_module, args, kwargs):
            if self._ours():
                if role == "block":
                    self.owner._count(layers=1)
                self.frames.append((layer, role, row_split.token_tensors(args, kwargs) if with_sequences else None))

        def leave(_module, args, output):
            if self._ours() and self.frames:
                self.frames.pop()

        return [module.register_forward_pre_hook(enter, with_kwargs=True), module.register_forward_hook(leave)]

    def _track_block(self, model, layer):
        block = layer_module(model, layer)
        own = self.owner.plan.family.own
        handles = self._frame_hooks(layer, "block", block)
        if own is None:  # the generic rule looks at what every inner module is handed
            inner = [m for m in block.modules() if m is not block and next(m.children(), None) is not None]
            for module in inner:
                handles += self._frame_hooks(layer, "inner", module, with_sequences=True)
        else:
            for path in own:
                module = _submodule(block, path) if path else None
                if module is not None:  # a record may name modules only some of its blocks have
                    handles += self._frame_hooks(layer, "own", module)
        return handles

    def _share_prefix(self, model, options):
        modules = prefix_modules(model, self.owner.plan.layers)
        if not modules:
            return []

        def decide(_module, args, kwargs):  # on the inputs the diffusion model is really handed
            if self._ours() and self._fork is None:
                self._fork = row_split.plan_fork(self.batch, options, (args, kwargs)) or False

        handles = [model.register_forward_pre_hook(decide, with_kwargs=True)]
        for module in modules:
            handles.append(module.register_forward_pre_hook(self._narrow, with_kwargs=True))
            handles.append(module.register_forward_hook(self._widen, prepend=True))
        return handles

    def _narrow(self, module, args, kwargs):
        if not self._ours():
            return None
        fork = self._fork
        # inside a narrowed module its prefix submodules are narrowed already
        narrow = bool(fork) and not any(self._narrowed) and fork.narrowable((args, kwargs))
        self._narrowed.append(narrow)
        if not narrow:
            return None
        return fork.narrow(args), {key: fork.narrow(value) for key, value in kwargs.items()}

    def _widen(self, module, args, output):
        if not self._ours() or not self._narrowed:
            return None
        return self._fork.widen(output) if self._narrowed.pop() else None


__all__ = ["AdversarialCall", "ModelCall", "WRAPPER_KEY", "current", "sinkhorn_attention"]
