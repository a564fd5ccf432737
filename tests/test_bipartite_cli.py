"""`l2m bipartite`: exact sources, token files, the scoring plan, clean errors."""

import json

import jax
import numpy as np
import pytest

from l2m_jax.cli import main
from l2m_jax.information import bipartite_mi
from l2m_jax.sources import markov_chain

# Documents sampled here are their own 2-gram corpus, a few thousand tokens: undersampled.
pytestmark = pytest.mark.filterwarnings("ignore:the 2-gram histogram")


def test_source_run_writes_every_figure(tmp_path, capsys):
    out, fig = tmp_path / "bp.json", tmp_path / "bp.png"
    argv = ["bipartite", "--source", "markov", "--docs", "24", "--length", "64"]
    argv += ["--bootstrap", "20", "--quiet", "--json", str(out), "--plot", str(fig)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["splits"] == [2, 4, 8, 16, 32]  # 2..L/r
    for key in ("direct", "direct_uncorrected", "vclub"):
        assert len(rec[key]) == len(rec[f"{key}_stderr"]) == len(rec[f"{key}_below_bound"]) == 5
        fit = rec[f"{key}_fit"]
        assert set(fit) >= {"exponent", "exponent_stderr", "interval", "splits", "excluded"}
        assert fit["bootstrap_resamples"] + fit["bootstrap_failed"] == 20
        assert sorted(fit["splits"] + [e for e, _ in fit["excluded"]]) == rec["splits"]
    # Markov: I_BP(ℓ) = I(W_ℓ; W_ℓ+1) for every split, and the bound is that value.
    exact = markov_chain().two_point_mi(1)
    np.testing.assert_allclose(rec["exact"], exact, rtol=1e-12)
    assert rec["bound"]["value"] == pytest.approx(exact, abs=5 * rec["bound"]["stderr"] + 0.05)
    assert rec["n_docs"] == [24] * 5 and rec["tokens_scored"][0] == 24 * 3 * 2
    assert rec["total_tokens_scored"] == 24 * (64 + 2 * 62) and fig.stat().st_size > 0
    assert rec["tokens_official"] == 24 * (64 + sum(128 - ell for ell in rec["splits"]))
    ebc = rec["entropy_by_context"]
    assert len(ebc["mean"]) == len(ebc["stderr"]) == 64 and ebc["positions"][-1] == 64
    assert rec["document_start"]["source"] == "the source's own initial law"
    # q = p: Y after another document's X costs the entropy rate per token, plus, for Y1,
    # the cross-entropy of P(b | a) with a and b independent.
    src = markov_chain()
    pi, log_p = src.stationary, np.log(src.transition)
    extra = len(rec["splits"]) * (-(pi @ log_p @ pi) - src.entropy_rate()) / sum(rec["splits"])
    shuffled = rec["cross_entropy"]["shuffled"]
    assert abs(shuffled["mean"] - src.entropy_rate() - extra) < 4 * shuffled["stderr"]
    assert rec["ngram_tokens"] == 24 * 64 and rec["ngram_source"] == "the scored documents"
    printed = capsys.readouterr().out
    assert "vCLUB" in printed and "data-processing bound" in printed
    assert "entropy by context: β =" in printed
    # `l2m report` summarises this JSON: the weighted fit's headline and one row per estimator.
    from l2m_jax.experiments.report import _bipartite_summary

    summary = "\n".join(_bipartite_summary(rec))
    fit = rec["direct_fit"]
    assert f"ℓ^{fit['exponent']:.3f}" in summary and "**Headline**" in summary
    assert f"{fit['bootstrap_failed']} of 20 resamples failed" in summary
    for row in ("| direct, n-gram corrected |", "| direct, uncorrected |", "| vCLUB |", "Hilberg"):
        assert row in summary


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
    assert rec["tokens_scored"] == 6140 and rec["tokens_processed"] == 8186
    assert rec["tokens_official"] == 40962  # 2048 + Σ (2048 − ℓ) + 10 · 2048
    assert "fractions 0.1998 run, 0.1499 used" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--source", "markov", "--model", "smollm2"], "exactly one of --source"),
        (["--source", "markov", "--tokens", "/nonexistent.npy"], "no file at"),
        (["--source", "markov", "--docs", "24", "--length", "64", "--splits", "2,64"], "need r·ℓ"),
        (["--source", "markov", "--ratio", "1"], "--ratio must be"),
        (["--source", "markov", "--ngram-weight", "-0.5"], "--ngram-weight must lie in [0, 1]"),
        (["--source", "markov", "--bos-id", "0"], "--bos-id applies to --model"),
        (
            ["--source", "markov", "--docs", "24", "--length", "64", "--hilberg-from", "0"],
            "hilberg_from must be an integer ≥ 1",
        ),
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
    assert rec["document_start"]["bos_id"] == 1 and rec["document_start"]["token"] == "<|im_start|>"
    assert rec["ngram_source"] == "the whole corpus" and rec["ngram_tokens"] > 6_000_000
    assert 1.5 < rec["bound"]["value"] < 2.2  # Î_TP(1) of SWORD less its surrogate, ≈ 1.86
    # Asking for more samples than the corpus has is an error, not a silent cut.
    argv = ["bipartite", "--model", "smollm2", "--corpus", "sword", "--max-len", "2048"]
    assert main([*argv, "--docs", "100000", "--quiet"]) == 2
