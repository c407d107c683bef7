"""Newer ComfyUI attention, emulated on 0.3.64 (see test_comfy_drift.py for the other emulations).

* LTX-2's audio-video block (comfy/ldm/lightricks/av_model.py 0a29dda): six attention modules
  of ComfyUI's LTXV CrossAttention class, named attn1 (video self-attention), audio_attn1 (audio
  self-attention), attn2 and audio_attn2 (text cross-attention), audio_to_video_attn and
  video_to_audio_attn (cross-modal). A stand-in block with those names and call patterns replaces
  one block of the tiny LTXV: only the two self-attentions may get the plan, also when every token
  count is the same. The stand-in takes what each host's LTXV model passes to its blocks
  (comfy/ldm/lightricks/model.py ``_process_transformer_blocks``): 0.3.64 passes x, context,
  attention_mask, timestep, pe and transformer_options; 0.22 adds ``self_attention_mask`` (the
  video self-attention's mask, which the real LTX-2 block hands its attn1) and ``prompt_timestep``
  (the text cross-attention's AdaLN input, for models with ``cross_attention_adaln``; the tiny
  LTXV has none). 0.22 also has the real LTX-2 model (LTXAVModel); 0.3.64 has none, so the
  stand-in is what tests this on both hosts.
* ComfyUI's attention functions take ``scale=`` and ``enable_gqa=`` (comfy/ldm/modules/attention.py
  05080f60): the DiT override honours both for the adversarial rows and passes them on for the others.
"""

from __future__ import annotations

import sys

import pytest
import tiny_dits
import tiny_models
import torch
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2


def _rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def av_block(dim, heads, audio_tokens, seed=5):
    """A block with LTX-2's attention modules and call patterns; its audio stream is derived from
    the video tokens (one learned token sequence plus the video mean), so every row stays a row."""
    import comfy.ops
    from comfy.ldm.lightricks.model import CrossAttention

    ops = comfy.ops.disable_weight_init

    def attention(context_dim=None):
        return CrossAttention(dim, context_dim=context_dim, heads=heads, dim_head=dim // heads, operations=ops)

    class AVBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn1, self.audio_attn1 = attention(), attention()
            self.attn2, self.audio_attn2 = attention(dim), attention(dim)
            self.audio_to_video_attn, self.video_to_audio_attn = attention(dim), attention(dim)
            self.audio = torch.nn.Parameter(torch.empty(1, audio_tokens, dim))

        def forward(self, x, context=None, attention_mask=None, timestep=None, pe=None, transformer_options={},
                    self_attention_mask=None, prompt_timestep=None):
            to = transformer_options
            ax = self.audio.to(x) + x.mean(1, keepdim=True)
            vx = x + self.attn1(_rms(x), pe=pe, mask=self_attention_mask, transformer_options=to)
            vx = vx + self.attn2(_rms(vx), context=context, mask=attention_mask, transformer_options=to)
            ax = ax + self.audio_attn1(_rms(ax), transformer_options=to)
            ax = ax + self.audio_attn2(_rms(ax), context=context, mask=attention_mask, transformer_options=to)
            vx = vx + self.audio_to_video_attn(_rms(vx), context=_rms(ax), transformer_options=to)
            ax = ax + self.video_to_audio_attn(_rms(ax), context=_rms(vx), transformer_options=to)
            return vx + ax.mean(1, keepdim=True)

    block = AVBlock()
    tiny_models._init_weights(block, seed)
    return block


def ltx2_standin(audio_tokens):
    """Tiny LTXV whose middle block (b1, the auto layer) is the audio-video stand-in."""
    model = tiny_dits.ltxv()
    dm = model.model.diffusion_model
    dm.transformer_blocks[1] = av_block(dim=64, heads=4, audio_tokens=audio_tokens)
    return model


def _sample(host, model, tokens, seed=1):
    pos, neg = tiny_dits.conditioning("ltxv", tokens=tokens)
    (out,) = host.nodes.KSampler().sample(model, seed, STEPS, 4.0, "euler", "normal", pos, neg,
                                          tiny_dits.latent("ltxv"), denoise=1.0)
    return out["samples"]


VIDEO_TOKENS = 32  # tiny_dits.LATENT["ltxv"]: 2 frames x 4 x 4, patch 1


@pytest.mark.parametrize("audio_tokens,text_tokens", [(5, 7), (VIDEO_TOKENS, VIDEO_TOKENS)],
                         ids=["distinct-lengths", "every-length-equal"])
def test_only_the_block_own_token_attention_of_an_ltx2_block_gets_the_plan(host, audio_tokens, text_tokens,
                                                                          sinkhorn_calls):
    model = ltx2_standin(audio_tokens)
    base = _sample(host, model, text_tokens)
    patched = host.node("ASAG").execute(model, 1.5).result[0]
    guided = _sample(host, patched, text_tokens)
    assert not torch.allclose(guided, base, atol=1e-3), "ASAG changed nothing"
    # per evaluation: attn1 over the video tokens, audio_attn1 over the audio tokens; none of the
    # four cross-attentions (text, audio->video, video->audio)
    per_step = sorted([VIDEO_TOKENS, audio_tokens])
    assert sorted(tokens for _, _, tokens in sinkhorn_calls) == sorted(per_step * STEPS), sinkhorn_calls
    assert {layer.patch_key for layer, _, _ in sinkhorn_calls} == {("double_block", 1)}


# ---------------------------------------------------------------------------------------------
# scale= and GQA reaching the override
# ---------------------------------------------------------------------------------------------

def _pack(host, name):
    return sys.modules[f"{host.pack_module_name}.{name}"]


def _override_for(host, layer, settings, flags):
    """The DiT override of one adversarial call, and a model call of it running in ``layer``."""
    plan = _pack(host, "nodes.plan").ASAGPlan(settings, (layer,), _pack(host, "nodes.families").GENERIC, "test")
    calls = _pack(host, "nodes.adversarial_call")
    call = calls.AdversarialCall(plan, [], share_prefix=False)
    call.model_options({})  # the override is made for the call's options
    model_call = calls.ModelCall(call, flags)
    model_call.frames.append((layer, "block", None))  # inside the chosen block, as its hooks would say
    return call, model_call


def _sdpa_function(calls):
    """ComfyUI's attention signature over torch SDPA (B, H, N, D) with its scale and GQA kwargs."""
    def attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, scale=None,
                  enable_gqa=False, **kwargs):
        calls.append({"scale": scale, "enable_gqa": enable_gqa})
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                                enable_gqa=enable_gqa)

    return attention


def _flat(t):
    return t.transpose(1, 2).flatten(2)  # (B, H, N, D) -> (B, N, H*D), ComfyUI's default layout


@pytest.mark.parametrize("heads_layout", [True, False], ids=["skip_reshape", "flat"])
@pytest.mark.parametrize("flags", [[True], [True, False], [False]], ids=["adversarial", "mixed", "plain"])
def test_scale_and_gqa_reaching_the_override_are_honoured(host, flags, heads_layout):
    asag_core = _pack(host, "asag_core")
    layer = asag_core.DiTLayer("double", 0)
    # similarity cost, no iteration, lam 1: the plan is exactly softmax attention, so SDPA is the reference
    settings = asag_core.ASAGSettings(iterations=0, lam=1.0, cost="similarity")
    call, model_call = _override_for(host, layer, settings, flags)
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, tokens, dim = len(flags), 8, 2, 12, 16
    q = torch.randn(batch, heads, tokens, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, tokens, dim, generator=g) for _ in range(2))
    scale = 0.37
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    calls = []
    function = _sdpa_function(calls)
    if not heads_layout:
        q, k, v = (_flat(t) for t in (q, k, v))
        reference = _flat(reference)
        sdpa = function

        def function(q, k, v, heads, **kw):  # ComfyUI's flat layout: heads from q's inner size
            split = [t.view(t.shape[0], t.shape[1], -1, dim).transpose(1, 2) for t in (q, k, v)]
            return _flat(sdpa(*split, heads, **kw))
    with model_call.running():
        out = call.attention_override(function, q, k, v, heads, skip_reshape=heads_layout,
                                      skip_output_reshape=heads_layout, scale=scale, enable_gqa=True,
                                      transformer_options={})
    assert call.sinkhorn_calls == (1 if any(flags) else 0)
    assert calls == ([{"scale": scale, "enable_gqa": True}] if not all(flags) else [])
    assert_relative(out, reference, 1e-5)
