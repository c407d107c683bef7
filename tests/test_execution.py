"""This pack's nodes in ComfyUI's own execution engine: prompts validated by
``execution.validate_prompt`` and run by ``execution.PromptExecutor``, in process, as the
server's prompt worker runs them (main.prompt_worker).

The prompt's model, conditioning and output come from three test-only nodes registered for the
test (a checkpoint would need files and a text encoder); everything between them, our ASAG
nodes, EmptyLatentImage and KSampler, is the real thing. Checked: an error raised by our node
reaches the client as ComfyUI's ``execution_error`` for that node with our message; ComfyUI's
cache reuses our node's output when only an unrelated input (the KSampler seed) changes, and
the results are those of direct runs; two differently configured ASAG nodes on one model in one
graph do not affect each other.

The executor is built as each host's ``main.prompt_worker`` builds it (with ``--cache-classic``, the
cache these tests check). Where ComfyUI itself differs, each host's own behaviour is asserted:
0.22 validates the value of a V3 COMBO input against its options (``validate_inputs``), so a bad
``cost`` / ``rescale_mode`` is refused there before anything runs, with ComfyUI's error naming
the input and the valid values; 0.3.64 checks the values of V1 list inputs only, lets these
through, and the pack's own error reaches the client.
"""

import asyncio
import inspect
import math

import pytest
import sampling
import tiny_models
import torch
from small_runs import SIZE

pytestmark = pytest.mark.host

STEPS = 2


class _Server:
    """What PromptExecutor needs of ComfyUI's PromptServer: it records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class ComboProbe:
    """Test-only output node with an input declared as V3 COMBO inputs reach validation
    (``("COMBO", {"options": [...]})``): whether the host checks such values, found by asking
    its own ``validate_prompt``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pick": ("COMBO", {"options": ["one", "two"], "default": "one"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"
    CATEGORY = "testing"

    def keep(self, pick):
        return {}


class TinyModel:
    """Test-only loader node: a prepared tiny model by key."""

    models = {}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": "sd15"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, key):
        return (self.models[key],)


class TinyConditioning:
    """Test-only text-encoder stand-in: the tiny models' random conditioning."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": ("STRING", {"default": "sd15"})}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, family):
        return tiny_models.conditioning(family)


class LatentSink:
    """Test-only output node: keeps the sampled latents by tag."""

    received = {}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"
    CATEGORY = "testing"

    def keep(self, samples, tag):
        self.received[tag] = samples["samples"].clone()
        return {}


def prompt_executor(server):
    """``execution.PromptExecutor`` as the host's ``main.prompt_worker`` builds it with
    ``--cache-classic``. 0.3.64 takes ``cache_size=args.cache_lru``; 0.22 takes ``cache_args``
    (``lru`` and its RAM-pressure headrooms ``ram`` / ``ram_inactive``, which main.py leaves at 0
    with --cache-classic) and reads them on every prompt. Told apart by the constructor's parameters."""
    import comfy.cli_args
    import execution

    args = comfy.cli_args.args
    classic = execution.CacheType.CLASSIC
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(server, cache_type=classic,
                                        cache_args={"lru": args.cache_lru, "ram": 0, "ram_inactive": 0})
    return execution.PromptExecutor(server, cache_type=classic, cache_size=args.cache_lru)


@pytest.fixture
def engine(host, monkeypatch):
    """Runs prompts through validate_prompt + PromptExecutor; counts executions of our nodes."""
    import execution

    for name, cls in (("ASAGTestTinyModel", TinyModel), ("ASAGTestConditioning", TinyConditioning),
                      ("ASAGTestLatentSink", LatentSink), ("ASAGTestComboProbe", ComboProbe)):
        monkeypatch.setitem(host.nodes.NODE_CLASS_MAPPINGS, name, cls)
    model = tiny_models.sd15()
    monkeypatch.setattr(TinyModel, "models", {"sd15": model})
    monkeypatch.setattr(LatentSink, "received", {})

    glue = host.internal("nodes.guidance_nodes")
    executions = []
    real_patch_model = glue.patch_model

    def counting_patch_model(model, settings):
        executions.append(settings)
        return real_patch_model(model, settings)

    monkeypatch.setattr(glue, "patch_model", counting_patch_model)

    class Engine:
        def __init__(self):
            self.model = model
            self.executions = executions
            self.runs = 0
            self.restart()

        def restart(self):
            """A new executor: nothing cached."""
            self.server = _Server()
            self.executor = prompt_executor(self.server)

        def validate(self, prompt):
            return asyncio.run(execution.validate_prompt(f"p{self.runs}", prompt, None))

        def run(self, prompt):
            valid, error, outputs, node_errors = self.validate(prompt)
            assert valid, f"ComfyUI rejected the prompt: {error} {node_errors}"
            self.runs += 1
            self.executions.clear()
            LatentSink.received.clear()
            self.executor.execute(prompt, f"p{self.runs}", {}, outputs)
            return dict(LatentSink.received)

        def messages(self, event):
            return [data for name, data in self.executor.status_messages if name == event]

        def validates_combo_values(self):
            """Whether the host's validation refuses a COMBO-declared value outside its options."""
            probe = {"probe": {"class_type": "ASAGTestComboProbe", "inputs": {"pick": "three"}}}
            return not self.validate(probe)[0]

    return Engine()


def _prompt(seed=1, scale_a=1.5, scale_b=3.0, layers_b="d0, u1", lam_b=2.0):
    ksampler = {"steps": STEPS, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["latent", 0], "denoise": 1.0}
    return {
        "model": {"class_type": "ASAGTestTinyModel", "inputs": {"key": "sd15"}},
        "cond": {"class_type": "ASAGTestConditioning", "inputs": {"family": "sd15"}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": SIZE * 8, "height": SIZE * 8, "batch_size": 1}},
        "asag_a": {"class_type": "ASAG", "inputs": {"model": ["model", 0], "scale": scale_a}},
        "asag_b": {"class_type": "ASAGAdvanced", "inputs": {
            "model": ["model", 0], "scale": scale_b, "iterations": 3, "lam": lam_b, "cost": "adversarial",
            "layers": layers_b, "start_percent": 0.0, "end_percent": 1.0, "rescale": 0.0, "rescale_mode": "full"}},
        "sample_a": {"class_type": "KSampler", "inputs": {"model": ["asag_a", 0], "seed": seed, **ksampler}},
        "sample_b": {"class_type": "KSampler", "inputs": {"model": ["asag_b", 0], "seed": seed, **ksampler}},
        "out_a": {"class_type": "ASAGTestLatentSink", "inputs": {"samples": ["sample_a", 0], "tag": "a"}},
        "out_b": {"class_type": "ASAGTestLatentSink", "inputs": {"samples": ["sample_b", 0], "tag": "b"}},
    }


def _direct(host, model, node_id, seed, **inputs):
    patched = sampling.patch(host, node_id, model, **inputs)
    return sampling.ksampler(host, patched, "sd15", seed=seed, steps=STEPS,
                             latent=tiny_models.latent("sd15", size=SIZE))


def test_cached_asag_output_is_reused_when_only_the_seed_changes(host, engine, sinkhorn_calls):
    model = engine.model
    first = engine.run(_prompt(seed=1))
    assert engine.messages("execution_success"), engine.executor.status_messages
    assert len(engine.executions) == 2, "both ASAG nodes run on the first prompt"
    assert sinkhorn_calls

    second = engine.run(_prompt(seed=2))
    assert engine.messages("execution_success")
    assert engine.executions == [], "an ASAG node re-executed although none of its inputs changed"
    cached = engine.messages("execution_cached")[-1]["nodes"]
    assert {"model", "cond", "latent", "asag_a", "asag_b"} <= set(cached)

    b_settings = dict(scale=3.0, iterations=3, lam=2.0, layers="d0, u1")
    for seed, results in ((1, first), (2, second)):
        assert torch.equal(results["a"], _direct(host, model, "ASAG", seed, scale=1.5)), f"A, seed {seed}"
        assert torch.equal(results["b"], _direct(host, model, "ASAGAdvanced", seed, **b_settings)), f"B, seed {seed}"
    assert not torch.allclose(first["a"], first["b"], atol=1e-3)
    assert not torch.allclose(first["a"], second["a"], atol=1e-3)

    # changing one ASAG node re-executes that node (and what follows it) only
    third = engine.run(_prompt(seed=2, scale_a=2.5))
    assert [s.scale for s in engine.executions] == [2.5]
    assert {"asag_b", "sample_b", "out_b"} <= set(engine.messages("execution_cached")[-1]["nodes"])
    assert "b" not in third, "branch B re-ran although nothing in it changed"
    assert torch.equal(third["a"], _direct(host, model, "ASAG", 2, scale=2.5))


def test_two_asag_nodes_in_one_graph_are_independent(host, engine):
    both = engine.run(_prompt(seed=3))
    engine.restart()
    only_a = engine.run({k: v for k, v in _prompt(seed=3).items() if not k.endswith("_b")})
    assert torch.equal(both["a"], only_a["a"]), "the ASAGAdvanced branch changed the ASAG branch"
    engine.restart()
    only_b = engine.run({k: v for k, v in _prompt(seed=3).items() if not k.endswith("_a")})
    assert torch.equal(both["b"], only_b["b"]), "the ASAG branch changed the ASAGAdvanced branch"
    engine.restart()
    again = engine.run(_prompt(seed=3))
    assert len(engine.executions) == 2
    assert torch.equal(again["a"], both["a"]) and torch.equal(again["b"], both["b"])


@pytest.mark.parametrize("inputs,fragments", [
    ({"layers_b": "d9"}, ["layers", "'d9'", "d0, d1; m0; u0, u1, u2, u3"]),
    ({"layers_b": ""}, ["layers is empty", "U-Net: d<i>"]),
    ({"scale_a": math.nan}, ["scale", "finite number >= 0.0"]),
    ({"lam_b": math.nan}, ["lam", "finite number >= 0.0"]),
    ({"cost_b": "wasserstein"}, ["cost", "adversarial, similarity, uniform", "'wasserstein'"]),
    ({"rescale_mode_b": "half"}, ["rescale_mode", "full, partial", "'half'"]),
], ids=["missing-layer", "empty-layers", "nan-scale", "nan-lam", "bad-cost", "bad-rescale-mode"])
def test_node_errors_reach_the_client_on_the_node(host, engine, inputs, fragments):
    """ComfyUI's validation lets these through (NaN compares false with min/max; layers is free
    text; 0.3.64 checks combo values of V1 list inputs only, not of V3 COMBO inputs). Our execute
    raises and ComfyUI reports it as an execution_error on that node. A bad COMBO value on a host
    whose validation checks COMBO values (0.22) is refused by ComfyUI itself instead: see
    :func:`_assert_refused_by_validation`."""
    from model_state import patcher_state

    before = patcher_state(engine.model)
    node = "asag_b" if any(key.endswith("_b") for key in inputs) else "asag_a"
    prompt = _prompt(**{k: v for k, v in inputs.items() if k in ("layers_b", "scale_a", "lam_b")})
    combo = None
    for key in ("cost_b", "rescale_mode_b"):
        if key in inputs:
            combo = key[:-2]
            prompt["asag_b"]["inputs"][combo] = inputs[key]
    if combo is not None and engine.validates_combo_values():
        _assert_refused_by_validation(engine, prompt, combo, inputs[combo + "_b"], fragments[1].split(", "))
    else:
        assert engine.validate(prompt)[0], "expected ComfyUI's own validation to pass this prompt"
        engine.run(prompt)
        assert not engine.messages("execution_success")
        (error,) = engine.messages("execution_error")
        assert error["node_id"] == node and error["node_type"] == ("ASAGAdvanced" if node == "asag_b" else "ASAG")
        assert error["exception_type"].endswith(("LayerSpecError", "ValueError")), error["exception_type"]
        for fragment in fragments:
            assert fragment in error["exception_message"], error["exception_message"]
    assert patcher_state(engine.model) == before, "a failing ASAG node changed the input model"


def _assert_refused_by_validation(engine, prompt, name, value, options):
    """0.22: ``validate_prompt`` reports the COMBO value on the node (``value_not_in_list``, the
    input's name, the value and the valid ones), drops the outputs that depend on it and keeps the
    rest; the server queues the rest and answers the client with these ``node_errors``. The
    ASAGAdvanced node never runs; the ASAG branch runs as usual."""
    valid, _, outputs, node_errors = engine.validate(prompt)
    assert valid and outputs == ["out_a"], (valid, outputs)
    assert set(node_errors) == {"asag_b"} and node_errors["asag_b"]["class_type"] == "ASAGAdvanced"
    assert node_errors["asag_b"]["dependent_outputs"] == ["out_b"]
    (error,) = node_errors["asag_b"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["extra_info"]["input_name"] == name and error["extra_info"]["received_value"] == value
    assert error["details"].startswith(f"{name}: {value!r} not in ")
    assert sorted(error["extra_info"]["input_config"][1]["options"]) == sorted(options)
    for option in options:
        assert repr(option) in error["details"], error["details"]
    results = engine.run(prompt)
    assert engine.messages("execution_success") and not engine.messages("execution_error")
    assert set(results) == {"a"}
    assert [s.scale for s in engine.executions] == [1.5], "only the ASAG node ran (scale 1.5; ASAGAdvanced has 3.0)"


def test_out_of_range_inputs_are_refused_by_comfyui_validation(host, engine):
    """The min/max the node schema declares, ComfyUI itself enforces before anything runs."""
    bad = _prompt()
    bad["asag_b"]["inputs"].update(iterations=-1, lam=-0.5, rescale=2.0)
    bad["asag_a"]["inputs"]["scale"] = math.inf
    valid, error, outputs, node_errors = engine.validate(bad)
    assert not valid
    reported = {(node, e["extra_info"]["input_name"]) for node, info in node_errors.items() for e in info["errors"]}
    assert reported == {("asag_b", "iterations"), ("asag_b", "lam"), ("asag_b", "rescale"), ("asag_a", "scale")}
    assert engine.executions == []
