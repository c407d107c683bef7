"""The kernel path (asag_core.sinkhorn_kernel: CUDA and the meta device), checked without a GPU.

Its numbers are checked on CPU, where ``path="kernel"`` runs the same code with PyTorch's CPU flash
kernel in the CUDA kernels' place (the same contract: output and log-sum-exp, an optional bias),
against the dense path on every mask, NaN pattern, GQA and scale the other paths are held to. Its
shape of work is checked on the meta device, which takes this path as CUDA does: the CUDA kernels it
calls, the call count, no float32 copy of q, k or v, and the issue's targets at the Wan shape.
"""

import pytest
import torch
import torch.nn.functional as F

import asag_core.sinkhorn as sk
import asag_core.sinkhorn_kernel as kernel
from asag_core import MASK_THRESHOLD, adversarial_attention
from asag_core.sinkhorn_checks import logit_multiplier
from benchmarks.attention_accounting import WAN_TARGETS, account, meta_qkv, sinkhorn_call

# a kernel that raises makes its call warn and compute another way: here that would test the wrong code
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _qkv(b, h, nq, nk, d, seed=0, hkv=None, dv=None, scale=1.0, dtype=torch.float32):
    hkv = hkv or h
    return (_randn(b, h, nq, d, seed=seed, scale=scale, dtype=dtype),
            _randn(b, hkv, nk, d, seed=seed + 1, scale=scale, dtype=dtype),
            _randn(b, hkv, nk, dv or d, seed=seed + 2, dtype=dtype))


def _attn(q, k, v, **kw):
    return adversarial_attention(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True, **kw)


def _kernel(q, k, v, **kw):
    """The kernel path on CPU: PyTorch's CPU flash kernel in the CUDA kernels' place."""
    return _attn(q, k, v, path="kernel", **kw)


def _dense(q, k, v, **kw):
    return _attn(q.float(), k.float(), v.float(), path="dense", **kw)


def _masks(b, nq, nk):
    keep = torch.ones(b, nk, dtype=torch.long)
    keep[0, nk // 2:] = 0
    rows = torch.rand(b, 1, nq, nk, generator=torch.Generator().manual_seed(9)) > 0.3
    rows[..., 0] = True
    rows[0, 0, 3] = False  # a fully masked row
    rows[1, 0, :, 2] = False  # a fully masked column
    return {
        "none": None,
        "keypad bool": keep.bool()[:, None, None, :],
        "keypad comfy fill": ((keep - 1).float() * torch.finfo(torch.float32).max)[:, None, None, :],
        "query-axis bool": rows,
        "query-axis additive": _randn(nq, nk, seed=10, scale=2.0).masked_fill(~rows[0, 0], -1e4),
        "key bias above threshold": torch.full((b, 1, 1, nk), MASK_THRESHOLD + 5.0),
    }


MASK_NAMES = list(_masks(2, 4, 4))


@pytest.mark.parametrize("mask", MASK_NAMES)
@pytest.mark.parametrize("cost", ["adversarial", "similarity", "uniform"])
def test_float32_equals_dense(mask, cost):
    b, h, nq, nk, d = 2, 3, 70, 50, 16
    q, k, v = _qkv(b, h, nq, nk, d, seed=1, scale=1.5)
    m = _masks(b, nq, nk)[mask]
    for it in (0, 1, 3):
        kw = dict(iterations=it, cost=cost, mask=m, lam=1.3)
        out = _kernel(q, k, v, chunk_size=16, **kw)
        if mask == "key bias above threshold":  # |bias| ~ 1000: float32 rounding of 1e-4 on every path
            ref = _attn(q.double(), k.double(), v.double(), path="dense", **kw)
            torch.testing.assert_close(out.double(), ref, atol=5e-4, rtol=5e-4)
        else:
            torch.testing.assert_close(out, _dense(q, k, v, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hkv", [1, 3])
def test_gqa_scale_and_flat_layout_equal_dense(hkv):
    q, k, v = _qkv(2, 6, 40, 30, 8, seed=2, hkv=hkv, dv=5)
    kw = dict(iterations=2, scale=0.3, enable_gqa=True, mask=_masks(2, 40, 30)["keypad bool"])
    ref = _dense(q, k.repeat_interleave(6 // hkv, 1), v.repeat_interleave(6 // hkv, 1),
                 **{x: y for x, y in kw.items() if x != "enable_gqa"})
    torch.testing.assert_close(_kernel(q, k, v, **kw), ref, atol=1e-5, rtol=1e-5)
    flat = adversarial_attention(*(t.transpose(1, 2).flatten(2) for t in (q, k, v)), 6, path="kernel", **kw)
    torch.testing.assert_close(flat, ref.transpose(1, 2).flatten(2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("it", [0, 2])
def test_nan_pattern_is_the_dense_paths(where, it):
    q, k, v = _qkv(2, 2, 30, 20, 8, seed=3)
    {"q": q, "k": k, "v": v}[where][1, 0, 2, 3] = float("nan")
    for m in (None, _masks(2, 30, 20)["keypad comfy fill"]):
        out = _kernel(q, k, v, iterations=it, mask=m, cost="similarity" if it == 0 else "adversarial")
        ref = _dense(q, k, v, iterations=it, mask=m, cost="similarity" if it == 0 else "adversarial")
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()
        torch.testing.assert_close(out.nan_to_num(7.0), ref.nan_to_num(7.0), atol=1e-5, rtol=1e-5)


def test_zero_iterations_similarity_is_sdpa_in_bf16():
    q, k, v = _qkv(1, 4, 64, 64, 32, seed=4, dtype=torch.bfloat16)
    out = _kernel(q, k, v, iterations=0, cost="similarity")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("lam", [1.0, 3.0, 10.0])
def test_bf16_error_is_the_outputs_rounding_and_the_split_matters(lam):
    # bf16 inputs: the path's error against float64 on the same inputs is about the bf16 rounding of
    # the output itself (at most 1.2x it); the potentials rounded to bf16 alone (parts=1, no three-part
    # split) err more as lam grows: at least as much at lam 1, 1.5x more at lam 3, 5x more at lam 10
    q, k, v = _qkv(1, 4, 256, 256, 64, seed=5, dtype=torch.bfloat16)
    ref = _attn(q.double(), k.double(), v.double(), lam=lam, path="dense")
    rounding = float((ref.to(torch.bfloat16).double() - ref).abs().max())
    split = float((_kernel(q, k, v, lam=lam).double() - ref).abs().max())
    multiplier = logit_multiplier("adversarial", lam, None, 64)
    rounded = kernel.attention(q, k, v, multiplier, None, 2, 256, kernel.CPU_KERNELS, parts=1)
    hi_only = float((rounded.double() - ref).abs().max())
    assert split <= 1.2 * rounding, (split, rounding)
    assert hi_only >= {1.0: 1.0, 3.0: 1.5, 10.0: 5.0}[lam] * split, (hi_only, split)


def _recording(calls):
    def cpu(q, k, v, bias, scale):
        calls.append(None if bias is None else tuple(bias.shape))
        return kernel.cpu_kernel(q, k, v, bias, scale)

    return {"flash": cpu, "efficient": cpu}


def _calls(q, k, v, iterations, mask=None, chunk_size=None):
    """The bias shapes of every kernel call the kernel path makes (None: no bias)."""
    calls = []
    multiplier = logit_multiplier("adversarial", 1.0, None, q.shape[-1])
    out = sk.attention_heads(q, k, v, multiplier, mask, iterations, "kernel", chunk_size, kernels=_recording(calls))
    assert torch.equal(out, _kernel(q, k, v, iterations=iterations, mask=mask, chunk_size=chunk_size))
    return calls


def test_kernel_calls_per_pass():
    q, k, v = _qkv(1, 2, 40, 30, 8, seed=6)
    for it in (0, 1, 2):
        assert _calls(q, k, v, it) == [None] * (2 * it + 1)  # one call per half-step, no bias
    # a key-padding mask is a key bias folded into the keys: still one call per half-step
    assert _calls(q, k, v, 2, _masks(2, 40, 30)["keypad bool"][:1]) == [None] * 5
    # a query-axis mask: rows blocks (and column blocks, transposed) with a bias
    assert _calls(q, k, v, 1, _masks(2, 40, 30)["query-axis bool"][:1], 16) == [
        (1, 2, 16, 30), (1, 2, 16, 30), (1, 2, 8, 30),  # row pass: 40 rows in 16s
        (1, 2, 16, 40), (1, 2, 14, 40),  # column pass: 30 keys as queries
        (1, 2, 16, 30), (1, 2, 16, 30), (1, 2, 8, 30)]  # output


def test_query_axis_mask_blocks_follow_bias_bytes():
    # without a chunk_size, a query-axis mask goes to the kernel in blocks of at most BIAS_BYTES of bias:
    # (B, the mask's heads, rows, the longer token axis) of the input dtype
    q, k, v = _qkv(2, 3, 40, 30, 8, seed=7)
    mask = _masks(2, 40, 30)["query-axis bool"]
    assert kernel.mask_rows(q, k, None) == 40
    assert kernel.mask_rows(q, k, mask) == kernel.BIAS_BYTES // (2 * 40 * 4)
    assert kernel.mask_rows(q, k, mask.expand(2, 3, 40, 30)) == kernel.BIAS_BYTES // (2 * 3 * 40 * 4)
    assert kernel.mask_rows(k, q, mask) == kernel.BIAS_BYTES // (2 * 40 * 4)  # 30 queries, 40 keys
    assert kernel.mask_rows(q.bfloat16(), k, mask) == kernel.BIAS_BYTES // (2 * 40 * 2)
    long = torch.empty(1, 1, kernel.BIAS_BYTES, 8, device="meta")  # one row of bias is over BIAS_BYTES
    assert kernel.mask_rows(long, long, torch.empty(1, 1, 2, kernel.BIAS_BYTES, device="meta")) == 1


def test_bf16_with_a_query_axis_mask_equals_dense():
    # the mask goes to the efficient kernel as a bias of the inputs' dtype, in row and column blocks
    q, k, v = _qkv(2, 3, 40, 30, 16, seed=8, dtype=torch.bfloat16)
    for name in ("query-axis bool", "query-axis additive"):
        m = _masks(2, 40, 30)[name]
        out = _kernel(q, k, v, mask=m, chunk_size=16)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), _dense(q, k, v, mask=m), atol=2e-2, rtol=2e-2)


def test_a_mask_is_thresholded_before_bf16_rounds_it():
    """-999 is a bias (the threshold is -1000) that bf16 rounds to -1000: the kernel path keeps the pair,
    as the dense path does, instead of masking the row."""
    q, k, v = _qkv(1, 1, 8, 8, 16, seed=11, dtype=torch.bfloat16)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 3, :] = -999.0
    assert torch.tensor(-999.0).bfloat16().item() == MASK_THRESHOLD
    out = _kernel(q, k, v, mask=mask, chunk_size=16).float()
    dense = _dense(q, k, v, mask=mask)
    assert dense[..., 3, :].abs().max() > 0.1
    torch.testing.assert_close(out, dense, atol=2e-2, rtol=2e-2)


def test_a_float64_mask_is_read_in_the_work_dtype_on_every_path():
    """A float64 key-padding value of -999.99999999 is -1000 in float32, the work dtype: masked on the
    kernel path, the dense path and in ``sinkhorn_plan`` alike."""
    q, k, v = _qkv(1, 1, 6, 5, 8, seed=12)
    mask = torch.zeros(1, 1, 1, 5, dtype=torch.float64)
    mask[..., 2] = -999.99999999
    as_bool = torch.ones(1, 1, 1, 5, dtype=torch.bool)
    as_bool[..., 2] = False
    torch.testing.assert_close(_kernel(q, k, v, mask=mask), _dense(q, k, v, mask=as_bool))
    torch.testing.assert_close(_dense(q, k, v, mask=mask), _dense(q, k, v, mask=as_bool))
    plan = sk.sinkhorn_plan(q, k, mask=mask)
    assert torch.equal(plan, sk.sinkhorn_plan(q, k, mask=as_bool)) and plan[..., 2].abs().max() == 0
    rows = mask.expand(1, 1, 6, 5).clone()  # with a query axis: the bias blocks of the efficient kernel
    torch.testing.assert_close(_kernel(q, k, v, mask=rows), _dense(q, k, v, mask=as_bool))


def test_the_split_is_three_parts_of_the_input_dtype():
    t = torch.tensor([1 / 3, -7.123456, float("-inf")])
    parts = kernel._split(t, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in parts)
    total = sum(p[:2].double() for p in parts)
    assert ((total - t[:2].double()).abs() <= 2.0**-20 * t[:2].double().abs()).all()
    assert parts[0][2] == float("-inf") and parts[1][2] == 0 and parts[2][2] == 0


def test_row_lse_with_a_query_axis_mask_stays_float32_in_bf16():
    q, k, v = _qkv(1, 1, 8, 8, 8, seed=15, dtype=torch.bfloat16)
    mask = _randn(1, 1, 8, 8, seed=16)
    backend = kernel.KernelBackend(q, k, v, -0.35, mask, 8, kernel.CPU_KERNELS)
    lse = backend.row_lse(None)
    assert lse.dtype == torch.float32


def test_fp16_runs_at_a_small_lam():
    """At lam 1e-3 the potentials' unit u = 3**13 passes fp16's range; the buffers hold it."""
    q, k, v = _qkv(1, 2, 16, 16, 64, seed=13, dtype=torch.float16)
    out = _kernel(q, k, v, lam=1e-3)
    torch.testing.assert_close(out.float(), _dense(q, k, v, lam=1e-3), atol=2e-2, rtol=2e-2)


def test_fp16_sums_of_large_inputs_make_no_nan():
    """NaN in q, k or v reaches the output as in SDPA, found through sums: those of large fp16 values
    (a q row of 30,000s, k of 10,000s, a v column of 30,000s) must not overflow into a NaN the inputs
    do not have."""
    for which in range(3):
        q, k, v = _qkv(1, 1, 4, 4, 8, seed=14, dtype=torch.float16)
        if which == 2:
            v[..., 1] = 30000.0
        else:
            (q, k)[which][..., 1, :] = 30000.0 if which == 0 else 10000.0
            (k, q)[which].mul_(1e-4)  # keep the logits small: the other input scaled down
        out = _kernel(q, k, v, iterations=0)
        assert not out.isnan().any(), which


def test_the_head_dims_the_kernel_path_takes():
    """D + 3 (the potentials' extra dims) up to 256: D = Dv = 253 is the largest head the path takes."""
    assert kernel.padded_dim(5, 0) == 8
    q = torch.empty(1, 1, 4, 253, device="meta")
    assert sk.attention_path(q, q, q, 1, skip_reshape=True, path="kernel") == "kernel"
    q = torch.empty(1, 1, 4, 254, device="meta")
    with pytest.raises(ValueError, match="cannot run this call"):
        sk.attention_path(q, q, q, 1, skip_reshape=True, path="kernel")


def test_attention_path_needs_enable_gqa_as_the_call_does():
    q, k = torch.zeros(1, 4, 8, 8), torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="enable_gqa"):
        sk.attention_path(q, k, k, 4, skip_reshape=True)
    assert sk.attention_path(q, k, k, 4, skip_reshape=True, enable_gqa=True) == "dense"


# ---------------------------------------------------------------------------
# the meta device: the CUDA path, counted
# ---------------------------------------------------------------------------


def _ops(fn):
    return account(fn)["ops_by_name"]


@pytest.mark.parametrize("dtype,mask,expected", [
    (torch.bfloat16, None, "_scaled_dot_product_flash_attention"),
    (torch.float16, "keypad", "_scaled_dot_product_flash_attention"),
    (torch.bfloat16, "rows", "_scaled_dot_product_efficient_attention"),
    (torch.float32, None, "_scaled_dot_product_efficient_attention"),
])
def test_meta_runs_the_cuda_kernels(dtype, mask, expected):
    q, k, v = meta_qkv(1, 4, 1000, 64, dtype)
    m = {None: None, "keypad": torch.ones(1, 1, 1, 1000, dtype=torch.bool, device="meta"),
         "rows": torch.ones(1, 1, 1000, 1000, dtype=torch.bool, device="meta")}[mask]
    ops = _ops(lambda: sinkhorn_call(q, k, v, mask=m, chunk_size=None if mask != "rows" else 1000))
    assert ops[expected] == 5
    out = sinkhorn_call(q, k, v, mask=m)
    assert out.shape == (1, 4, 1000, 64) and out.dtype == dtype and out.device.type == "meta"


def test_meta_makes_no_float32_copy_of_q_k_or_v():
    q, k, v = meta_qkv(1, 8, 2048, 64, torch.bfloat16)
    seen = []

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    seen.append(t.numel())
            return out

    with Watch():
        sinkhorn_call(q, k, v)
    assert max(seen) < q.numel() // 8  # float32 only for (B, H, N) potentials and sums


def test_wan_shape_meets_the_issue_targets_on_meta():
    q, k, v = meta_qkv(1, 40, 32760, 128, torch.bfloat16)
    counts = account(sinkhorn_call, q, k, v)
    assert counts["ops"] <= WAN_TARGETS["ops"]
    assert counts["largest_temporary"] <= WAN_TARGETS["largest_temporary"]
    assert counts["bytes_moved"] <= WAN_TARGETS["bytes_moved"]
    assert counts["ops_by_name"]["_scaled_dot_product_flash_attention"] == 5
