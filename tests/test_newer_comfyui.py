"""Newer than 0.22: the newest stored upstream ComfyUI files, emulated on both real hosts.

Each section reproduces, with stand-ins of our own (no ComfyUI code copied), what the pack must handle in
one newer model, inside a tiny model ComfyUI loads and samples on 0.3.64 and on 0.22:

* **Qwen Image 2.1** (Comfy-Org comfy/ldm/qwen_image21/model.py 08f68f09, model_base.py 094c74c1): a
  single-stream block whose attention module ``attn`` gets an attention closure from the model. Cached
  path (``prefix_cached_attention``): one call, queries = the target image tokens, keys = the cached
  text/reference prefix + the target. Uncached path (``block_causal_attention``): one call per segment, text
  segments with causal bool masks, a reference segment, then the target. The prefix K/V cache
  (``PoseBranchCache`` in wan/model_animate2.py 1e416935) keys one slot by the per-row conditioning of a
  model call, is filled on a slot's first call by a prefix-only pass of every block, is off when something
  is hooked into the blocks (``patches_replace["dit"]``, ``post_input``, ``single_block``, ``attn1_patch``)
  or the call's ``qwen_image21_cache`` option says device "off", and lives for one sampling run; an
  ``optimized_attention_override`` does not turn it off.
* **LTX 2.5 native STG** (comfy_extras/nodes_lt.py b2f605a6 ``LTXVSpatioTemporalGuidance``, av_model.py
  0a29dda, lightricks/model.py e3fe2188): a post-CFG function runs ``calc_cond_batch`` for cond only with
  ``transformer_options["stg_self_attn_blocks"]``; the LTX-2 block loop hands a flagged block
  ``stg_skip_self_attn``, and its self-attention modules then return their value projection without any
  attention call.
* **MiniMax H3** (comfy/ldm/minimax/model.py 2c64d4aa, model_base.py 094c74c1): a packed 2-D sequence with no
  batch dimension, a model that refuses batches of more than one row, everything per cond in one
  ``CONDConstant`` payload, q/k/v wrapped in ``AttentionTensorContainer`` (comfy/ldm/modules/attention.py
  05080f60: ``wrap_attn`` unwraps them for an override without a ``container_function`` attribute).
* **Krea 2** (comfyanonymous comfy/ldm/krea2/model.py 08381b1a): joint single-stream blocks over
  [text | image] with GQA expanded before ``optimized_attention_masked`` (skip_reshape), a sigmoid output
  gate, a text-fusion stack whose attention runs on B x text-token rows (each a sequence of the text
  encoder's layers), and no ``block_index``.

FLUX 3 Klein is not stored (no comfy/ldm/flux3, no "flux3" in any stored ComfyUI file); "Klein" in the
stored files is FLUX.2 (``supported_models.Flux2``), which the Flux record covers and the real hosts test.
"""

from __future__ import annotations

import functools

import pytest
import sampling
import tiny_dits
import tiny_models
import torch
from test_comfy_drift_attention import ltx2_standin
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2


def _rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _modulated(x, scale):
    return torch.nn.functional.layer_norm(x, x.shape[-1:]) * (1 + scale)


def _linear(n_in, n_out, bias=False):
    import comfy.ops

    return comfy.ops.disable_weight_init.Linear(n_in, n_out, bias=bias)


def _attention(q, k, v, heads, transformer_options, **kwargs):
    """ComfyUI's optimized_attention, looked up when called, as the models call it."""
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(q, k, v, heads, transformer_options=transformer_options, **kwargs)


def _calls(sinkhorn_calls):
    """(queries, keys) of each recorded Sinkhorn call, in order."""
    return [(call.tokens, call.keys) for call in sinkhorn_calls]


def _layers(sinkhorn_calls):
    return {call.layer.patch_key for call in sinkhorn_calls}


# =============================================================================================
# Qwen Image 2.1: block-causal attention over a cached text/reference prefix
# =============================================================================================

QWEN_TARGET = 16  # tiny_dits.LATENT["qwen_image"]: an 8x8 latent in 2x2 patches
# the prefix of the tiny conditioning's 7 text tokens, laid out as 2.1's build_sequence lays out a prompt with
# one reference image spliced in at slot 3: text (causal inside itself), the reference (sees everything before
# its end), the rest of the text (causal)
QWEN_SEGMENTS = ((0, 3, "text"), (3, 5, "reference"), (5, 7, "text"))
QWEN_PREFIX = QWEN_SEGMENTS[-1][1]
#: (queries, keys) of the prefix segments' calls, and of the target's call
PREFIX_CALLS = [(end - start, end) for start, end, _ in QWEN_SEGMENTS]
TARGET_CALL = (QWEN_TARGET, QWEN_PREFIX + QWEN_TARGET)
QWEN_CHOSEN = ("double_block", 1)  # the auto layer of the 3-block tiny Qwen-Image


def _segment_mask(start, end, kind):
    """2.1's segment masks: a text segment's bool (n, end) mask, causal inside the segment; else None."""
    if kind != "text":
        return None
    return torch.ones(end - start, end, dtype=torch.bool).tril(start)


def block_causal(segments, transformer_options, put=None):
    """2.1's uncached attention closure: one attention call per segment, the segment's queries against
    every key before its end; ``put`` stores the K/V first (the fill pass of the prefix cache)."""
    def attend(q, k, v, heads):
        if put is not None:
            put(k, v)
        outs = [_attention(q[:, s:e].flatten(2), k[:, :e].flatten(2), v[:, :e].flatten(2), heads,
                           transformer_options, mask=_segment_mask(s, e, kind)) for s, e, kind in segments]
        return torch.cat(outs, dim=1)

    return attend


def prefix_cached(prefix_k, prefix_v, transformer_options):
    """2.1's cached attention closure: the target's queries against [cached prefix, target] keys, one call."""
    def attend(q, k, v, heads):
        return _attention(q.flatten(2), torch.cat([prefix_k, k], 1).flatten(2), torch.cat([prefix_v, v], 1).flatten(2),
                          heads, transformer_options)

    return attend


class PrefixCache:
    """2.1's prefix K/V cache as the model uses it (module docstring). :attr:`modes` lists the mode of each
    model call ("uncached", "fill", "cached"): tests read it."""

    HOOK_PATCHES = ("post_input", "single_block", "attn1_patch")

    def __init__(self, blocks, enabled=True):
        self.blocks = blocks
        self.enabled = enabled
        self.reset()

    def reset(self):
        """A new sampling run (2.1 resets the cache when the sampler sets the model's current patcher)."""
        self.slots, self.slot, self.batch, self.mode, self.modes = [], None, None, "uncached", []

    def _on(self, to):
        patches = to.get("patches", {})
        hooked = to.get("patches_replace", {}).get("dit") or any(patches.get(p) for p in self.HOOK_PATCHES)
        return self.enabled and not hooked and to.get("qwen_image21_cache", {}).get("device") != "off"

    def begin(self, module, args, kwargs):
        """Forward pre-hook of the diffusion model: the slot of this call, chosen on the full batch."""
        context = kwargs["context"]
        self.batch, self.slot = context.shape[0], None
        if self._on(kwargs.get("transformer_options", {})):
            key = context.detach().float().flatten(1)  # one row per batch row: cond and uncond differ
            self.slot = next((s for s in self.slots if s[0].shape == key.shape and torch.equal(s[0], key)), None)
            if self.slot is None:
                self.slot = (key.clone(), {})
                self.slots.append(self.slot)
        self.mode = "uncached" if self.slot is None else "cached" if len(self.slot[1]) == self.blocks else "fill"
        self.modes.append(self.mode)

    def put(self, index, k, v):
        self.slot[1][index] = (k.detach().clone(), v.detach().clone())

    def take(self, index):
        import comfy.utils

        return tuple(comfy.utils.repeat_to_batch_size(t, self.batch) for t in self.slot[1][index])


class PrefixAttention(torch.nn.Module):
    """2.1's ``Attention``: q, k, v of one sequence as (B, N, H, D), handed to the closure the block got."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = _linear(dim, dim), _linear(dim, dim), _linear(dim, dim)
        self.to_out = torch.nn.ModuleList([_linear(dim, dim)])

    def forward(self, x, attn_fn):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1) for f in (self.to_q, self.to_k, self.to_v))
        return self.to_out[0](attn_fn(_rms(q), _rms(k), v, self.heads))


class PrefixBlock(torch.nn.Module):
    """A 2.1 block in Qwen-Image's block slot: the text stream is the prefix (t = 0 modulation, a learned
    row), the image stream the target (modulated by the step's time embedding). Its attention module is
    called ``attn``, as in ``QwenImage21TransformerBlock``. What it computes depends on the cache's mode."""

    def __init__(self, index, dim, heads, cache):
        super().__init__()
        self.index, self.cache = index, cache
        self.attn = PrefixAttention(dim, heads)
        self.target_mod = _linear(dim, 4 * dim, bias=True)
        self.prefix_mod = torch.nn.Parameter(torch.empty(4, dim))
        self.mlp = torch.nn.Sequential(_linear(dim, 2 * dim), torch.nn.GELU(approximate="tanh"), _linear(2 * dim, dim))

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask=None, temb=None,
                image_rotary_emb=None, transformer_options={}, **kwargs):
        to, txt, img = transformer_options, encoder_hidden_states, hidden_states
        assert txt.shape[1] == QWEN_PREFIX, "the prefix segments are laid out for the tiny conditioning"
        target_mod = self.target_mod(torch.nn.functional.silu(temb)).unsqueeze(1).chunk(4, dim=-1)
        prefix_mod = self.prefix_mod.to(img).view(4, 1, 1, -1).unbind(0)
        if self.cache.mode == "uncached":  # one sequence [prefix | target], one call per segment
            x = torch.cat([_modulated(txt, prefix_mod[0]), _modulated(img, target_mod[0])], dim=1)
            segments = QWEN_SEGMENTS + ((QWEN_PREFIX, QWEN_PREFIX + img.shape[1], "target"),)
            out = self.attn(x, block_causal(segments, to))
            return self._rest(txt, out[:, :QWEN_PREFIX], prefix_mod), self._rest(img, out[:, QWEN_PREFIX:], target_mod)
        if self.cache.mode == "fill":  # the prefix alone through the block, its K/V stored
            put = functools.partial(self.cache.put, self.index)
            txt = self._rest(txt, self.attn(_modulated(txt, prefix_mod[0]), block_causal(QWEN_SEGMENTS, to, put)),
                             prefix_mod)
        prefix_k, prefix_v = self.cache.take(self.index)
        out = self.attn(_modulated(img, target_mod[0]), prefix_cached(prefix_k, prefix_v, to))
        return txt, self._rest(img, out, target_mod)

    def _rest(self, x, attention_out, mod):
        x = x + mod[1] * attention_out
        return x + mod[3] * self.mlp(_modulated(x, mod[2]))


@functools.cache
def _qwen21_subclass():
    """A subclass of Qwen-Image's diffusion model class: the pack gives it the Qwen-Image record without
    prefix sharing, the record proposed for 2.1 (own attention ``attn``, prefix=False)."""
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    return type("QwenImage21Emulated", (QwenImageTransformer2DModel,), {"__module__": __name__})


@functools.cache
def _unrelated_class(module, name):
    """A diffusion-model class ``module.name`` that is no subclass of a listed class (as the real
    ``QwenImage21Transformer2DModel(nn.Module)``), running Qwen-Image's forward."""
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    methods = {k: v for k, v in vars(QwenImageTransformer2DModel).items() if k not in ("__init__", "__dict__",
                                                                                       "__weakref__")}
    return type(name, (torch.nn.Module,), {**methods, "__module__": module, "__qualname__": name})


def qwen_image21(cached=True, cls="subclass"):
    """The tiny Qwen-Image with every block a 2.1 stand-in sharing one prefix cache (``cached``: the cache
    on). ``cls``: "subclass" (:func:`_qwen21_subclass`), "qwen_image" (Qwen-Image's own class, prefix
    sharing on), "real name" (2.1's module and class name, no subclass of a listed class)."""
    model = tiny_dits.qwen_image()
    dm = model.model.diffusion_model
    cache = PrefixCache(len(dm.transformer_blocks), enabled=cached)
    for i in range(len(dm.transformer_blocks)):
        block = PrefixBlock(i, dim=64, heads=4, cache=cache)
        tiny_models._init_weights(block, 20 + i)
        dm.transformer_blocks[i] = block
    dm.register_forward_pre_hook(cache.begin, with_kwargs=True)
    if cls == "subclass":
        dm.__class__ = _qwen21_subclass()
    elif cls == "real name":
        dm.__class__ = _unrelated_class("comfy.ldm.qwen_image21.model", "QwenImage21Transformer2DModel")
    return model, cache


def _qwen_sample(host, model, cache, cfg=4.0, steps=STEPS):
    cache.reset()
    pos, neg = tiny_dits.conditioning("qwen_image")
    (out,) = host.nodes.KSampler().sample(model, 1, steps, cfg, "euler", "normal", pos, neg,
                                          tiny_dits.latent("qwen_image"), denoise=1.0)
    return out["samples"]


def _expected_qwen_calls(cached, steps=STEPS):
    """Per evaluation in the chosen block: uncached, every segment's call; cached, the target's call, after
    the fill pass of the first step (which runs the prefix segments' calls in the block too)."""
    if cached:
        return PREFIX_CALLS + [TARGET_CALL] * steps
    return (PREFIX_CALLS + [TARGET_CALL]) * steps


def test_qwen_image21_attention_module_is_the_records_own_attention(host):
    """The Qwen-Image record names ``attn`` as the block's own attention: the name 2.1's block gives its
    attention module. The real 2.1 diffusion model class is not a Qwen-Image subclass, so it needs a record
    of its own (proposed in /work/notes/requests.md); the emulated subclass gets the Qwen-Image record
    without prefix sharing, which is what that record proposes."""
    families = host.internal("nodes.families")
    qwen = families.family_of(tiny_dits.qwen_image().model.diffusion_model)
    model, _ = qwen_image21()
    dm = model.model.diffusion_model
    record = families.family_of(dm)
    assert qwen.own == ("attn",) and qwen.prefix
    assert record.own == qwen.own and record.stacks == qwen.stacks and not record.prefix
    block = dm.transformer_blocks[1]
    assert [getattr(block, path) for path in record.own] == [block.attn]
    layer = host.internal("nodes.plan").resolve(model, "auto")
    assert [lay.patch_key for lay in layer] == [QWEN_CHOSEN]


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
def test_qwen_image21_plan_covers_each_call_of_the_own_attention(host, cached, sinkhorn_calls):
    """Cached: the target image's 16 queries against the 7 cached prefix keys + the 16 target keys, one call
    per evaluation (the first step's fill pass also runs the prefix segments through the block). Uncached:
    each call made inside the block's own attention module gets the rectangular plan of its queries
    against its keys (the text segments under their causal bool masks, the reference segment, the
    target); the plan's marginals are uniform over each call's queries and keys. Only block 1, only the
    adversarial row; the fast path and the separate pass give the same sample."""
    model, cache = qwen_image21(cached)
    plain = _qwen_sample(host, model, cache)
    assert cache.modes == (["fill", "cached"] if cached else ["uncached"] * STEPS)
    out = {}
    for path in sampling.PATHS:
        sinkhorn_calls.clear()
        out[path] = _qwen_sample(host, sampling.asag_on(host, model, path), cache)
        assert _calls(sinkhorn_calls) == _expected_qwen_calls(cached), (path, _calls(sinkhorn_calls))
        assert _layers(sinkhorn_calls) == {QWEN_CHOSEN} and {c.rows for c in sinkhorn_calls} == {1}
    assert_relative(out["fast"], out["separate"], 1e-5)
    assert not torch.allclose(out["fast"], plain, atol=1e-3), "ASAG changed nothing"


def test_qwen_image21_emulated_cache_is_exact(host):
    """The emulation's premise: the prefix never sees the target, so the cached path gives the uncached
    path's sample, with ASAG's fast path (its batch [cond, uncond, adversarial] keys a slot of its own) too."""
    out = {}
    for cached in (True, False):
        model, cache = qwen_image21(cached)
        asag = sampling.asag_on(host, model, "fast")
        out[cached] = (_qwen_sample(host, model, cache), _qwen_sample(host, asag, cache))
    for cached_sample, uncached_sample in zip(out[True], out[False], strict=True):
        assert_relative(cached_sample, uncached_sample, 1e-5)


def test_qwen_image21_cached_path_needs_a_record_without_prefix_sharing(host):
    """2.1 hands each block its cached prefix K/V inside the attention closure, sized for the model call's
    batch. Prefix sharing (the Qwen-Image record's prefix=True) hands the blocks before the chosen one only
    the rows that are not shared copies, so a cached step's closure and the block's rows disagree."""
    model, cache = qwen_image21(cached=True, cls="qwen_image")
    assert host.internal("nodes.families").family_of(model.model.diffusion_model).prefix
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        _qwen_sample(host, sampling.asag_on(host, model, "fast"), cache)
    uncached, cache = qwen_image21(cached=False, cls="qwen_image")  # no closure-held K/V: sharing is exact
    fast = _qwen_sample(host, sampling.asag_on(host, uncached, "fast"), cache)
    assert_relative(fast, _qwen_sample(host, sampling.asag_on(host, uncached, "separate"), cache), 1e-5)


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
def test_qwen_image21_real_class_gets_its_record(host, cached, sinkhorn_calls):
    """The real 2.1 class (comfy.ldm.qwen_image21.model.QwenImage21Transformer2DModel) is no subclass of a
    listed class: it has a record of its own. Without it, the generic rule would take the target's call
    (fewer queries than keys) for cross-attention. With it, every call of the own attention gets the plan."""
    model, cache = qwen_image21(cached, cls="real name")
    record = host.internal("nodes.families").family_of(model.model.diffusion_model)
    assert record.name == "Qwen-Image 2.1" and not record.prefix
    _qwen_sample(host, sampling.asag_on(host, model, "fast"), cache)
    assert _calls(sinkhorn_calls) == _expected_qwen_calls(cached)


def _adversarial_calls_uncached(host, model):
    """The proposed pack change, emulated outside the pack: a model call with adversarial rows asks 2.1 for
    no prefix cache (``qwen_image21_cache`` device "off"), through a model function wrapper (which sees the
    pack's row tags)."""
    tags = host.internal("nodes.row_split").ADVERSARIAL_ROWS
    wrapped = model.clone()

    def uncached_adversarial_calls(apply_model, args):
        c = args["c"]
        to = c.get("transformer_options", {})
        if any(tag is not None for tag in to.get(tags, [])):
            c = {**c, "transformer_options": {**to, "qwen_image21_cache": {"device": "off"}}}
        return apply_model(args["input"], args["timestep"], **c)

    wrapped.set_model_unet_function_wrapper(uncached_adversarial_calls)
    return wrapped


def test_qwen_image21_cache_slot_shared_by_cond_and_adversarial_calls(host, sinkhorn_calls):
    """At cfg 1 the separate pass's adversarial call has the same per-row key as the conditional call before
    it, so it reads the conditional row's cached prefix: the prefix segments never get the plan, and the
    sample differs from the uncached path (the fast path's [cond, adversarial] batch keys a slot of its own
    and gives the uncached path's sample). Turning the cache off for calls with adversarial rows (the
    proposed change) gives the uncached path's sample on the separate pass too."""
    reference_model, reference_cache = qwen_image21(cached=False)
    reference = _qwen_sample(host, sampling.asag_on(host, reference_model, "fast"), reference_cache, cfg=1.0)
    model, cache = qwen_image21(cached=True)
    sinkhorn_calls.clear()
    fast = _qwen_sample(host, sampling.asag_on(host, model, "fast"), cache, cfg=1.0)
    assert _calls(sinkhorn_calls) == _expected_qwen_calls(True) and cache.modes == ["fill", "cached"]
    assert_relative(fast, reference, 1e-5)

    sinkhorn_calls.clear()
    shared = _qwen_sample(host, sampling.asag_on(host, model, "separate"), cache, cfg=1.0)
    assert cache.modes == ["fill", "cached", "cached", "cached"], "the adversarial call found the cond's slot"
    assert _calls(sinkhorn_calls) == [TARGET_CALL] * STEPS
    assert (shared - reference).abs().max() > 1e-3 * reference.abs().max()

    sinkhorn_calls.clear()
    proposal = _qwen_sample(host, sampling.asag_on(host, _adversarial_calls_uncached(host, model), "separate"),
                            cache, cfg=1.0)
    assert cache.modes == ["fill", "uncached", "cached", "uncached"]
    assert _calls(sinkhorn_calls) == _expected_qwen_calls(False)
    assert_relative(proposal, reference, 1e-5)

    # the pack's own change: the Qwen Image 2.1 record's alone_options turn the cache off for a call that
    # holds adversarial rows only
    named, named_cache = qwen_image21(cached=True, cls="real name")
    sinkhorn_calls.clear()
    by_record = _qwen_sample(host, sampling.asag_on(host, named, "separate"), named_cache, cfg=1.0)
    assert named_cache.modes == ["fill", "uncached", "cached", "uncached"]
    assert _calls(sinkhorn_calls) == _expected_qwen_calls(False)
    assert_relative(by_record, reference, 1e-5)


def _cond_only_probe(model, seen):
    """A post-CFG function (after ASAG's) that evaluates cond alone, as another guidance node's extra pass
    does, and records how far its prediction is from the step's conditional prediction."""
    import comfy.samplers

    def probe(args):
        (alone,) = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                                  args["model_options"])
        seen.append(float((alone - args["cond_denoised"]).abs().max() / args["cond_denoised"].abs().max()))
        return args["denoised"]

    probed = model.clone()
    probed.set_model_sampler_post_cfg_function(probe)
    return probed


def test_qwen_image21_cond_only_pass_reads_the_adversarial_slot(host):
    """At cfg 4 the separate pass's adversarial call (one row) fills a slot under the conditional row's key;
    a later cond-only pass of another node (one row, the same key) reads the adversarial row's prefix and
    no longer predicts what cond predicts. Without ASAG, and with the cache off for calls with adversarial
    rows (the proposed change), the cond-only pass predicts the step's conditional prediction."""
    model, cache = qwen_image21(cached=True)
    named, named_cache = qwen_image21(cached=True, cls="real name")
    drift = {}
    for name, patched, its_cache in (
            ("plain", model, cache), ("asag", sampling.asag_on(host, model, "separate"), cache),
            ("proposal", sampling.asag_on(host, _adversarial_calls_uncached(host, model), "separate"), cache),
            ("record", sampling.asag_on(host, named, "separate"), named_cache)):
        seen = []
        _qwen_sample(host, _cond_only_probe(patched, seen), its_cache)
        drift[name] = max(seen)
    assert drift["plain"] < 1e-5 and drift["proposal"] < 1e-5 and drift["record"] < 1e-5, drift
    assert drift["asag"] > 1e-3, drift


# =============================================================================================
# LTX 2.5 native STG (LTXVSpatioTemporalGuidance, stg_self_attn_blocks) beside ASAG
# =============================================================================================

STG_KEY, STG_FLAG = "stg_self_attn_blocks", "stg_skip_self_attn"
LTX_VIDEO_TOKENS = 32  # tiny_dits.LATENT["ltxv"]: 2 frames x 4 x 4, patch 1
LTX_AUDIO_TOKENS = 5
LTX_CHOSEN = ("double_block", 1)  # ASAG's auto layer of the 3-block tiny LTXV, and the block STG perturbs here


def stg_block_loop(diffusion_model):
    """LTX-2's block loop (av_model.py 0a29dda ``_process_transformer_blocks``): a block whose index is in
    ``transformer_options["stg_self_attn_blocks"]`` gets the options with ``stg_skip_self_attn`` set."""
    for i, block in enumerate(diffusion_model.transformer_blocks):
        def flag(module, args, kwargs, i=i):
            to = kwargs.get("transformer_options", {})
            if i in to.get(STG_KEY, ()):
                return args, {**kwargs, "transformer_options": {**to, STG_FLAG: True}}
            return None

        block.register_forward_pre_hook(flag, with_kwargs=True)


def stg_self_attention(attention, record, where):
    """LTX's CrossAttention with the newest STG branch (lightricks/model.py e3fe2188): a self-attention
    (no context) of a flagged block outputs its value projection (through the per-head gate where the module
    has one, then ``to_out``) and makes no attention call. ``record`` gets (where, "skipped"/"attended",
    rows) per self-attention call."""
    real = attention.forward

    def forward(x, context=None, **kwargs):
        to = kwargs.get("transformer_options", {})
        if context is not None:
            return real(x, context=context, **kwargs)
        if not to.get(STG_FLAG, False):
            record.append((where, "attended", x.shape[0]))
            return real(x, **kwargs)
        record.append((where, "skipped", x.shape[0]))
        out = attention.to_v(x)
        gate = getattr(attention, "to_gate_logits", None)
        if gate is not None:
            b, t, _ = out.shape
            out = (out.view(b, t, attention.heads, -1) * 2.0 * torch.sigmoid(gate(x)).unsqueeze(-1)).view(b, t, -1)
        return attention.to_out(out)

    attention.forward = forward


def stg_node(model, blocks, scale):
    """LTXVSpatioTemporalGuidance (nodes_lt.py b2f605a6) at its default window: a post-CFG function that
    evaluates cond alone with the blocks flagged and adds ``scale * (cond - perturbed)``."""
    import comfy.samplers

    def stg_post_cfg(args):
        options = dict(args["model_options"])
        options["transformer_options"] = {**options.get("transformer_options", {}), STG_KEY: frozenset(blocks)}
        (perturbed,) = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                                      options)
        return args["denoised"] + (args["cond_denoised"] - perturbed) * scale

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(stg_post_cfg)
    return patched


def _ltx_with_stg(block, record):
    """The tiny LTXV ("ltxv") or the one with the LTX-2 audio-video stand-in block 1 ("ltx2"), with LTX-2's
    STG loop and self-attention branch."""
    model = tiny_dits.ltxv() if block == "ltxv" else ltx2_standin(LTX_AUDIO_TOKENS)
    dm = model.model.diffusion_model
    stg_block_loop(dm)
    for i, blk in enumerate(dm.transformer_blocks):
        for name in ("attn1", "audio_attn1"):
            if hasattr(blk, name):
                stg_self_attention(getattr(blk, name), record, (i, name))
    return model


def _ltx_one_step(host, model):
    pos, neg = tiny_dits.conditioning("ltxv")
    (out,) = host.nodes.KSampler().sample(model, 1, 1, 4.0, "euler", "normal", pos, neg, tiny_dits.latent("ltxv"),
                                          denoise=1.0)
    return out["samples"]


@pytest.mark.parametrize("path", sampling.PATHS)
@pytest.mark.parametrize("block", ["ltxv", "ltx2"])
def test_stg_beside_asag_on_the_same_block(host, block, path, sinkhorn_calls):
    """STG on block 1 and ASAG on block 1: both guidances apply and, with one Euler step, their effects add
    up. STG's cond-only pass skips block 1's self-attention (no attention call, so ASAG's override never sees
    it); ASAG's adversarial row still gets the plan in its own call (the batched call on the fast path, its
    own pass on the separate one): video self-attention, and audio self-attention in the LTX-2 block."""
    record = []
    model = _ltx_with_stg(block, record)
    with_stg = stg_node(model, {LTX_CHOSEN[1]}, 2.0)
    plain = _ltx_one_step(host, model)
    effect_stg = _ltx_one_step(host, with_stg) - plain
    effect_asag = _ltx_one_step(host, sampling.asag_on(host, model, path)) - plain
    record.clear()
    sinkhorn_calls.clear()
    effect_both = _ltx_one_step(host, sampling.asag_on(host, with_stg, path)) - plain
    assert effect_stg.abs().max() > 1e-3 and effect_asag.abs().max() > 1e-3
    torch.testing.assert_close(effect_both, effect_stg + effect_asag, rtol=1e-4,
                               atol=1e-4 * float(effect_both.abs().max()))
    names = ("attn1",) if block == "ltxv" else ("attn1", "audio_attn1")
    # fast: the batched [cond, uncond, adversarial] call attends, then STG's cond-only pass skips; separate:
    # [cond, uncond] attend, STG's pass skips, then ASAG's adversarial pass attends (post-CFG functions run in
    # the order the nodes were applied: STG's first)
    expected = {"fast": [("attended", 3), ("skipped", 1)],
                "separate": [("attended", 2), ("skipped", 1), ("attended", 1)]}[path]
    for name in names:
        seen = [(what, rows) for where, what, rows in record if where == (LTX_CHOSEN[1], name)]
        assert seen == expected, (name, seen)
    assert sorted(_calls(sinkhorn_calls)) == sorted(
        [(LTX_VIDEO_TOKENS, LTX_VIDEO_TOKENS)] + ([(LTX_AUDIO_TOKENS, LTX_AUDIO_TOKENS)] if block == "ltx2" else []))
    assert _layers(sinkhorn_calls) == {LTX_CHOSEN} and {c.rows for c in sinkhorn_calls} == {1}


# =============================================================================================
# MiniMax H3: a packed sequence with no batch dimension, batches of one row, attention containers
# =============================================================================================

H3_TOKENS = 7 + QWEN_TARGET  # the tiny conditioning's text tokens + one latent frame of 4 x 4 patches
DIT_CHOSEN = ("double_block", 1)  # the generic record's auto layer: the middle of 3 blocks


class AttentionTensors:
    """Stand-in for the newest ``AttentionTensorContainer``: a tensor handed over once (``take``)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def take(self):
        tensor, self.tensor = self.tensor, None
        return tensor


def newest_attention(q, k, v, heads, transformer_options, record, **kwargs):
    """``optimized_attention`` of containers as the newest ``wrap_attn`` runs it (attention.py 05080f60): an
    override with a ``container_function`` attribute gets the containers; any other override (and the
    backend) gets the tensors unwrapped. The hosts' own ``wrap_attn`` then calls the override."""
    override = transformer_options.get("optimized_attention_override")
    if override is not None:
        record.append(hasattr(override, "container_function"))
        if hasattr(override, "container_function"):
            return override.container_function(q, k, v, heads, transformer_options=transformer_options, **kwargs)
    return _attention(q.take(), k.take(), v.take(), heads, transformer_options, **kwargs)


class PackedAttention(torch.nn.Module):
    """H3's ``Attention``: one fused projection over the packed (S, D) sequence, q/k/v as containers of
    (1, H, S, D), ``skip_reshape``."""

    def __init__(self, dim, heads, record):
        super().__init__()
        self.heads, self.record = heads, record
        self.qkv_proj, self.out_proj = _linear(dim, 3 * dim), _linear(dim, dim)

    def forward(self, x, transformer_options={}):
        s = x.shape[0]
        q, k, v = self.qkv_proj(x).view(s, 3, self.heads, -1).unbind(1)
        q, k, v = (AttentionTensors(t.transpose(0, 1).unsqueeze(0)) for t in (_rms(q), _rms(k), v))
        out = newest_attention(q, k, v, self.heads, transformer_options, self.record, mask=None, skip_reshape=True)
        return self.out_proj(out.squeeze(0))


class PackedBlock(torch.nn.Module):
    """H3's ``DiTBlock``: its own modulation from the time embedding rows (not indexed by batch rows)."""

    def __init__(self, dim, heads, record):
        super().__init__()
        self.attn = PackedAttention(dim, heads, record)
        self.adaln_proj = _linear(dim, 6 * dim, bias=True)
        self.mlp = torch.nn.Sequential(_linear(dim, 2 * dim), torch.nn.GELU(approximate="tanh"), _linear(2 * dim, dim))

    def forward(self, x, t_emb, transformer_options={}):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln_proj(torch.nn.functional.silu(t_emb)).chunk(6, -1)
        x = x + gate1 * self.attn(_rms(x) * (1 + scale1) + shift1, transformer_options=transformer_options)
        return x + gate2 * self.mlp(_rms(x) * (1 + scale2) + shift2)


class PackedDiT(torch.nn.Module):
    """H3's ``MiniMaxH3Model`` in miniature: [text | target video] packed into one (S, D) sequence of the
    single latent row; more than one row raises as H3's ``_forward`` does. :attr:`batches` lists the rows
    of each call, :attr:`record` whether each override seen had a ``container_function``."""

    def __init__(self, channels=16, dim=64, heads=4, depth=3):
        super().__init__()
        self.dtype = torch.float32
        self.batches, self.record = [], []
        self.video_in, self.video_out = _linear(channels * 4, dim, True), _linear(dim, channels * 4, True)
        self.text_in, self.time_in = _linear(tiny_dits.CONTEXT, dim, True), _linear(32, dim, True)
        self.blocks = torch.nn.ModuleList([PackedBlock(dim, heads, self.record) for _ in range(depth)])

    def forward(self, x, timestep, context, transformer_options={}, minimax_payload=None, **kwargs):
        from comfy.ldm.flux.layers import timestep_embedding

        self.batches.append(x.shape[0])
        if x.shape[0] != 1:
            raise ValueError("MiniMax H3 supports batch size 1")
        _, c, t, h, w = x.shape
        video = x[0].reshape(c, t, h // 2, 2, w // 2, 2).permute(1, 2, 4, 0, 3, 5).reshape(-1, c * 4)
        text = self.text_in(context[0])
        seq = torch.cat([text, self.video_in(video)])
        transformer_options["minimax_h3_layout"] = minimax_payload["layout"]
        t_emb = self.time_in(timestep_embedding(timestep, 32).to(seq))
        for i, block in enumerate(self.blocks):
            transformer_options["block_index"] = i
            seq = block(seq, t_emb, transformer_options=transformer_options)
        rows = self.video_out(seq[text.shape[0]:])
        return rows.view(t, h // 2, w // 2, c, 2, 2).permute(3, 0, 1, 4, 2, 5).reshape(1, c, t, h, w)


class PackedLayout:
    """One cond's packed layout (H3's ``PackedLayout``): built per cond, compared by identity."""


def minimax_h3(named=True):
    """The tiny Qwen-Image's BaseModel (a flow model on 5-D latents, one frame here) running :class:`PackedDiT`,
    with H3's per-cond ``CONDConstant`` payload (model_base.MiniMaxH3.extra_conds). ``named``: the diffusion
    model's class is H3's (comfy.ldm.minimax.model.MiniMaxH3Model), which the pack's records list; else a
    class no record lists."""
    import comfy.conds

    model = tiny_dits.qwen_image()
    dm = PackedDiT()
    if named:
        dm.__class__ = type("MiniMaxH3Model", (PackedDiT,), {"__module__": "comfy.ldm.minimax.model"})
    tiny_models._init_weights(dm, 30)
    base = model.model
    base.diffusion_model = dm
    real = base.extra_conds

    def extra_conds(**kwargs):
        out = real(**kwargs)
        out["minimax_payload"] = comfy.conds.CONDConstant(kwargs["minimax_payload"])
        return out

    base.extra_conds = extra_conds
    return model


def _minimax_sample(host, model, cfg=4.0):
    pos, neg = tiny_dits.conditioning("qwen_image")
    for cond in (pos, neg):
        cond[0][1]["minimax_payload"] = {"layout": PackedLayout(), "seed": 0}
    (out,) = host.nodes.KSampler().sample(model, 1, STEPS, cfg, "euler", "normal", pos, neg,
                                          tiny_dits.latent("qwen_image"), denoise=1.0)
    return out["samples"]


@pytest.mark.parametrize("named", [True, False], ids=["h3-record", "unknown-class"])
@pytest.mark.parametrize("cfg", [4.0, 1.0])
def test_minimax_h3_batch_of_one(host, cfg, named, sinkhorn_calls):
    """H3 refuses batches of more than one row. ComfyUI batches conds whose ``CONDConstant`` payloads are
    equal: cond and uncond (payloads of their own) run one row each, but the adversarial copy shares its
    cond's payload. The H3 record (``batch_of_one``) gives the copy a call of its own on the fast path too;
    a class no record lists gets the batch, and H3 raises. The copy's own call works: the record (or the
    generic rule) reaches the packed joint attention (text + video, 23 queries and keys, one row), its
    override has no ``container_function`` (so the newest wrap_attn hands it plain tensors), only in block 1."""
    model = minimax_h3(named)
    dm = model.model.diffusion_model
    plain = _minimax_sample(host, model, cfg)
    per_step = [1, 1] if cfg != 1.0 else [1]
    assert dm.batches == per_step * STEPS and dm.record == []
    dm.batches.clear()
    if named:
        sinkhorn_calls.clear()
        fast = _minimax_sample(host, sampling.asag_on(host, model, "fast"), cfg)
        assert dm.batches == (per_step + [1]) * STEPS, "the copy in a call of its own"
        assert _calls(sinkhorn_calls) == [(H3_TOKENS, H3_TOKENS)] * STEPS
    else:
        with pytest.raises(ValueError, match="supports batch size 1"):
            _minimax_sample(host, sampling.asag_on(host, model, "fast"), cfg)
        assert dm.batches == [2], "cond and its adversarial copy in one call"
    dm.batches.clear()
    sinkhorn_calls.clear()
    guided = _minimax_sample(host, sampling.asag_on(host, model, "separate"), cfg)
    assert dm.batches == (per_step + [1]) * STEPS
    assert _calls(sinkhorn_calls) == [(H3_TOKENS, H3_TOKENS)] * STEPS
    assert _layers(sinkhorn_calls) == {DIT_CHOSEN} and {c.rows for c in sinkhorn_calls} == {1}
    assert dm.record and not any(dm.record), "an override with a container_function would get the containers"
    assert not torch.allclose(guided, plain, atol=1e-3), "ASAG changed nothing"
    if named:
        assert_relative(fast, guided, 1e-5)


# =============================================================================================
# Krea 2: joint single-stream blocks, GQA, a gated output, no block_index
# =============================================================================================

KREA_TOKENS = 7 + QWEN_TARGET  # the tiny conditioning's text tokens + an 8x8 latent in 2x2 patches
KREA_TEXT_LAYERS = 2  # the tiny context (64 wide) read as 2 text-encoder layers of 32


class GatedGQAAttention(torch.nn.Module):
    """Krea 2's ``Attention``: fewer K/V heads expanded with repeat_interleave before the call, (B, H, L, D)
    with skip_reshape through ``optimized_attention_masked``, the output gated by a sigmoid."""

    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        kv = dim // heads * kv_heads
        self.wq, self.wk, self.wv = _linear(dim, dim), _linear(dim, kv), _linear(dim, kv)
        self.gate, self.wo = _linear(dim, dim), _linear(dim, dim)

    def forward(self, x, freqs=None, mask=None, transformer_options={}):
        import comfy.ldm.modules.attention as attention
        from comfy.ldm.flux.math import apply_rope

        b, n, _ = x.shape
        q = _rms(self.wq(x).view(b, n, self.heads, -1).transpose(1, 2))
        k = _rms(self.wk(x).view(b, n, self.kv_heads, -1).transpose(1, 2))
        v = self.wv(x).view(b, n, self.kv_heads, -1).transpose(1, 2)
        if freqs is not None:
            q, k = apply_rope(q, k, freqs)
        k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        out = attention.optimized_attention_masked(q, k, v, self.heads, mask=mask, skip_reshape=True,
                                                   transformer_options=transformer_options)
        return self.wo(out * torch.sigmoid(self.gate(x)))


class GatedBlock(torch.nn.Module):
    """Krea 2's ``SingleStreamBlock`` (and, without modulation, its text-fusion block)."""

    def __init__(self, dim, heads, kv_heads, modulated=True):
        super().__init__()
        self.mod = torch.nn.Parameter(torch.empty(6 * dim)) if modulated else None
        self.attn = GatedGQAAttention(dim, heads, kv_heads)
        self.mlp = torch.nn.Sequential(_linear(dim, 2 * dim), torch.nn.GELU(approximate="tanh"), _linear(2 * dim, dim))

    def forward(self, x, vec=None, freqs=None, mask=None, transformer_options={}):
        if self.mod is None:
            x = x + self.attn(_rms(x), mask=mask, transformer_options=transformer_options)
            return x + self.mlp(_rms(x))
        pre_scale, pre_shift, pre_gate, post_scale, post_shift, post_gate = (vec + self.mod.to(vec)).chunk(6, dim=-1)
        x = x + pre_gate * self.attn((1 + pre_scale) * _rms(x) + pre_shift, freqs, mask,
                                     transformer_options=transformer_options)
        return x + post_gate * self.mlp((1 + post_scale) * _rms(x) + post_shift)


class JointSingleStreamDiT(torch.nn.Module):
    """Krea 2's ``SingleStreamDiT`` in miniature: the text-fusion blocks attend over each text token's
    encoder layers (a batch of B x text-tokens rows), then [text | image] runs through ``blocks`` with 3-axis
    RoPE; no block_index, no block replace patches. A 5-D latent of one frame is folded to 4-D."""

    def __init__(self, channels=16, dim=64, heads=4, kv_heads=2, depth=3, text_dim=32):
        super().__init__()
        from comfy.ldm.flux.layers import EmbedND

        self.dtype = torch.float32
        self.pe_embedder = EmbedND(dim=dim // heads, theta=1000, axes_dim=[4, 6, 6])
        self.first, self.last = _linear(channels * 4, dim, True), _linear(dim, channels * 4, True)
        self.tmlp = torch.nn.Sequential(_linear(32, dim, True), torch.nn.GELU(approximate="tanh"),
                                        _linear(dim, dim, True))
        self.tproj = _linear(dim, 6 * dim, True)
        self.layerwise_blocks = torch.nn.ModuleList([GatedBlock(text_dim, 2, 2, modulated=False) for _ in range(2)])
        self.projector = _linear(KREA_TEXT_LAYERS, 1)
        self.txtmlp = _linear(text_dim, dim, True)
        self.blocks = torch.nn.ModuleList([GatedBlock(dim, heads, kv_heads) for _ in range(depth)])

    def _text(self, context, to):
        b, n, _ = context.shape
        x = context.reshape(b * n, KREA_TEXT_LAYERS, -1)  # each text token's layers form a sequence
        for block in self.layerwise_blocks:
            x = block(x, transformer_options=to)
        return self.txtmlp(self.projector(x.transpose(1, 2)).squeeze(-1).reshape(b, n, -1))

    def forward(self, x, timestep, context, transformer_options={}, **kwargs):
        from comfy.ldm.flux.layers import timestep_embedding

        video = x.ndim == 5
        if video:
            x = x.reshape(x.shape[0] * x.shape[2], x.shape[1], *x.shape[3:])  # (B, C, 1, H, W): T = 1 only
        b, c, h, w = x.shape
        img = self.first(x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4))
        t = self.tmlp(timestep_embedding(timestep, 32).unsqueeze(1).to(img))
        txt = self._text(context, transformer_options)
        ids = torch.zeros(b, txt.shape[1] + img.shape[1], 3)
        grid = torch.stack(torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij"), -1).flatten(0, 1)
        ids[:, txt.shape[1]:, 1:] = grid.float()
        freqs = self.pe_embedder(ids.to(img))
        seq = torch.cat([txt, img], dim=1)
        vec = self.tproj(torch.nn.functional.gelu(t, approximate="tanh"))
        for block in self.blocks:
            seq = block(seq, vec, freqs, None, transformer_options=transformer_options)
        out = self.last(_rms(seq[:, txt.shape[1]:]))
        out = out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return out.unsqueeze(2) if video else out


def krea2():
    """The tiny Qwen-Image's BaseModel (a flow model on 5-D single-frame latents) running
    :class:`JointSingleStreamDiT`."""
    model = tiny_dits.qwen_image()
    dm = JointSingleStreamDiT()
    tiny_models._init_weights(dm, 40)
    model.model.diffusion_model = dm
    return model


def _krea_sample(host, model):
    pos, neg = tiny_dits.conditioning("qwen_image")
    (out,) = host.nodes.KSampler().sample(model, 1, STEPS, 4.0, "euler", "normal", pos, neg,
                                          tiny_dits.latent("qwen_image"), denoise=1.0)
    return out["samples"]


def test_krea2_joint_single_stream_through_the_generic_record(host, sinkhorn_calls):
    """No record lists Krea 2: the generic record finds ``blocks`` and takes the joint attention of block 1
    (23 text + image queries against the same 23 keys) as the block's own, without block_index; the
    text-fusion attention (7 rows per cond over 2 encoder layers) and the other blocks never get the plan.
    The fast path and the separate pass give the same sample."""
    model = krea2()
    families = host.internal("nodes.families")
    assert families.family_of(model.model.diffusion_model) is families.GENERIC
    plain = _krea_sample(host, model)
    out = {}
    for path in sampling.PATHS:
        sinkhorn_calls.clear()
        out[path] = _krea_sample(host, sampling.asag_on(host, model, path))
        assert _calls(sinkhorn_calls) == [(KREA_TOKENS, KREA_TOKENS)] * STEPS, (path, _calls(sinkhorn_calls))
        assert _layers(sinkhorn_calls) == {DIT_CHOSEN} and {c.rows for c in sinkhorn_calls} == {1}
    assert_relative(out["fast"], out["separate"], 1e-5)
    assert not torch.allclose(out["fast"], plain, atol=1e-3), "ASAG changed nothing"
