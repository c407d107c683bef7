"""Shared test setup: the repository root on sys.path, and the ComfyUI host fixtures."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

import comfy_host  # noqa: E402


@pytest.fixture(scope="session")
def host():
    """The real ComfyUI with this pack loaded by ComfyUI's own loader; skips when none is found."""
    started = comfy_host.start_host()
    if started is None:
        pytest.skip(comfy_host.HOW_TO)
    return started


@pytest.fixture
def sinkhorn_calls(host, monkeypatch):
    """Records every Sinkhorn attention call the model makes: (layer, rows, tokens)."""
    module = sys.modules[host.pack_module_name + ".nodes.attention_patch"]
    calls = []
    real = module.sinkhorn_attention

    def recording(q, k, v, heads, settings, layer, **layout):
        tokens = q.shape[2] if layout.get("skip_reshape") else q.shape[1]
        calls.append((layer, q.shape[0], tokens))
        return real(q, k, v, heads, settings, layer, **layout)

    monkeypatch.setattr(module, "sinkhorn_attention", recording)
    return calls
