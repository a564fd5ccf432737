"""`l2m bipartite`: exact sources, token files, the scoring plan, clean errors."""

import json

import jax
import numpy as np
import pytest

from l2m_jax.cli import main
from l2m_jax.information import bipartite_mi
from l2m_jax.sources import markov_chain


def test_source_run_writes_every_figure(tmp_path, capsys):
    out, fig = tmp_path / "bp.json", tmp_path / "bp.png"
    argv = ["bipartite", "--source", "markov", "--docs", "24", "--length", "64"]
    argv += ["--bootstrap", "20", "--quiet", "--json", str(out), "--plot", str(fig)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["splits"] == [2, 4, 8, 16, 32]  # 2..L/r
    for key in ("direct", "direct_uncorrected", "vclub"):
        assert len(rec[key]) == len(rec[f"{key}_stderr"]) == 5
        assert set(rec[f"{key}_fit"]) >= {"exponent", "exponent_stderr", "interval"}
    # Markov: I_BP(ℓ) = I(W_ℓ; W_ℓ+1) for every split.
    np.testing.assert_allclose(rec["exact"], markov_chain().two_point_mi(1), rtol=1e-12)
    assert rec["n_docs"] == [24] * 5 and rec["tokens_scored"][0] == 24 * 3 * 2
    assert rec["total_tokens_scored"] == 24 * (62 + 2 * 62) and fig.stat().st_size > 0
    assert "vCLUB" in capsys.readouterr().out


def test_token_file_matches_the_library(tmp_path):
    src = markov_chain(seed=0)
    docs = np.asarray(src.sample(jax.random.key(7), 24, 64))  # shapes as in the test above
    path = tmp_path / "docs.npy"
    np.save(path, docs)
    out = tmp_path / "bp.json"
    argv = ["bipartite", "--source", "markov", "--tokens", str(path), "--splits", "2,4,8"]
    argv += ["--bootstrap", "20", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    res = bipartite_mi(src.logprob_fn, src.params, docs, [2, 4, 8], 4, bootstrap=20, progress=False)
    np.testing.assert_allclose(rec["direct"], res.direct, rtol=1e-12)
    np.testing.assert_allclose(rec["vclub_stderr"], res.vclub_stderr, rtol=1e-12)


def test_plan(capsys, tmp_path):
    out = tmp_path / "plan.json"
    argv = ["bipartite", "--plan", "--length", "2048", "--splits", "2..1024", "--json", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["tokens_scored"] == 6138 and rec["tokens_full"] == 55302
    assert "fraction 0.1110" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--source", "markov", "--model", "smollm2"], "exactly one of --source"),
        (["--source", "markov", "--tokens", "/nonexistent.npy"], "no file at"),
        (["--source", "markov", "--docs", "24", "--length", "64", "--splits", "2,64"], "need r·ℓ"),
        (["--source", "markov", "--ratio", "1"], "--ratio must be"),
    ],
)
def test_errors_are_one_clean_line(argv, message, capsys):
    assert main(["bipartite", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_pretrained_model_on_sword(tmp_path):
    """SmolLM2 on SWORD text: finite estimates with standard errors for every split."""
    out = tmp_path / "bp.json"
    argv = ["bipartite", "--model", "smollm2", "--corpus", "sword", "--max-len", "32"]
    argv += ["--docs", "4", "--bootstrap", "20", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["splits"] == [2, 4, 8, 16]
    for key in ("direct", "direct_uncorrected", "vclub"):
        assert all(np.isfinite(rec[key])) and all(s > 0 for s in rec[f"{key}_stderr"])
