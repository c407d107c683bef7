"""ASAG beside ComfyUI's TorchCompileModel (its ``set_torch_compile_wrapper``), in both orders.

The compile wrapper swaps the BaseModel's diffusion_model for a torch.compile'd module around
each apply_model call. Compiled here with the ``eager`` backend: dynamo traces the model (and
breaks its graph at the pack's hooks) as with inductor, without a C++ toolchain run per test.
The prefix sharing switches itself off under torch.compile, so the result must equal the
uncompiled ASAG model, with the same Sinkhorn calls.
"""

import pytest
import sampling
import tiny_models
from test_fast_path import assert_relative

pytestmark = [pytest.mark.host, pytest.mark.slow]


def _compiled(model):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    clone = model.clone()
    set_torch_compile_wrapper(clone, backend="eager")
    return clone


@pytest.mark.parametrize("family,cfg,order", [("sd15", 4.0, "asag-then-compile"), ("flux", 1.0, "compile-then-asag")])
def test_torch_compile_model_beside_asag(host, family, cfg, order, sinkhorn_calls):
    model = tiny_models.FAMILIES[family]()
    reference = sampling.ksampler(host, sampling.asag_on(host, model, "fast"), family, cfg=cfg, steps=2)
    calls = len(sinkhorn_calls)
    if order == "asag-then-compile":
        final = _compiled(sampling.asag_on(host, model, "fast"))
    else:
        final = sampling.asag_on(host, _compiled(model), "fast")
    out = sampling.ksampler(host, final, family, cfg=cfg, steps=2)
    assert calls and len(sinkhorn_calls) == 2 * calls, "the Sinkhorn attention must run as often compiled"
    assert_relative(out, reference, 1e-5)
