"""The tiny checkpoints (tests/tiny_checkpoints.py) in the real ComfyUI: every family's complete
tiny checkpoint loads through ComfyUI's loader with no missing or unexpected key, as the
supported_models class ComfyUI's detection picks, with the intended block stacks; the seed carries
every key detection reads; the hand values are each needed on this host; loads are deterministic."""

from __future__ import annotations

import pytest
import tiny_checkpoints as tc
import torch

pytestmark = pytest.mark.host

# family: (ComfyUI's config class, {stack: length}); "transformers": BasicTransformerBlocks in a U-Net
EXPECTED = {
    "sd15": ("SD15", {"input_blocks": 4, "middle_block": 3, "output_blocks": 4, "transformers": 7}),
    "sd15_inpaint": ("SD15", {"input_blocks": 4, "middle_block": 3, "output_blocks": 4, "transformers": 7}),
    "sd15_without_attention": ("SD15", {"input_blocks": 4, "middle_block": 1, "output_blocks": 4,
                                        "transformers": 0}),
    "sd20": ("SD20", {"input_blocks": 4, "middle_block": 3, "output_blocks": 4, "transformers": 7}),
    "sdxl": ("SDXL", {"input_blocks": 6, "middle_block": 3, "output_blocks": 6, "transformers": 11}),
    "sd3": ("SD3", {"joint_blocks": 3}),
    "flux": ("Flux", {"double_blocks": 3, "single_blocks": 4}),
    "chroma": ("Chroma", {"double_blocks": 2, "single_blocks": 2, "distilled_guidance_layer.layers": 1}),
    "auraflow": ("AuraFlow", {"double_layers": 2, "single_layers": 2}),
    "hunyuan_dit": ("HunyuanDiT", {"blocks": 4}),
    "lumina2": ("Lumina2", {"layers": 3, "noise_refiner": 1, "context_refiner": 1}),
    "qwen_image": ("QwenImage", {"transformer_blocks": 3}),
    "wan21": ("WAN21_T2V", {"blocks": 3}),
    "wan22": ("WAN22_T2V", {"blocks": 3}),
    "wan21_i2v": ("WAN21_I2V", {"blocks": 3}),
    "hunyuan_video": ("HunyuanVideo", {"double_blocks": 2, "single_blocks": 2}),
    "ltxv": ("LTXV", {"transformer_blocks": 3}),
    "mochi": ("GenmoMochi", {"blocks": 3}),
    "cosmos_predict2": ("CosmosT2IPredict2", {"blocks": 3}),
    "hidream": ("HiDream", {"double_stream_blocks": 2, "single_stream_blocks": 2}),
}
FAMILIES = sorted(tc.SEEDS)


def _seed(family, seed=0):
    return tc.seed_tensors(tc.SEEDS[family](), seed)


def _stack(diffusion_model, name):
    if name == "transformers":
        return sum(type(m).__name__ == "BasicTransformerBlock" for m in diffusion_model.modules())
    return len(diffusion_model.get_submodule(name))


def test_every_family_is_covered():
    assert set(EXPECTED) == set(tc.SEEDS)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_complete_checkpoint_loads_with_every_key_as_the_detected_class(host, family):
    hand = tc.hand_for(family)
    checkpoint = tc.complete_checkpoint(_seed(family), hand)
    model = tc.load_tiny(checkpoint, hand=hand).model
    config_class, stacks = EXPECTED[family]
    assert type(model.model_config).__name__ == config_class
    loaded = model.diffusion_model.state_dict()
    assert set(loaded) == set(checkpoint)
    for key, tensor in checkpoint.items():
        assert torch.equal(loaded[key], tensor.to(loaded[key].dtype)), key
    assert {name: _stack(model.diffusion_model, name) for name in stacks} == stacks


@pytest.mark.parametrize("family", FAMILIES)
def test_the_seed_carries_every_key_detection_reads(host, family):
    """The complete checkpoint detects as its seed does: the seed is the real layout, not a subset
    that happens to pass."""
    seed = _seed(family)
    assert tc.detect(tc.complete_checkpoint(seed, tc.hand_for(family))) == tc.detect(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyuis_matching_picks_the_class_or_none_where_a_hand_names_it(host, family):
    hand = tc.hand_for(family)
    matched = tc.detected_class(_seed(family))
    if hand is not None and hand.config_class is not None:
        assert matched is None, f"ComfyUI now matches {matched.__name__}: the hand class may be unneeded"
    else:
        assert matched is not None and matched.__name__ == EXPECTED[family][0]


@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if tc.hand_for(f) is not None))
def test_each_hand_changes_what_this_hosts_detection_gives(host, family):
    """A Hand that changed nothing on this ComfyUI would be a stale hand config."""
    hand = tc.hand_for(family)
    detected = tc.detect(_seed(family))
    differs = [k for k, v in hand.overrides.items() if detected.get(k, object()) != v]
    assert differs or hand.config_class is not None or hand.model_type is not None


def test_only_families_without_a_hand_take_comfyuis_whole_loader(host, monkeypatch):
    import comfy.sd

    calls = []
    real = comfy.sd.load_diffusion_model_state_dict
    monkeypatch.setattr(comfy.sd, "load_diffusion_model_state_dict", lambda *a, **k: calls.append(1) or real(*a, **k))
    pure = [f for f in FAMILIES if tc.hand_for(f) is None]
    assert pure, "no family loads through ComfyUI's detection alone"
    for family in pure:
        tc.build(family)
    assert len(calls) == len(pure)
    tc.build("flux")
    tc.build("sd3", dtype=torch.bfloat16)
    assert len(calls) == len(pure)


@pytest.mark.parametrize("family", ["sd15", "sd3", "flux", "wan21"])
def test_two_loads_are_equal_and_the_seed_matters(host, family):
    first, again, other = (tc.build(family, seed=s).model.diffusion_model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_half_dtype_model_computes_in_that_dtype_with_the_same_weights(host, family):
    full = tc.build(family).model
    half = tc.build(family, dtype=torch.bfloat16).model
    assert half.get_dtype() == torch.bfloat16 and half.manual_cast_dtype is None
    full_sd, half_sd = full.diffusion_model.state_dict(), half.diffusion_model.state_dict()
    for key, tensor in half_sd.items():
        assert torch.equal(tensor, full_sd[key].to(tensor.dtype)), key


def test_a_hand_made_config_gets_the_same_weights_as_its_checkpoint(host):
    """``from_model_config`` (the benchmarks' sized models) fills by key as ``load_tiny`` does."""
    seed, hand = _seed("flux"), tc.hand_for("flux")
    from_config = tc.from_model_config(tc.model_config(seed, hand)).model.diffusion_model.state_dict()
    from_checkpoint = tc.load_tiny(seed, hand=hand).model.diffusion_model.state_dict()
    assert set(from_config) == set(from_checkpoint)
    differ = [k for k in from_config if not torch.equal(from_config[k], from_checkpoint[k])]
    # the seed's own tensors were drawn under their checkpoint names (a host may rename them)
    assert set(differ) <= set(tc.model_config(seed, hand).process_unet_state_dict(dict(seed))) - set(seed)


def test_a_seed_key_of_another_shape_or_unknown_to_the_model_is_an_error(host):
    seed = _seed("sd3")
    wrong = dict(seed, **{"final_layer.linear.weight": torch.zeros(64, 191)})
    with pytest.raises(ValueError, match="final_layer.linear.weight"):
        tc.load_tiny(wrong)
    with pytest.raises(ValueError, match="not_a_layer.weight"):
        tc.load_tiny(dict(seed, **{"not_a_layer.weight": torch.zeros(3)}))


def test_metadata_reaches_detection_as_a_files_config_does(host, monkeypatch):
    """An LTXV file's safetensors metadata carries its transformer config, which LTXV detection
    reads: given the tiny widths there, no Hand is needed and the model equals the Hand-made one.
    0.22's loader takes the metadata itself; 0.3.64's takes none, so load_tiny runs its steps."""
    import functools
    import inspect
    import json

    import comfy.sd

    hand = tc.hand_for("ltxv")
    metadata = {"config": json.dumps({"transformer": hand.overrides})}
    seed = _seed("ltxv")
    assert tc.detect(seed, metadata).items() >= hand.overrides.items()
    calls = []
    real = comfy.sd.load_diffusion_model_state_dict

    @functools.wraps(real)  # keeps the signature load_tiny reads
    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sd, "load_diffusion_model_state_dict", recording)
    from_metadata = tc.load_tiny(seed, metadata=metadata).model
    takes_metadata = "metadata" in inspect.signature(real).parameters
    assert [k.get("metadata") for k in calls] == ([metadata] if takes_metadata else [])
    from_hand = tc.load_tiny(seed, hand=hand).model
    assert type(from_metadata.model_config) is type(from_hand.model_config)
    ours, theirs = from_metadata.diffusion_model.state_dict(), from_hand.diffusion_model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
