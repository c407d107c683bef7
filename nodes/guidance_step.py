"""One sampling step with ASAG: where the adversarial prediction comes from and where its term goes.

The term ``s·(x̂_c − x̂_adv)`` is added by a post-CFG function, in the order ComfyUI runs
post-CFG functions (``cfg_function``), after every pre-CFG function. The adversarial
prediction comes from one of two places:

**Fast path** (the model's ``sampler_calc_cond_batch_function`` slot is free): ComfyUI's
``sampling_function`` hands the step's conds to that function; ASAG evaluates cond, uncond
and the adversarial copy of cond in *one* ``calc_cond_batch`` call, with the adversarial
rows' prefix (everything before the first perturbed layer) computed once
(``shared_prefix.py``). It returns cond and uncond as ComfyUI expects and leaves the
adversarial prediction for the post-CFG function of the same model evaluation.

**Separate pass** (another node, e.g. SkipLayerGuidanceDiTSimple, holds that slot, before or
after ASAG was applied; or a guider that does not go through ``sampling_function``): the
post-CFG function finds nothing left for it and evaluates the adversarial copy in a model
call of its own, as PAG does. One info line per sampling run says so.

The hand-over is scoped to one model evaluation: it is keyed by the evaluation's input
tensor (the very object ``sampling_function`` passes to both functions) and taken, not read,
so nothing global is shared between steps, samplings or threads.

A cond that carries a text padding mask (``attention_mask``) on a model that takes such a mask
only in a batch of one (Lumina 2, HunyuanVideo; LTXV and Mochi batch theirs) gets its
adversarial copy in a call of its own from the same function: ComfyUI would batch the two
(they have equal shapes).

When the chosen layers did not run in the adversarial call (a caching node such as EasyCache
or a first-block cache reused an earlier output), that step gets no ASAG term, with one
warning per sampling run.

Two samplings of one model in two threads run one after the other: ComfyUI keeps per-run
state on the model (``current_patcher``, set and cleared around each sampling), so overlapping
runs would break inside ComfyUI itself. :func:`one_sampling_at_a_time` holds a per-model lock
for the whole run (an ``OUTER_SAMPLE`` wrapper), so each run gets its single-thread result.
"""

from __future__ import annotations

import logging
import threading
import weakref

from ..asag_core import apply_asag
from . import adversarial_rows as rows
from . import comfy_internals as comfy
from .adversarial_call import adversarial_call, separate_adversarial_pass
from .shared_prefix import with_shared_prefix

CALC_COND_BATCH = comfy.CALC_COND_BATCH
POST_CFG = comfy.POST_CFG

_MISSING = object()  # no batched call left anything for this evaluation (None: a cache skipped the layers)

log = logging.getLogger("comfyui-asag")


class _Handoff:
    """Adversarial predictions from the batched call to the post-CFG function of the same
    model evaluation, keyed by that evaluation's input tensor."""

    def __init__(self):
        self._entries = {}
        self._lock = threading.Lock()

    def put(self, x, value):
        with self._lock:
            # entries of evaluations whose post-CFG function never ran die with their input
            self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
            self._entries[id(x)] = (weakref.ref(x), value)

    def take(self, x):
        with self._lock:
            entry = self._entries.pop(id(x), None)
        if entry is None or entry[0]() is not x:
            return _MISSING
        return entry[1]


class _OncePerRun:
    """Says a thing once per sampling run (a run is identified by its sigma schedule object)."""

    def __init__(self):
        self._seen = None

    def __call__(self, model_options, say):
        run = model_options.get(comfy.TRANSFORMER_OPTIONS, {}).get(comfy.SAMPLE_SIGMAS)
        ref = run if run is not None else model_options
        if self._seen is not None and self._seen() is ref:
            return
        try:
            self._seen = weakref.ref(ref)
        except TypeError:  # a plain dict: compare by identity for this run only
            self._seen = lambda ref=ref: ref
        say()


def _needs_own_call(model, cond) -> bool:
    """A cond with a text padding mask, on a model that takes such masks only in a batch of one
    (HunyuanVideo, Lumina 2; see comfy_internals.BATCHED_TEXT_MASK_DITS): ComfyUI would batch it
    with its same-shaped adversarial copy, so the copy needs a call of its own."""
    if comfy.class_id(comfy.uncompiled(comfy.diffusion_model(model))) in comfy.BATCHED_TEXT_MASK_DITS:
        return False
    return any(comfy.TEXT_MASK in entry.get(comfy.MODEL_CONDS, {}) for entry in cond)


class ASAGStep:
    """The two functions ASAG puts into model_options for one plan, and their hand-over."""

    def __init__(self, plan):
        self.plan = plan
        #: compute the adversarial rows' prefix once (see shared_prefix.py); False = plain batching
        self.share_prefix = True
        self._handoff = _Handoff()
        self._tell_separate = _OncePerRun()
        self._tell_skipped = _OncePerRun()
        self.calc_cond_batch_function = self._make_calc_cond_batch_function()
        self.post_cfg_function = self._make_post_cfg_function()

    def _make_calc_cond_batch_function(self):
        def asag_calc_cond_batch(args):
            conds, x, sigma, model, options = comfy.batch_function_args(args)
            cond = conds[0]
            if cond is None or not self._active(model, sigma):
                return comfy.calc_cond_batch(model, conds, x, sigma, options)
            if _needs_own_call(model, cond):
                out = comfy.calc_cond_batch(model, conds, x, sigma, options)
                self._handoff.put(x, separate_adversarial_pass(model, cond, x, sigma, options, self.plan))
                return out
            adversarial, partners = rows.adversarial_cond(cond)
            with adversarial_call(model, options, self.plan, partners) as (adv_options, report):
                if self.share_prefix:
                    adv_options = with_shared_prefix(adv_options, self.plan)
                out = comfy.calc_cond_batch(model, list(conds) + [adversarial], x, sigma, adv_options)
            self._handoff.put(x, out[-1] if report.ran else None)
            return out[:-1]

        asag_calc_cond_batch.asag_step = self
        return asag_calc_cond_batch

    def _make_post_cfg_function(self):
        def asag_post_cfg(args):
            cfg_result, cond, cond_denoised, x, sigma, model, options = comfy.post_cfg_args(args)
            if cond is None or not self._active(model, sigma):
                return cfg_result
            adversarial = self._handoff.take(x)
            if adversarial is _MISSING:
                self._tell_separate(options, lambda: self._say_separate(options))
                adversarial = separate_adversarial_pass(model, cond, x, sigma, options, self.plan)
            if adversarial is None:
                self._tell_skipped(options, self._say_skipped)
                return cfg_result
            return apply_asag(cfg_result, cond_denoised, adversarial, self.plan.settings)

        # ASAGGuider finds the step here, and replaces this function so ASAG is not applied twice
        asag_post_cfg.asag_step = self
        return asag_post_cfg

    def _active(self, model, sigma) -> bool:
        # the window resolved now, with the model sampling this sampling uses (ModelSampling nodes
        # before or after ASAG alike)
        return self.plan.active_at(float(sigma.max()), comfy.model_sampling(model))

    def _say_separate(self, options):
        holder = options.get(CALC_COND_BATCH)
        if holder is None or holder is self.calc_cond_batch_function:
            reason = "this guider evaluates the conds without sampling_function's batch hook"
        elif step_of(holder) is not None:
            reason = "another ASAG node holds this model's sampler_calc_cond_batch_function"
        else:
            who = getattr(holder, "__qualname__", type(holder).__name__)
            reason = f"another node's sampler_calc_cond_batch_function ({who}) handles this model's conds"
        log.info("ASAG: %s, so the adversarial branch runs as a separate model pass (same result, one more "
                 "model call per step).", reason)

    def _say_skipped(self):
        log.warning("ASAG: a caching node reused an earlier model output on some steps, so the guided layers "
                    "did not run there; those steps get no ASAG term.")


_RUN_LOCKS = weakref.WeakKeyDictionary()  # BaseModel -> RLock
_RUN_LOCKS_GUARD = threading.Lock()
ONE_RUN_KEY = "asag_one_sampling_at_a_time"


def run_lock(base_model) -> threading.RLock:
    """The lock one sampling run of ``base_model`` holds (re-entrant: a run may nest another)."""
    with _RUN_LOCKS_GUARD:
        lock = _RUN_LOCKS.get(base_model)
        if lock is None:
            lock = _RUN_LOCKS[base_model] = threading.RLock()
        return lock


def one_sampling_at_a_time(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a second thread's sampling of the same model waits for the first."""
    with run_lock(comfy.guider_model(executor)):
        return executor(*args, **kwargs)


def add_run_lock(model_patcher) -> None:
    comfy.add_outer_sample_wrapper(model_patcher, ONE_RUN_KEY, one_sampling_at_a_time)


def step_of(function):
    """The ASAGStep a post-CFG or calc-cond-batch function belongs to, else None."""
    return getattr(function, "asag_step", None)


def install(model_options: dict, step: ASAGStep) -> dict:
    """A copy of ``model_options`` with ``step``'s functions: its post-CFG function where an
    earlier ASAG one was (else last), and its batched call if no other node holds the slot.
    Functions of earlier ASAG steps are removed, so ASAG is applied once."""
    options = dict(model_options)
    post = list(options.get(POST_CFG, []))
    ours = [i for i, fn in enumerate(post) if step_of(fn) is not None]
    position = ours[0] if ours else len(post)
    post = [fn for fn in post if step_of(fn) is None]
    post.insert(position, step.post_cfg_function)
    options[POST_CFG] = post
    holder = options.get(CALC_COND_BATCH)
    if holder is None or step_of(holder) is not None:
        options[CALC_COND_BATCH] = step.calc_cond_batch_function
    return options


def carried_step(model_options):
    """The ASAGStep of a model patched by ASAG/ASAGAdvanced (the last one), else None."""
    steps = [step_of(fn) for fn in model_options.get(POST_CFG, [])]
    steps = [s for s in steps if s is not None]
    return steps[-1] if steps else None


__all__ = ["ASAGStep", "add_run_lock", "carried_step", "install", "run_lock", "step_of"]
