"""The fast backend against the modules' own code on every model configuration, and the one switch that turns it off."""

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_helpers import CONFIGS, make_model, reference_attention, tokens_for

import blocks.fast
import blocks.fast.attention
import blocks.fast.linear
from scratchnn import backend
from scratchnn.backend import reference_only

REPO = Path(__file__).resolve().parents[2]
# listening to these makes a module run its own code (attention's, LayerNorm's) instead of the fast function
SKIPPED_BY_FAST = ("hook_attn_scores", "hook_pattern", "hook_result", "hook_scale")


def logits_and_grads(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logits without gradients, logits with them, and every parameter's gradient of a cross-entropy loss."""
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        plain = model(tokens)
    logits = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
    return plain, logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("training_matmuls", ["addmm", "oneDNN"])
@pytest.mark.parametrize("config", CONFIGS)
def test_fast_and_reference_give_the_same_logits_and_gradients(
    config: str, training_matmuls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if training_matmuls == "oneDNN":  # the test's matmuls are small: with gradients they would take addmm
        monkeypatch.setattr(blocks.fast.linear, "MIN_MACS_WITH_GRAD", 0)
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    fast = logits_and_grads(model, tokens)
    with reference_only():
        ref = logits_and_grads(model, tokens)
    torch.testing.assert_close(fast[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1], ref[1], atol=1e-5, rtol=1e-5)
    for name, grad in fast[2].items():
        torch.testing.assert_close(grad, ref[2][name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("config", CONFIGS)
def test_fast_and_reference_give_the_same_activations(config: str) -> None:
    """Every hook point but the ones whose listening forces the module's own code (so the fast functions all run)."""
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    _, fast = model.run_with_cache(tokens, names=lambda n: not n.endswith(SKIPPED_BY_FAST))
    with reference_only():
        _, ref = model.run_with_cache(tokens)
    assert len(fast) == len(ref) - sum(n.endswith(SKIPPED_BY_FAST) for n in ref) and any(
        "hook_normalized" in n for n in fast
    ) == (model.cfg.normalization is not None)
    for name, act in fast.items():
        torch.testing.assert_close(act, ref[name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def raise_if_called(what: str):
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran while only the reference code may run")

    return fail


def test_with_the_backend_off_sdpa_the_kernel_and_oneDNN_never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(**CONFIGS["d_head_16"], act_fn="gelu")  # the kernel's d_head, LayerNorm and GELU: every function
    tokens = tokens_for(model)
    fast = logits_and_grads(model, tokens)
    monkeypatch.setattr(F, "scaled_dot_product_attention", raise_if_called("torch's SDPA"))
    monkeypatch.setattr(F, "layer_norm", raise_if_called("torch's layer_norm"))
    monkeypatch.setattr(blocks.fast.attention, "_run", raise_if_called("the kernel library"))
    monkeypatch.setattr(blocks.fast.linear, "_onednn", raise_if_called("oneDNN"))
    for name in backend.OPERATIONS:
        monkeypatch.setitem(backend._REGISTERED, name, raise_if_called(f"the registered {name!r}"))
    with pytest.raises(AssertionError, match="while only the reference code may run"):
        model(tokens)  # the switch is on: the (now raising) backend runs
    with reference_only():
        ref = logits_and_grads(model, tokens)
    for got, want in zip(fast[:2], ref[:2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for name, grad in fast[2].items():
        torch.testing.assert_close(grad, ref[2][name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_each_fast_function_runs_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(act_fn="gelu")
    tokens = tokens_for(model)
    calls: dict[str, int] = {}
    for name, fn in list(backend._REGISTERED.items()):
        monkeypatch.setitem(
            backend._REGISTERED, name, lambda *a, _n=name, _f=fn: calls.update({_n: calls.get(_n, 0) + 1}) or _f(*a)
        )
    layers = model.cfg.n_layers
    with torch.no_grad():
        model(tokens)
    # per layer: query, key, value, output, linear_in and linear_out; then the unembedding
    assert calls == {"linear": 6 * layers + 1, "gelu": layers, "layer_norm": 2 * layers + 1, "causal_attention": layers}
    calls.clear()
    with torch.no_grad():
        make_model()(tokens)  # ReLU
    assert calls["relu"] == layers and "gelu" not in calls
    calls.clear()
    model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern", "ln_final.hook_scale"])
    # layer 1's attention and the final LayerNorm run their own code: someone reads what the fast ones skip
    assert calls == {"linear": 6 * layers + 1, "gelu": layers, "layer_norm": 2 * layers, "causal_attention": layers - 1}


def test_the_switch_holds_for_its_block_and_its_thread_only() -> None:
    seen: list[bool] = []
    with reference_only():
        assert not backend.is_on() and backend.fast("linear") is None
        worker = threading.Thread(target=lambda: seen.append(backend.is_on()))
        worker.start()
        worker.join()
    assert seen == [True]
    with pytest.raises(RuntimeError):
        with reference_only():
            raise RuntimeError("inside")
    assert backend.is_on() and backend.fast("linear") is blocks.fast.linear.linear
    with reference_only():
        assert all("switched off" in what for what in blocks.fast.status().values())


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, **env}
    )


def test_SANDBOX_FAST_0_runs_only_the_reference_code_for_the_whole_process() -> None:
    code = (
        "import torch, torch.nn.functional as F\n"
        "from blocks import Transformer, TransformerConfig, fast\n"
        "from scratchnn import backend\n"
        "def fail(*a, **k): raise AssertionError('a fast path ran')\n"
        "F.scaled_dot_product_attention = F.layer_norm = F.gelu = fail\n"
        "torch.manual_seed(0)\n"
        "m = Transformer(TransformerConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=13, n_ctx=10, act_fn='gelu'))\n"
        "m(torch.randint(0, 13, (2, 7))).sum().backward()\n"
        "print(backend.is_on(), backend.fast('causal_attention'), fast.keep_freed_memory())\n"
    )
    done = run_python(code, SANDBOX_FAST="0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "None", "False"]
    bad = run_python("from blocks.training.cli import main; raise SystemExit(main(['--task', 'sort', '--steps', '1']))",
                     SANDBOX_FAST="yes")  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: SANDBOX_FAST must be 0 (reference code only) or 1 (the default: use the fast backend), got 'yes'"
    ]


def test_a_module_swapped_in_runs_on_the_fast_path_too() -> None:
    """The backend replaces a module's arithmetic, never the module: a reader's own activation is what runs."""
    model = make_model()  # ReLU
    for block in model.blocks:
        block.mlp.act = torch.nn.Tanh()
    tokens = tokens_for(model)
    with torch.no_grad():
        fast = model(tokens)
        with reference_only():
            ref = model(tokens)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_strided_parameters_given_through_functional_call_agree() -> None:
    model = make_model(**CONFIGS["d_head_16"])
    tokens = tokens_for(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    for name in ("unembed.bias", "blocks.0.attn.query.bias", "blocks.1.mlp.linear_in.bias"):  # strided views
        params[name] = torch.stack([params[name], torch.zeros_like(params[name])], -1)[..., 0]
    with torch.no_grad():
        fast = torch.func.functional_call(model, params, (tokens,))
        with reference_only():
            ref = torch.func.functional_call(model, params, (tokens,))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, model(tokens), atol=1e-5, rtol=1e-5)


def test_under_cpu_autocast_the_two_paths_agree_to_bfloat16_precision() -> None:
    """The fused ops keep autocast's bfloat16; the reference's separate bias add promotes to float32."""
    model = make_model(**CONFIGS["d_head_16"], act_fn="gelu")
    tokens = tokens_for(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(tokens)
        with reference_only():
            ref = model(tokens)
    assert fast.dtype == torch.bfloat16 and ref.dtype == torch.float32
    torch.testing.assert_close(fast.float(), ref, atol=0.1, rtol=0.05)
    torch.testing.assert_close(fast.float(), model(tokens), atol=0.1, rtol=0.05)


def zero_in_place(act: torch.Tensor, hook: object) -> None:
    act[..., 0] = 0.0  # an ablation that edits the activation it is given


@pytest.mark.parametrize("point", ["attn.hook_q", "attn.hook_z", "mlp.hook_pre", "mlp.hook_post", "hook_attn_out"])
@pytest.mark.parametrize("config", ["ln_relu", "d_head_16"])
def test_a_hook_that_edits_in_place_gives_the_same_gradients(point: str, config: str) -> None:
    """Also with a backward hook on the same point (torch cannot hook an edited view: the point hooks a copy)."""
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    grads, at_point = [], []
    for switch in (contextlib.nullcontext, reference_only):
        model.zero_grad(set_to_none=True)
        fwd, bwd = [(f"blocks.0.{point}", zero_in_place)], [(f"blocks.0.{point}", lambda g, h: at_point.append(g))]
        with switch(), model.hooks(fwd=fwd, bwd=bwd):
            model(tokens).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(at_point[0], at_point[1], atol=1e-5, rtol=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_torch_hooks_on_a_hook_point_count_as_listening() -> None:
    """register_forward_hook on the pattern (or the scale) makes the module compute it, with the backend on too."""
    model = make_model(**CONFIGS["d_head_16"])
    tokens = tokens_for(model)
    fired: list[str] = []
    points = model.hook_points()
    handles = [
        points[name].register_forward_hook(lambda mod, inputs, out, n=name: fired.append(n))
        for name in ("blocks.0.attn.hook_pattern", "blocks.1.ln2.hook_scale")
    ]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert fired == ["blocks.0.attn.hook_pattern", "blocks.1.ln2.hook_scale"]


@pytest.mark.parametrize("config", ["ln_relu", "d_head_16"])
def test_batched_gradients_through_the_model_agree(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """autograd's is_grads_batched (what jacobian(vectorize=True) uses) reaches the fast backwards with batched tensors."""
    monkeypatch.setattr(blocks.fast.linear, "MIN_MACS_WITH_GRAD", 0)  # oneDNN's backward too
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    W_E = model.embed.weight.detach()

    def last_logits(weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {"embed.weight": weight}, (tokens,))[0, -1, :3]

    fast = torch.autograd.functional.jacobian(last_logits, W_E, vectorize=True)
    with reference_only():
        ref = torch.autograd.functional.jacobian(last_logits, W_E, vectorize=True)
    assert fast.abs().sum() > 0
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("needs", ["qkv", "q", "kv"])
def test_second_derivatives_of_attention_when_only_some_inputs_need_them(needs: str) -> None:
    """create_graph through the kernel with, say, keys detached by a hook: as the reference computes it."""
    from blocks.fast.attention import causal_attention

    base = torch.randn(3, 2, 9, 2, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for attend in (causal_attention, reference_attention):
        q, k, v = (t.clone().requires_grad_(name in needs) for t, name in zip(base, "qkv"))
        wanted = [t for t in (q, k, v) if t.requires_grad]
        grads = torch.autograd.grad(attend(q, k, v).pow(2).sum(), wanted, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), wanted)
        results.append((grads, second))
    for got, want in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_torch_compile_of_the_model_runs_and_agrees() -> None:
    # in a fresh python: the tests' runtime shape checks cannot follow dynamo's fake tensors. The chapter's
    # classifier compiles into one graph: under torch.compile the backend steps aside
    code = (
        "import torch; from blocks import Transformer, TransformerConfig; from scratchnn import MNISTClassifier\n"
        "torch.manual_seed(0)\n"
        "m = Transformer(TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=24, d_vocab=13, n_ctx=10)).eval()\n"
        "t = torch.randint(0, 13, (3, 7))\n"
        "c = MNISTClassifier(); x = torch.randn(4, 28, 28)\n"
        "with torch.no_grad():\n"
        "    print((torch.compile(m)(t) - m(t)).abs().max().item())\n"
        "    print((torch.compile(c, fullgraph=True)(x) - c(x)).abs().max().item())\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    differences = [float(line) for line in done.stdout.strip().splitlines()[-2:]]
    assert len(differences) == 2 and max(differences) < 1e-5
