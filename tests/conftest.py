"""Shared test setup: the repository root on sys.path, and the ComfyUI host fixtures."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import comfy_host  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# ``tests`` is this folder (a namespace package); ComfyUI's root has a regular ``tests`` package, which
# would win once the host puts that root on sys.path. Importing ours now binds the name for the session.
import tests  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests run tiny tensors, where PyTorch's intra-op thread pool costs more than it
    gives (on a loaded 2-core machine a tiny U-Net step is ~10x slower with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def host():
    """The real ComfyUI with this pack loaded by ComfyUI's own loader; skips when none is found."""
    started = comfy_host.start_host()
    if started is None:
        pytest.skip(comfy_host.HOW_TO)
    return started


class SinkhornCall(tuple):
    """One Sinkhorn attention call: unpacks as (layer, rows, tokens), with ``tokens`` the query count;
    ``keys`` is its key count."""

    def __new__(cls, layer, rows, tokens, keys):
        call = super().__new__(cls, (layer, rows, tokens))
        call.keys = keys
        return call

    layer = property(lambda self: self[0])
    rows = property(lambda self: self[1])
    tokens = property(lambda self: self[2])


@pytest.fixture
def sinkhorn_calls(host, monkeypatch):
    """Records every Sinkhorn attention call the model makes (:class:`SinkhornCall`)."""
    module = host.internal("nodes.adversarial_call")
    calls = []
    real = module.sinkhorn_attention

    def recording(q, k, v, heads, settings, layer, **layout):
        axis = 2 if layout.get("skip_reshape") else 1
        calls.append(SinkhornCall(layer, q.shape[0], q.shape[axis], k.shape[axis]))
        return real(q, k, v, heads, settings, layer, **layout)

    monkeypatch.setattr(module, "sinkhorn_attention", recording)
    return calls


_HOST_OUTCOMES = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
_HOST_SKIP_REASONS = set()


def pytest_runtest_logreport(report):
    if "host" not in report.keywords and "e2e" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            _HOST_OUTCOMES["xfailed"] += 1
        elif report.skipped:
            _HOST_OUTCOMES["skipped"] += 1
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            _HOST_SKIP_REASONS.add(reason)
        else:
            _HOST_OUTCOMES["passed" if report.passed else "failed"] += 1


def pytest_terminal_summary(terminalreporter):
    tally = os.environ.get("ASAG_HOST_TALLY")
    if tally:  # .ci/run reads it for its per-host line
        with open(tally, "w") as f:
            json.dump(_HOST_OUTCOMES, f)
    ran = _HOST_OUTCOMES["passed"] + _HOST_OUTCOMES["failed"]
    terminalreporter.write_line(
        f"host tests (real ComfyUI): {ran} ran ({_HOST_OUTCOMES['passed']} passed, "
        f"{_HOST_OUTCOMES['failed']} failed, {_HOST_OUTCOMES['xfailed']} expected failures), "
        f"{_HOST_OUTCOMES['skipped']} skipped"
    )
    for reason in sorted(_HOST_SKIP_REASONS):
        terminalreporter.write_line(f"  skipped because: {reason}")
