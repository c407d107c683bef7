"""One sampling step with ASAG: where the adversarial prediction comes from and where its term goes.

The term ``s·(x̂_c − x̂_adv)`` is added by a post-CFG function, in the order ComfyUI runs post-CFG
functions (``cfg_function``), after every pre-CFG function. The adversarial prediction comes from one
of two places:

**Fast path** (the model's ``sampler_calc_cond_batch_function`` slot is free): ComfyUI's
``sampling_function`` hands the step's conds to that function; ASAG evaluates cond, uncond and the
adversarial copy of cond in *one* ``calc_cond_batch`` call (an :class:`~.adversarial_call.AdversarialCall`,
which computes the blocks before the first perturbed layer once for the copy and its partner). It
returns cond and uncond as ComfyUI expects and hands the adversarial prediction to the post-CFG
function of the same model evaluation (``handoff.py``).

**Separate pass** (another node, e.g. SkipLayerGuidanceDiTSimple, holds that slot, before or after ASAG
was applied; or a guider that does not go through ``sampling_function``): the post-CFG function finds
nothing handed over and evaluates the adversarial copy in a model call of its own, as PAG does. One
info line per sampling run says so.

A cond that carries a text padding mask on a family that takes such masks only in a batch of one (the
family record's ``batched_text_mask``: Lumina 2, HunyuanVideo and families not read yet), and every cond
of a family whose model takes one row per call (``batch_of_one``: MiniMax H3), gets its adversarial copy
in a call of its own from the batch function: ComfyUI would batch the two.

When the chosen layers did not run in the adversarial call (a caching node such as EasyCache reused an
earlier output), that step gets no ASAG term, with one warning per sampling run.

Two samplings of one model in two threads run one after the other: ComfyUI keeps per-run state on the
model (``current_patcher``, set and cleared around each sampling), so overlapping runs would break
inside ComfyUI itself. :func:`one_sampling_at_a_time` holds a per-model lock for the whole run.
"""

from __future__ import annotations

import logging
import threading
import weakref

from ..asag_core import apply_asag
from . import comfy_bridge as bridge
from . import comfy_contract as contract
from .adversarial_call import AdversarialCall
from .handoff import MISSING, Handoff, OncePerRun

log = logging.getLogger("comfyui-asag")


class ASAGStep:
    """The two functions ASAG puts into model_options for one plan, and their hand-over."""

    def __init__(self, plan):
        self.plan = plan
        #: compute the adversarial rows' prefix once (an explicit choice tests and benchmarks may turn off)
        self.share_prefix = True
        self._handoff = Handoff()
        self._tell_separate = OncePerRun()
        self._tell_skipped = OncePerRun()
        self.calc_cond_batch_function = self._make_calc_cond_batch_function()
        self.post_cfg_function = self._make_post_cfg_function()

    def _make_calc_cond_batch_function(self):
        def asag_calc_cond_batch(args):
            conds, x, sigma, model, options = contract.batch_function_args(args)
            cond = conds[0]
            if cond is None or not self._active(model, sigma):
                return bridge.calc_cond_batch(model, conds, x, sigma, options)
            if self._needs_own_call(cond):
                out = bridge.calc_cond_batch(model, conds, x, sigma, options)
                self._handoff.put(x, self.separate_pass(model, cond, x, sigma, options))
                return out
            call = AdversarialCall(self.plan, cond, share_prefix=self.share_prefix, beside=conds)
            adversarial, out = call.split(bridge.calc_cond_batch(model, call.cond_lists, x, sigma,
                                                                 call.model_options(options)))
            self._handoff.put(x, adversarial)
            return out

        asag_calc_cond_batch.asag_step = self
        return asag_calc_cond_batch

    def separate_pass(self, model, cond, x, sigma, options):
        """The adversarial prediction in a model call of its own; None when a cache skipped the layers."""
        call = AdversarialCall(self.plan, cond, share_prefix=False)
        outputs = bridge.calc_cond_batch(model, call.cond_lists, x, sigma, call.model_options(options))
        return call.split(outputs)[0]

    def _make_post_cfg_function(self):
        def asag_post_cfg(args):
            cfg_result, cond, cond_denoised, x, sigma, model, options = contract.post_cfg_args(args)
            if cond is None or not self._active(model, sigma):
                return cfg_result
            adversarial = self._handoff.take(x)
            if adversarial is MISSING:
                self._tell_separate(options, lambda: self._say_separate(options))
                adversarial = self.separate_pass(model, cond, x, sigma, options)
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
        return self.plan.active_at(float(sigma.max()), contract.model_sampling(model))

    def _needs_own_call(self, cond) -> bool:
        if self.plan.family.batch_of_one:
            return True
        if self.plan.family.batched_text_mask:
            return False
        return any(contract.TEXT_MASK in entry.get(contract.MODEL_CONDS, {}) for entry in cond)

    def _say_separate(self, options):
        holder = options.get(contract.CALC_COND_BATCH)
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


# One lock per sampled model, for the sampling runs of several threads (module docstring): the only
# module-level state of the pack, because ComfyUI's own per-run state lives on the shared model object.
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
    with run_lock(contract.executor_guider_model(executor)):
        return executor(*args, **kwargs)


def add_run_lock(model_patcher) -> None:
    bridge.add_outer_sample_wrapper(model_patcher, ONE_RUN_KEY, one_sampling_at_a_time)


def step_of(function):
    """The ASAGStep a post-CFG or calc-cond-batch function belongs to, else None."""
    return getattr(function, "asag_step", None)


def install(model_options: dict, step: ASAGStep) -> dict:
    """A copy of ``model_options`` with ``step``'s functions: its post-CFG function where an earlier ASAG
    one was (else last), and its batched call if no other node holds the slot. Functions of earlier
    ASAG steps are removed, so ASAG is applied once."""
    options = dict(model_options)
    post = list(options.get(contract.POST_CFG, []))
    ours = [i for i, fn in enumerate(post) if step_of(fn) is not None]
    position = ours[0] if ours else len(post)
    post = [fn for fn in post if step_of(fn) is None]
    post.insert(position, step.post_cfg_function)
    options[contract.POST_CFG] = post
    holder = options.get(contract.CALC_COND_BATCH)
    if holder is None or step_of(holder) is not None:
        options[contract.CALC_COND_BATCH] = step.calc_cond_batch_function
    return options


def carried_step(model_options):
    """The ASAGStep of a model patched by ASAG/ASAGAdvanced (the last one), else None."""
    steps = [step_of(fn) for fn in model_options.get(contract.POST_CFG, [])]
    steps = [s for s in steps if s is not None]
    return steps[-1] if steps else None


def carried_plan(model_options):
    """The ASAG plan a model patched by ASAG/ASAGAdvanced carries (the last one), else None."""
    step = carried_step(model_options)
    return None if step is None else step.plan


__all__ = ["ASAGStep", "add_run_lock", "carried_plan", "carried_step", "install", "run_lock", "step_of"]
