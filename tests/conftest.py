"""Shared test setup: the repository root on sys.path, and the ComfyUI host fixtures."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import comfy_host  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


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
    ran = _HOST_OUTCOMES["passed"] + _HOST_OUTCOMES["failed"]
    terminalreporter.write_line(
        f"host tests (real ComfyUI): {ran} ran ({_HOST_OUTCOMES['passed']} passed, "
        f"{_HOST_OUTCOMES['failed']} failed, {_HOST_OUTCOMES['xfailed']} expected failures), "
        f"{_HOST_OUTCOMES['skipped']} skipped"
    )
    for reason in sorted(_HOST_SKIP_REASONS):
        terminalreporter.write_line(f"  skipped because: {reason}")
