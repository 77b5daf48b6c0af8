"""The fast backend's causal attention (our kernel, or SDPA) against the explicit softmax(q k^T / sqrt(d_head)) v:
values, gradients, where each applies, and the kernel's build."""

import ctypes
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformer_helpers import masked_scores, reference_attention

import blocks.fast.attention as ak
from blocks.fast import build

BUILDS_HERE = build.unsupported() is None and shutil.which("g++") is not None
needs_build = pytest.mark.skipif(not BUILDS_HERE, reason=f"no build here: {build.unsupported() or 'no g++'}")
builds = pytest.mark.slow  # compiles the kernel afresh into a temporary cache
needs_kernel = pytest.mark.skipif(ak.kernel_status() is not None, reason=f"kernel unavailable: {ak.kernel_status()}")

# batch, pos, n_heads, d_head: one position; remainders of the 8-row and 16-key blocks; d_head 16 to 128
SHAPES = [(2, 1, 1, 16), (3, 21, 2, 32), (2, 37, 5, 64), (1, 130, 3, 48), (2, 9, 4, 128), (1, 16, 2, 16)]


def packed_qkv(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """q, k and v stacked on axis 2: [batch, pos, 3, n_heads, d_head], so that each is a strided view, as in the model."""
    batch, pos, heads, d_head = shape
    return torch.randn(batch, pos, 3, heads, d_head, generator=torch.Generator().manual_seed(seed))


def test_the_kernel_builds_wherever_it_was_measured() -> None:
    if BUILDS_HERE:  # CI's machine and this project's: a silent fallback would hide a broken kernel
        assert ak.kernel_status() is None
    else:  # elsewhere the status says why, in the words of the check that stopped it
        assert (build.unsupported() or "compiler") in ak.kernel_status()


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_match_the_explicit_attention(shape: tuple[int, int, int, int]) -> None:
    qkv = packed_qkv(shape).requires_grad_()
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = ak.causal_attention(*qkv.unbind(2))
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    reference = qkv.detach().double().requires_grad_()
    ref_out = reference_attention(*reference.unbind(2))
    (ref_grad,) = torch.autograd.grad(ref_out, reference, grad_out.double())
    torch.testing.assert_close(out, ref_out.float(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad.float(), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_the_kernel_runs_and_takes_any_strides_of_the_last_axis_contiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, original = [], ak._forward
    monkeypatch.setattr(ak, "_forward", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    base = torch.randn(2, 4, 11, 32)  # [batch, n_heads, pos, d_head], permuted into [batch, pos, n_heads, d_head]
    q, k, v = (base.roll(i, 1).permute(0, 2, 1, 3) for i in range(3))
    torch.testing.assert_close(ak.causal_attention(q, k, v), reference_attention(q, k, v), atol=2e-6, rtol=1e-5)
    assert calls == [1]


@needs_kernel
def test_scores_far_apart_and_a_nan_query_behave_as_in_the_explicit_attention() -> None:
    """Score gaps past 87 (where the kernel's exp clamps) give the same weights; a NaN query spoils its row only."""
    qkv = packed_qkv((2, 40, 2, 32)) * torch.tensor([12.0, 12.0, 1.0]).view(
        1, 1, 3, 1, 1
    )  # scores spread over hundreds
    qkv[1, 17, 0, 1, 3] = float("nan")
    reference = reference_attention(*qkv.double().unbind(2)).float()
    scores = masked_scores(qkv[:, :, 0].double(), qkv[:, :, 1].double())
    gaps = scores.amax(-1, keepdim=True) - scores.masked_fill(scores.isinf(), float("nan"))
    assert gaps.nan_to_num(0).amax() > 200  # the clamp is exercised
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got = ak.causal_attention(*qkv.clone().requires_grad_(grad).unbind(2)).detach()
        # scores in the hundreds carry float32 rounding of about 1e-4 into the weights: a wrong clamp would be far off
        torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-3, equal_nan=True)
        assert got[1, 17, 1].isnan().all() and got.isnan().sum() == 32


@needs_kernel
def test_without_gradients_the_kernel_skips_the_log_sum_exp_and_gives_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lse_asked, original = [], ak._forward
    monkeypatch.setattr(
        ak, "_forward", lambda *a, **kw: lse_asked.append(kw.get("with_lse", True)) or original(*a, **kw)
    )
    qkv = packed_qkv((3, 37, 2, 32))
    with torch.no_grad():
        plain = ak.causal_attention(*qkv.unbind(2))
    with_grad = ak.causal_attention(*qkv.requires_grad_().unbind(2))
    assert lse_asked == [False, True]
    assert torch.equal(plain, with_grad.detach())
    out, lse = original(*qkv.detach().unbind(2))  # the log-sum-exp the backward uses, against its definition
    scores = torch.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0].detach(), qkv[:, :, 1].detach()) / math.sqrt(32)
    scores = scores.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(-1), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_gradients_of_gradients_match_the_explicit_attention() -> None:
    qkv = packed_qkv((2, 13, 2, 16)).requires_grad_()
    results = []
    for attend in (ak.causal_attention, reference_attention):
        out = attend(*qkv.unbind(2))
        (grad,) = torch.autograd.grad(out.pow(2).sum(), qkv, create_graph=True)
        (second,) = torch.autograd.grad(grad.pow(2).sum(), qkv)
        results.append((grad, second))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-4, rtol=1e-4)


@needs_kernel
def test_one_thread_and_two_give_the_same_bits(torch_threads) -> None:
    qkv = packed_qkv((4, 50, 3, 32))
    torch_threads(1)
    one = ak.causal_attention(*qkv.unbind(2))
    torch_threads(2)
    assert torch.equal(ak.causal_attention(*qkv.unbind(2)), one)


@pytest.mark.parametrize(
    "case",
    ["d_head not a multiple of 16", "float64", "last axis strided", "too long for the backward"],
)
def test_sdpa_is_used_where_the_kernel_does_not_apply(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ak, "_forward", lambda *a, **kw: pytest.fail("the kernel ran"))
    shape = {
        "d_head not a multiple of 16": (2, 9, 2, 8),
        "too long for the backward": (1, ak.MAX_POS_WITH_GRAD + 1, 1, 16),
    }
    qkv = packed_qkv(shape.get(case, (2, 9, 2, 16)))
    if case == "float64":
        qkv = qkv.double()
    q, k, v = qkv.unbind(2)
    if case == "last axis strided":
        q, k, v = (torch.cat([t, t], -1)[..., ::2] for t in (q, k, v))
    if case == "too long for the backward":
        q = q.requires_grad_()
    out = ak.causal_attention(q, k, v)
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=2e-6, rtol=1e-5)


def test_vmap_and_forward_mode_tangents_take_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ak, "_forward", lambda *a, **kw: pytest.fail("the kernel ran"))
    q, k, v = packed_qkv((3, 9, 2, 16)).unbind(2)
    batched = torch.func.vmap(lambda q, k, v: ak.causal_attention(q[None], k[None], v[None])[0])(q, k, v)
    torch.testing.assert_close(batched, reference_attention(q, k, v), atol=2e-6, rtol=1e-5)
    tangent = torch.ones_like(q)
    _, jvp = torch.func.jvp(lambda q: ak.causal_attention(q, k, v), (q,), (tangent,))
    _, ref_jvp = torch.func.jvp(lambda q: reference_attention(q, k, v), (q,), (tangent,))
    torch.testing.assert_close(jvp, ref_jvp, atol=1e-5, rtol=1e-5)


@pytest.fixture
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A module that has not built yet, with its cache in tmp_path; the real state comes back after."""
    monkeypatch.setattr(ak, "_lib", None)
    monkeypatch.setattr(ak, "_status", "not built yet")
    monkeypatch.setenv("BLOCKS_KERNEL_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("compiler", ["no-such-compiler-here", "false"])
def test_without_a_working_compiler_it_says_why_and_uses_sdpa(compiler: str, fresh_kernel_state, monkeypatch) -> None:
    monkeypatch.setenv("CXX", compiler)
    q, k, v = packed_qkv((2, 9, 2, 16)).unbind(2)
    with pytest.warns(RuntimeWarning, match="torch's SDPA instead"):
        out = ak.causal_attention(q, k, v)
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=2e-6, rtol=1e-5)
    status = ak.kernel_status()
    assert status is not None and "torch's SDPA instead" in status
    assert compiler in status


@builds
@needs_build
def test_a_build_is_cached_per_source_and_reused(fresh_kernel_state) -> None:
    first = build.build()
    assert first.parent == fresh_kernel_state and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert build.build() == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert list(fresh_kernel_state.iterdir()) == [first]  # no half-built leftovers


@needs_kernel
def test_threads_calling_at_once_each_get_their_own_answer(torch_threads) -> None:
    """The app serves several sessions with one model: each Python thread opens its own OpenMP team."""
    torch_threads(2)
    inputs = [packed_qkv((3, 40, 2, 32), seed=i) for i in range(6)]
    expected = [reference_attention(*qkv.unbind(2)) for qkv in inputs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            got = list(pool.map(lambda qkv: ak.causal_attention(*qkv.unbind(2)), inputs))
            for g, want in zip(got, expected):
                torch.testing.assert_close(g, want, atol=2e-6, rtol=1e-5)


@builds
@needs_build
def test_a_library_in_a_folder_others_can_write_is_never_loaded(fresh_kernel_state, monkeypatch) -> None:
    """Anyone who can write the cache folder could plant code there: such a folder is skipped, also for the build."""
    name = build.build().name  # into fresh_kernel_state, just to learn the name
    monkeypatch.delenv("BLOCKS_KERNEL_CACHE")
    shared = fresh_kernel_state / "shared" / "blocks-kernels"
    shared.mkdir(parents=True)
    (shared / name).write_bytes(b"planted")
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared.parent))
    monkeypatch.setattr(build.tempfile, "gettempdir", lambda: str(fresh_kernel_state / "tmp"))
    built = build.build()
    assert built.parent.parent == fresh_kernel_state / "tmp" and built.read_bytes() != b"planted"
    build._declare(ctypes.CDLL(str(built)))  # a real library


@builds
@needs_build
def test_an_unusable_cache_home_falls_back_to_the_temp_folder(fresh_kernel_state, monkeypatch) -> None:
    monkeypatch.delenv("BLOCKS_KERNEL_CACHE")
    not_a_folder = fresh_kernel_state / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    monkeypatch.setattr(build.tempfile, "gettempdir", lambda: str(fresh_kernel_state / "tmp"))
    built = build.build()
    assert built.parent == fresh_kernel_state / "tmp" / f"blocks-kernels-{os.getuid()}"
    assert built.parent.stat().st_mode & 0o777 == 0o700


def test_a_cpu_without_avx512_uses_torch_quietly(fresh_kernel_state, monkeypatch, recwarn) -> None:
    """Built for AVX2 the kernels are far slower than torch's SDPA, so they are not built there, and nothing warns."""
    monkeypatch.setattr(build, "_cpu", lambda: "model name : an AVX2 CPU\nflags : fpu sse avx avx2 fma")
    q, k, v = packed_qkv((2, 9, 2, 16)).unbind(2)
    torch.testing.assert_close(ak.causal_attention(q, k, v), reference_attention(q, k, v), atol=2e-6, rtol=1e-5)
    assert "avx512f" in ak.kernel_status()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert not list(fresh_kernel_state.iterdir())  # nothing was built
