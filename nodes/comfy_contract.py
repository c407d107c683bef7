"""The ComfyUI contract: every key, literal, wrapper signature and argument layout the pack relies on.

Pure (no ComfyUI import), so the rest of ``nodes/`` can be read and unit-tested without a host;
``comfy_bridge.py`` holds the few functions and classes that must come from ComfyUI itself.
``tests/test_comfy_contract.py`` checks that no other module of the pack writes one of these
literals, and that the bridge's ComfyUI agrees with them (the wrapper kinds).

Each entry says what it relies on and which versions were read for it: **0.3.64** and **0.22.0**
(the two real hosts the tests run in) and the newest stored files of the **0.38 era**
(comfy/samplers.py e0d4ea77, comfy/model_base.py 094c74c1, comfy/model_patcher.py 08d0e51,
comfy/ldm/modules/attention.py 05080f60). All entries hold in all three unless noted.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# model_options keys (ModelPatcher.model_options)
# ---------------------------------------------------------------------------------------------

#: sampling_function hands the step's conds to this function instead of calc_cond_batch (one per model)
CALC_COND_BATCH = "sampler_calc_cond_batch_function"
#: cfg_function runs these after CFG, in order, with the args read by :func:`post_cfg_args`
POST_CFG = "sampler_post_cfg_function"
#: calc_cond_batch calls it instead of apply_model: fn(apply_model, {"input", "timestep", "c", "cond_or_uncond"})
MODEL_FUNCTION_WRAPPER = "model_function_wrapper"
TRANSFORMER_OPTIONS = "transformer_options"
#: set by ComfyUI's TorchCompileModel (comfy_api.torch_helpers.torch_compile.TORCH_COMPILE_KWARGS)
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"

# ---------------------------------------------------------------------------------------------
# transformer_options keys. calc_cond_batch builds one dict per model call from
# model_options["transformer_options"] (merge_nested_dicts, shallow). 0.22's and 0.38's
# BaseModel._apply_model hand the diffusion model a shallow .copy() of it, so the pack never
# mutates a dict after handing it on: it passes dicts of its own down instead.
# ---------------------------------------------------------------------------------------------

#: per chunk of the batch, the index of its cond in the calc_cond_batch call
COND_OR_UNCOND = "cond_or_uncond"
#: per chunk, the uuid of its cond entry
UUIDS = "uuids"
#: the sampling run's sigma schedule (one tensor object per run; 0.38 multi-GPU moves it per device)
SAMPLE_SIGMAS = "sample_sigmas"
PATCHES_REPLACE = "patches_replace"
#: patches["attn1_output_patch"], ["attn2_output_patch"]: functions handed a whole batch's attention output,
#: which may combine its chunks (NAGuidance's pairs the first slot-0 chunk with the slot-1 chunk)
PATCHES = "patches"
BATCH_ATTENTION_PATCHES = ("attn1_output_patch", "attn2_output_patch")
#: U-Net self-attention replace patches: patches_replace["attn1"][(block, id, index)] or [(block, id)]
ATTN1 = "attn1"
#: every ComfyUI attention function is wrapped by wrap_attn, which calls
#: transformer_options[ATTENTION_OVERRIDE](func, *args, **kwargs) when the caller passes transformer_options
ATTENTION_OVERRIDE = "optimized_attention_override"
WRAPPERS = "wrappers"
#: keys of the extra_options dict an attn1 replace patch gets (built from transformer_options)
N_HEADS = "n_heads"
ATTN_PRECISION = "attn_precision"
#: 0.22: the causal Wan sampler (SamplerARVideo) hands the model its KV caches here; the model then
#: calls its blocks without transformer_options (comfy/ldm/wan/ar_model.py, forward_block)
AR_STATE = "ar_state"
#: 0.38 era, Qwen Image 2.1's prefix cache settings (comfy/ldm/qwen_image21/model.py 08f68f09,
#: comfy_extras/nodes_qwen.py QwenImage21Cache): device "off" runs the model call without the cache
QWEN_IMAGE21_CACHE, QWEN_IMAGE21_CACHE_OFF = "qwen_image21_cache", {"device": "off"}

#: wrapper kinds (the values of comfy.patcher_extension.WrappersMP; comfy_bridge checks them).
#: APPLY_MODEL wrappers run as fn(executor, x, t, c_concat, c_crossattn, control, transformer_options,
#: **kwargs), with executor.class_obj the BaseModel that runs the call (0.38 multi-GPU: a per-device copy).
APPLY_MODEL = "apply_model"
#: OUTER_SAMPLE wrappers run as fn(executor, *args, **kwargs), executor.class_obj the CFGGuider
OUTER_SAMPLE = "outer_sample"

#: a processed cond entry (the lists calc_cond_batch gets): its uuid, and its model conditions
#: ("attention_mask" is the text padding mask Lumina 2 / HunyuanVideo / LTXV / Mochi read)
COND_UUID = "uuid"
MODEL_CONDS = "model_conds"
TEXT_MASK = "attention_mask"

# ---------------------------------------------------------------------------------------------
# model attributes
# ---------------------------------------------------------------------------------------------

#: BaseModel.diffusion_model, also the first part of an object patch key
DIFFUSION_MODEL = "diffusion_model"
#: BaseModel.model_config: its class names the family in messages (SD15, SDXL, Flux...)
MODEL_CONFIG = "model_config"
#: torch.compile's wrapper module (TorchCompileModel puts it in diffusion_model's place) keeps the module here
COMPILED_ORIGINAL = "_orig_mod"


def diffusion_model(base_model):
    """The BaseModel's diffusion model (torch.compile's wrapper if TorchCompileModel compiled it)."""
    return getattr(base_model, DIFFUSION_MODEL)


def uncompiled(module):
    """The module under torch.compile's wrapper."""
    return getattr(module, COMPILED_ORIGINAL, module)


def is_compiled(module) -> bool:
    return hasattr(module, COMPILED_ORIGINAL)


def model_sampling(base_model):
    """The model sampling a BaseModel samples with now (ModelSampling* nodes set it as an object
    patch, applied when the model is loaded for sampling): percent_to_sigma(p)."""
    return base_model.model_sampling


def config_name(model_patcher) -> str:
    """A readable name of the loaded model for messages: its model config's class (SD15, SDXL, Flux2...)."""
    model = model_patcher.model
    config = getattr(model, MODEL_CONFIG, None)
    return type(config).__name__ if config is not None else type(uncompiled(diffusion_model(model))).__name__


def object_patch_key(path: str) -> str:
    """ModelPatcher.add_object_patch key that swaps the class of the module at ``path`` inside the
    diffusion model (a dotted path; the patch is applied with the model and restored after)."""
    return f"{DIFFUSION_MODEL}.{path}.__class__" if path else f"{DIFFUSION_MODEL}.__class__"


# ---------------------------------------------------------------------------------------------
# argument layouts
# ---------------------------------------------------------------------------------------------

def batch_function_args(args: dict) -> tuple:
    """(conds, x, sigma, model, model_options) from the args sampling_function hands a CALC_COND_BATCH
    function. ``model`` is the BaseModel, ``conds`` [cond, uncond or None]."""
    return args["conds"], args["input"], args["sigma"], args["model"], args["model_options"]


#: cond_or_uncond names each chunk by the position of its cond list in the calc_cond_batch call; sampling_function
#: calls it with [cond, uncond], so patches read 0 as the conditional and 1 as the unconditional chunk
COND_SLOT = 0


def with_adversarial_conds(conds: list, adversarial: list) -> tuple[list, list]:
    """``(cond lists, slots)`` of a calc_cond_batch call that also evaluates ``adversarial`` beside the step's
    ``conds`` ([cond, uncond]): the adversarial list goes first, and ``slots`` gives each list the
    cond_or_uncond value the model should see (the adversarial one :data:`COND_SLOT`, the others their place
    among the step's conds). calc_cond_batch batches a call's chunks in the reverse order of its cond lists
    (``to_batch_temp.reverse()``), so the adversarial chunk comes after the conditional one: a patch that takes
    the first slot-0 chunk for the conditional one (NAGuidance's attention output patch) guides the
    conditional chunk, as on the separate pass. Its outputs come back in the same order: the adversarial
    prediction first."""
    return [adversarial, *conds], [COND_SLOT, *range(len(conds))]


def post_cfg_args(args: dict) -> tuple:
    """(cfg_result, cond, cond_denoised, x, sigma, model, model_options) from the args cfg_function hands
    each POST_CFG function. ``input`` is the same tensor object the batch function got."""
    return (args["denoised"], args["cond"], args["cond_denoised"], args["input"], args["sigma"], args["model"],
            args["model_options"])


def with_model_function_options(args: dict, transformer_options: dict) -> dict:
    """The args of a MODEL_FUNCTION_WRAPPER call with another transformer_options (in ``args["c"]``) and
    the cond_or_uncond that goes with it."""
    c = {**args["c"], TRANSFORMER_OPTIONS: transformer_options}
    return {**args, "c": c, COND_OR_UNCOND: list(transformer_options.get(COND_OR_UNCOND, args[COND_OR_UNCOND]))}


def model_function_options(args: dict) -> dict | None:
    """The transformer_options a MODEL_FUNCTION_WRAPPER call hands on, or None."""
    return args["c"].get(TRANSFORMER_OPTIONS)


@dataclass
class ApplyModelCall:
    """One call of an APPLY_MODEL wrapper: ComfyUI's arguments, and :meth:`run` to go on with them."""

    executor: object
    x: object
    t: object
    c_concat: object
    c_crossattn: object
    control: object
    transformer_options: dict
    kwargs: dict

    @property
    def base_model(self):
        """The BaseModel that runs this call: the model itself, or on 0.38 with several GPUs the
        per-device copy (a fresh model from the loader, not an attribute of ours)."""
        return self.executor.class_obj

    @property
    def inputs(self) -> tuple:
        """Everything the model is handed besides transformer_options (to compare rows of)."""
        return self.x, self.t, self.c_concat, self.c_crossattn, self.control, self.kwargs

    def run(self, transformer_options: dict | None = None):
        options = self.transformer_options if transformer_options is None else transformer_options
        return self.executor(self.x, self.t, self.c_concat, self.c_crossattn, self.control, options, **self.kwargs)


def apply_model_wrapper(around):
    """An APPLY_MODEL wrapper (ComfyUI's signature) that hands each call to ``around(ApplyModelCall)``."""

    def asag_apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                         **kwargs):
        return around(ApplyModelCall(executor, x, t, c_concat, c_crossattn, control, transformer_options, kwargs))

    return asag_apply_model


def with_apply_model_wrapper(model_options: dict, key: str, wrapper, outermost: bool) -> dict:
    """A copy of ``model_options`` with ``wrapper`` as an APPLY_MODEL wrapper under ``key``, first
    (outermost) or last (innermost) among them; the input dicts are not modified."""
    options = dict(model_options)
    to = dict(options.get(TRANSFORMER_OPTIONS, {}))
    wrappers = {kind: dict(by_key) for kind, by_key in to.get(WRAPPERS, {}).items()}
    by_key = {k: v for k, v in wrappers.get(APPLY_MODEL, {}).items() if k != key}
    wrappers[APPLY_MODEL] = {key: [wrapper], **by_key} if outermost else {**by_key, key: [wrapper]}
    to[WRAPPERS] = wrappers
    options[TRANSFORMER_OPTIONS] = to
    return options


def executor_guider_model(executor):
    """The BaseModel an OUTER_SAMPLE wrapper's guider samples."""
    return executor.class_obj.model_patcher.model


#: the parameters of ComfyUI's attention functions, in positional order. 0.22 and 0.38 add keyword-only
#: extras the pack passes on or honours: scale=, enable_gqa=, low_precision_attention=
#: (0.38's preferred_attention= is removed by wrap_attn before an override sees the call).
ATTENTION_PARAMS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
#: keyword arguments the Sinkhorn attention honours (the logit scale, and k/v with fewer heads than q)
ATTENTION_SCALE, ATTENTION_GQA = "scale", "enable_gqa"
ATTENTION_MASK, SKIP_RESHAPE, SKIP_OUTPUT_RESHAPE = "mask", "skip_reshape", "skip_output_reshape"


def bind_attention_args(args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of ComfyUI's attention functions, by name (callers pass heads and mask
    positionally or by keyword)."""
    bound = dict(zip(ATTENTION_PARAMS, args, strict=False))
    bound.update(kwargs)
    return bound


def attention_tokens(t, bound: dict) -> int:
    """Tokens of q, k or v of an attention call: (B, H, N, D) with skip_reshape, else (B, N, H*D)."""
    return t.shape[2] if bound.get(SKIP_RESHAPE, False) else t.shape[1]


def is_attention_function_name(name: str) -> bool:
    """Names of ComfyUI's attention functions in comfy.ldm.modules.attention (wrap_attn-wrapped
    ``attention_*`` and ``optimized_attention*``)."""
    return name.startswith("attention_") or name.startswith("optimized_attention")
