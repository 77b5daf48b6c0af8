"""Each probe script end to end on a tiny run trained for a few steps inside the test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blocks.tasks import get_task
from blocks.tasks.common import next_token_nll
from blocks.training.config import TrainConfig
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer
from probes.head_scores import THRESHOLD, repeated_tokens
from probes.head_scores import head_scores as library_head_scores
from probes.patching import logit_diff_metric, patch_by_layer_pos
from probes.probing import IGNORE
from probes.scripts import circuit, dynamics, fourier, head_scores, information_flow, patching, probing

TINY = {
    "induction": dict(n_symbols=8, seq_len=16, min_repeat=3, max_repeat=6, n_train=64, n_test=16, eval_n=6),
    "sort": dict(list_len=4, n_values=8, n_train=64, n_test=32),
    "modular_addition": dict(p=7, frac_train=0.5),
    "text": dict(seq_len=16, max_chars=3000, source="../shared/data/tinyshakespeare/input.txt"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, options in TINY.items():
        task = get_task(name, **options)
        cfg = TrainConfig(
            steps=2, batch_size=8, warmup_steps=0, eval_every=2, log_every=1, n_checkpoints=2, device="cpu", bf16=False
        )
        Trainer(task, task.default_model_config(), cfg, root / name, progress=False).run()
        out[name] = root / name
    return out


def _json(path):
    return json.loads(path.read_text())


def test_head_scores_script_reports_what_the_library_computes(runs, tmp_path, capsys):
    """Every number in head_scores.json against the library on the same batch, and each check against its numbers."""
    head_scores.main(["--run", str(runs["induction"]), "--out", str(tmp_path), "--seed", "3"])
    data = _json(tmp_path / "induction.json")
    run = load_run(runs["induction"])
    n = run.task.eval_n
    tokens = repeated_tokens(n, 64, 1, run.task.n_symbols + 1, 0, seed=3)
    scores = library_head_scores(run.model, tokens, n)
    n_heads = run.model.cfg.n_heads
    prev_layer, prev_head = divmod(int(scores["previous_token"][:-1].argmax()), n_heads)  # below some later layer
    assert (data["previous_token_head"]["layer"], data["previous_token_head"]["head"]) == (prev_layer, prev_head)
    later = scores["induction"][prev_layer + 1 :]
    ind_layer, ind_head = divmod(int(later.argmax()), n_heads)
    assert (data["induction_head"]["layer"], data["induction_head"]["head"]) == (ind_layer + prev_layer + 1, ind_head)
    assert data["induction_head"]["score"] == pytest.approx(float(later.max()), abs=1e-6)
    for name, values in scores.items():
        torch.testing.assert_close(torch.tensor(data["scores"][name]), values, atol=1e-6, rtol=0)
    with torch.no_grad():
        nll = next_token_nll(run.model(tokens), tokens)
    assert data["loss"]["clean"]["repeated_half"] == pytest.approx(float(nll[:, n + 1 :].mean()), abs=1e-5)
    assert data["loss"]["clean"]["first_half"] == pytest.approx(float(nll[:, 1:n].mean()), abs=1e-5)
    checks, loss = data["checks"], data["loss"]
    assert checks["previous_token_head_above_threshold"] == (data["previous_token_head"]["score"] > THRESHOLD)
    assert checks["induction_head_above_threshold"] == (data["induction_head"]["score"] > THRESHOLD)
    rise = loss["induction_heads_ablated"]["repeated_half"] - loss["clean"]["repeated_half"]
    assert checks["ablating_induction_heads_raises_loss_by_1_nat"] == (rise >= 1.0)
    mean_without = data["induction_score_with_previous_token_heads_ablated"]["mean"]
    assert checks["ablating_previous_token_heads_destroys_induction_score"] == (mean_without < THRESHOLD)
    assert (tmp_path / "induction_scores.html").stat().st_size > 1000
    assert f"L{prev_layer}H{prev_head}" in capsys.readouterr().out


def test_patching_and_flow(runs, tmp_path, capsys):
    run = str(runs["induction"])
    patching.main(
        [
            "--run",
            run,
            "--out",
            str(tmp_path),
            "--clean",
            "BOS 1 2 3 1 2",
            "--corrupted",
            "BOS 1 2 4 1 2",
            "--answer",
            "3",
            "--wrong",
            "4",
            "--device",
            "auto",
        ]
    )  # the bodies get the resolved device
    data = _json(tmp_path / "patching.json")
    model, tokenizer = load_run(runs["induction"]).model, load_run(runs["induction"]).tokenizer
    clean, corrupted = (torch.tensor([tokenizer.encode(p)]) for p in ("BOS 1 2 3 1 2", "BOS 1 2 4 1 2"))
    metric = logit_diff_metric(tokenizer.id("3"), tokenizer.id("4"))
    for kind in ("resid_pre", "attn_out"):
        expected = patch_by_layer_pos(model, clean, corrupted, metric, kind)
        torch.testing.assert_close(torch.tensor(data["results"][kind]["values"]), expected.values, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert data["clean_metric"] == pytest.approx(float(metric(model(clean))), abs=1e-5)
    assert len(data["results"]["heads_by_pos"]["values"][0][0]) == 6  # positions
    assert (tmp_path / "patching_heads_by_pos.html").exists()
    information_flow.main(
        ["--run", run, "--out", str(tmp_path), "--prompt", "BOS 1 2 3 1 2", "--tau", "0.02", "--device", "auto"]
    )
    data = _json(tmp_path / "flow.json")
    assert data["nodes"][0] == {"layer": 2, "pos": 5, "kind": "resid_pre"}
    assert (tmp_path / "flow.html").exists()


def test_linear_probe_and_grokking(runs, tmp_path):
    for name, feature in (("sort", "smaller_than_previous"), ("text", "vowel"), ("induction", "previous_token_low")):
        probing.main(["--run", str(runs[name]), "--out", str(tmp_path), "--feature", feature, "--rows", "16"])
        data = _json(tmp_path / f"probe_{feature}.json")
        assert len(data["task_accuracy"]) == len(data["streams"]) == len(data["random_model_task_accuracy"])
    fourier.main(["--run", str(runs["modular_addition"]), "--out", str(tmp_path), "--keys", "2"])
    data = _json(tmp_path / "grokking.json")
    assert data["p"] == 7 and 0.0 <= data["explained"] <= 1.0
    assert (tmp_path / "curves.html").exists()


def test_induction_probes_by_default_whether_a_token_was_seen_before(runs, tmp_path):
    run = load_run(runs["induction"])
    tokens = torch.tensor([[0, 5, 6, 5, 7, 6, 6, 0]])  # BOS, then symbols; a later 0 is not BOS's repeat
    assert probing.FEATURES["induction"]["seen_before"](run, tokens).tolist() == [[IGNORE, 0, 0, 1, 0, 1, 1, 0]]
    probing.main(["--run", str(runs["induction"]), "--out", str(tmp_path), "--rows", "16"])
    data = _json(tmp_path / "probe_seen_before.json")
    assert data["streams"] == ["0_pre", "1_pre", "final_post"] and 0.0 < data["chance"] < 1.0


@pytest.mark.parametrize(
    "script, argv, message",
    [
        (fourier, ["--run", "{induction}"], "needs a run of task 'modular_addition'"),
        (probing, ["--run", "{modular_addition}"], "needs a run of task"),
        (probing, ["--run", "{sort}", "--feature", "vowel"], "has the features"),
        (head_scores, ["--run", "/nonexistent/run"], "not a run directory"),
        (patching, ["--run", "{induction}", "--clean", "BOS 1 2", "--corrupted", "BOS 1"], "same length"),
        (patching, ["--run", "{induction}", "--clean", "BOS 1 2"], "give both"),
        (patching, ["--run", "{induction}", "--clean", "", "--corrupted", ""], "--clean is empty"),
        (patching, ["--run", "{induction}", "--clean", "BOS 1", "--corrupted", "  "], "--corrupted is empty"),
        (information_flow, ["--run", "{induction}", "--prompt", ""], "--prompt is empty"),
        (
            head_scores,
            ["--run", "{induction}", "--device", "quantum"],
            "device 'quantum' is not available here; choose one of auto, cpu",
        ),
        (head_scores, ["--run", "{induction}", "--device", "cuda:99"], "device 'cuda:99' is not available here"),
        (probing, ["--run", "{induction}", "--device", "mps:5"], "choose one of auto, cpu"),
        (head_scores, ["--run", "{induction}", "--out", "{induction}/config.json/out"], "cannot be created"),
        (circuit, ["--run", "{induction}", "--ablation", "mean"], "estimates patching to the corrupted prompts"),
        (circuit, ["--run", "{text}"], "has no default clean/corrupted prompts"),
        (circuit, ["--run", "{induction}", "--metric", "logit_diff"], "use log_prob or prob"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, script, argv, message):
    argv = [a.format(**{k: str(v) for k, v in runs.items()}) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_sandbox_command_runs_each_probe_script_by_name(runs, tmp_path, capsys):
    from probes.scripts import sandbox

    argv = [
        "probe",
        "information_flow",
        "--run",
        str(runs["induction"]),
        "--out",
        str(tmp_path),
        "--prompt",
        "BOS 1 2 3 1 2",
    ]
    assert sandbox.main(argv) == 0
    assert _json(tmp_path / "flow.json")["target_pos"] == 5
    assert set(sandbox.PROBES) == {p.stem for p in Path(sandbox.__file__).parent.glob("*.py")} - {
        "__init__",
        "cli",
        "sandbox",
    }
    assert sandbox.main(["probe", "no_such_probe"]) == 2
    assert "sandbox probe takes one of circuit, dynamics, fourier, head_scores" in capsys.readouterr().err
    assert sandbox.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        sandbox.main(["probe", "patching", "--run", str(runs["induction"]), "--out", str(tmp_path), "--clean", "BOS 1"])
    assert exit_info.value.code == 2 and "give both --clean and --corrupted" in capsys.readouterr().err


@pytest.mark.slow
def test_the_installed_command_and_the_module_forms_start(tmp_path):
    """`sandbox` is a console script of the package; `python -m probes.scripts.NAME` and `python -m blocks.train` alias it."""
    bin_dir = Path(sys.executable).parent
    done = subprocess.run([str(bin_dir / "sandbox"), "backend"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[0].startswith("causal_attention")
    for module in ("probes.scripts.fourier", "probes.patching", "probes.information_flow", "blocks.train"):
        helped = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stderr[-1000:]


def test_circuit_script_writes_strict_json_that_matches_the_library(runs, tmp_path, capsys):
    """Every number of circuit.json against probes.circuit on the same prompts; NaN never reaches the file."""
    from probes.circuit.attribution import edge_attribution
    from probes.circuit.discovery import circuit_from_scores
    from probes.circuit.exact import exact_edge_patching
    from probes.circuit.scores import rank_agreement

    circuit.main(["--run", str(runs["induction"]), "--out", str(tmp_path), "--n", "16"])
    out = capsys.readouterr().out
    text = (tmp_path / "circuit.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"circuit.json holds {c}"))
    run = load_run(runs["induction"])
    contrast = run.task.circuit_contrast(16)
    ig, exact = edge_attribution(run.model, contrast, "eap-ig"), exact_edge_patching(run.model, contrast)
    found = circuit_from_scores(run.model, contrast, ig)
    assert data["circuit"]["edges"] == found.edge_names()
    assert data["circuit"]["faithfulness"] == pytest.approx(found.faithfulness)
    assert data["spearman_vs_exact"] == pytest.approx(rank_agreement(ig, exact))
    assert data["scores"]["edges"] == pytest.approx(dict(zip(ig.graph.edge_names, ig.edge_values().tolist())))
    assert data["composition"]["k"]["scores"][1][0][0][0] is None  # layer 1 -> layer 0: no composition, null
    assert f"faithfulness {found.faithfulness:.3f}" in out
    assert (tmp_path / "circuit.html").is_file() and (tmp_path / "faithfulness.html").is_file()


def test_dynamics_script_evaluates_every_checkpoint_once(runs, tmp_path, capsys):
    from blocks.training.runs import list_checkpoints
    from probes.dynamics import induction_measures

    argv = ["--run", str(runs["induction"]), "--out", str(tmp_path), "--seed", "2"]
    dynamics.main(argv)
    first = capsys.readouterr().out
    data = _json(tmp_path / "dynamics.json")
    steps = list_checkpoints(runs["induction"])
    assert data["steps"] == steps and f"{len(steps)} checkpoints, {len(steps)} evaluated now" in first
    run = load_run(runs["induction"], step=steps[-1])
    task, n = run.task, run.task.eval_n
    expected = induction_measures(
        run.model, repeated_tokens(n, 32, 1, task.n_symbols + 1, 0, seed=2), n, task.generate(64, seed=1_002)[0]
    )
    for name, value in expected.items():
        assert data["values"][name][-1] == pytest.approx(value)
    dynamics.main(argv)
    assert f"{len(steps)} checkpoints, 0 evaluated now" in capsys.readouterr().out


def test_figures_under_one_output_root_share_one_plotly_js(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from probes.scripts.cli import write_figure

    monkeypatch.chdir(tmp_path)
    fig = go.Figure(go.Bar(x=["a"], y=[1]))
    pages = [write_figure(tmp_path / "out" / name, "fig", fig) for name in ("heads", "flow", "patching")]
    assert sorted(p.name for p in tmp_path.rglob("plotly*.js")) == ["plotly.min.js"]  # one copy, not one per folder
    shared = tmp_path / "out" / "plotly.min.js"
    assert shared.stat().st_size > 1_000_000
    for page in pages:
        assert '<script charset="utf-8" src="../plotly.min.js"></script>' in page.read_text()
    # a folder directly in the working directory is its own root: nothing is written beside the code
    alone = write_figure("results", "fig", fig)
    assert (tmp_path / "results" / "plotly.min.js").is_file() and not (tmp_path / "plotly.min.js").exists()
    assert 'src="plotly.min.js"' in alone.read_text()


def test_probe_scripts_say_what_a_null_or_negative_result_means(runs, tmp_path, capsys):
    from probes.fourier import FourierSummary, fourier_verdict
    from probes.probing import LayerProbes, probe_verdict

    def probes(task, control):
        return LayerProbes(["embed", "L0"], torch.tensor(task), torch.tensor(control), chance=0.5)

    assert probe_verdict("f", probes([0.52, 0.53], [0.5, 0.5]), probes([0.5, 0.5], [0.5, 0.5])).startswith(
        "Null result: no stream encodes 'f' linearly; the best, L0, reaches 0.530 against chance 0.500"
    )
    below_control = probe_verdict("f", probes([0.7, 0.8], [0.7, 0.85]), probes([0.6, 0.6], [0.6, 0.6]))
    assert below_control.startswith("Negative result: at L0 the probe reaches 0.800, but on the control task")
    as_random = probe_verdict("f", probes([0.7, 0.9], [0.5, 0.5]), probes([0.7, 0.9], [0.5, 0.5]))
    assert "randomly initialised model of the same shape gives 0.900" in as_random and "Positive" not in as_random
    assert probe_verdict("f", probes([0.7, 0.95], [0.5, 0.6]), probes([0.6, 0.6], [0.5, 0.5])).startswith(
        "Positive result: L0 encodes 'f' linearly"
    )
    summary = FourierSummary([1, 3], 0.2, torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.zeros(3))
    assert fourier_verdict(summary, 0.4, 100).startswith("This run has not grokked (test accuracy 0.400 at step 100)")
    assert "Grokked (test accuracy 1.000), yet only 20%" in fourier_verdict(summary, 1.0, 100)

    # the scripts print them: the tiny runs here are trained a few steps, so neither has grokked or learnt much
    capsys.readouterr()
    fourier.main(["--run", str(runs["modular_addition"]), "--out", str(tmp_path), "--keys", "2"])
    assert "This run has not grokked" in capsys.readouterr().out
    probing.main(["--run", str(runs["sort"]), "--out", str(tmp_path), "--rows", "16"])
    out = capsys.readouterr().out
    assert any(
        out.strip().splitlines()[-1].startswith(s) for s in ("Null result", "Negative result", "Positive", "A randomly")
    )
