"""`l2m sweep`: the results JSON, the plots, the effective memory k_eff, and bad input."""

import json
import math

import numpy as np
import pytest

from l2m_jax import cli, sources
from l2m_jax.experiments import sweep


def _window_predictor(cov, i, k):
    w = slice(max(0, i - k), i)
    coef = np.linalg.solve(cov[w, w], cov[w, i])
    return w, coef, cov[i, i] - cov[w, i] @ coef


def test_window_kl_is_the_expected_kl_of_the_window_predictor():
    """½ log(σ_k² / σ_i²) = E_p KL(p(z_i|z_<i) ‖ N(μ_k, σ_k²)), checked by sampling."""
    family = sources.subvolume_gaussian(2)
    cov = family.cov
    L = family.length
    chol = np.linalg.cholesky(cov)
    z_NxL = np.random.default_rng(0).standard_normal((20000, L)) @ chol.T
    k = 3
    mc = np.zeros(L)
    for i in range(k + 1, L):
        w_full, coef_full, var_full = _window_predictor(cov, i, i)
        w_k, coef_k, var_k = _window_predictor(cov, i, k)
        mu_p, mu_q = z_NxL[:, w_full] @ coef_full, z_NxL[:, w_k] @ coef_k
        kl = np.log(math.sqrt(var_k / var_full)) + (var_full + (mu_p - mu_q) ** 2) / (2 * var_k)
        mc[i] = (kl - 0.5).mean()
    exact = sweep.window_kl_curve(family, [k])[0]
    assert exact > 0.01
    assert mc.mean() == pytest.approx(exact, rel=0.03)
    curve = sweep.window_kl_curve(family, [0, 1, 2, 4, 8, 16])
    assert np.all(np.diff(curve) <= 1e-12) and curve[-1] == 0.0
    # k = 0 predicts from the marginal: ½ log(1 / σ_i²) averaged over positions.
    sigma = np.diag(chol)
    assert curve[0] == pytest.approx(np.mean(-np.log(sigma)), rel=1e-10)


def test_effective_memory_inverts_the_window_curve():
    family = sources.subvolume_gaussian(2)
    curve = sweep.window_kl_curve(family, [0, 2, 4, 16])
    assert sweep.effective_memory(family, curve[1]) == pytest.approx(2.0)
    assert sweep.effective_memory(family, curve[2]) == pytest.approx(4.0)
    assert 2.0 < sweep.effective_memory(family, 0.5 * (curve[1] + curve[2])) < 4.0
    assert sweep.effective_memory(family, curve[0] + 1.0) == 0.0
    assert sweep.effective_memory(sources.subvolume_gaussian(6), 0.1) is None  # L > 1024


def test_sweep_writes_every_field_and_plot(tmp_path):
    path, plots = tmp_path / "sweep.json", tmp_path / "plots"
    argv = [
        "sweep",
        "--preset",
        "cpu",
        "--models",
        "gpt2,mamba-z32",
        "--layers",
        "1",
        "--steps",
        "4",
        "--batch",
        "8",  # a multiple of the 8 simulated devices
        "--json",
        str(path),
        "--plot-dir",
        str(plots),
    ]
    assert cli.main(argv) == 0
    results = json.loads(path.read_text())
    runs = results["results"]
    assert [(r["model"], r["seq_len"]) for r in runs] == [("gpt2", 4), ("mamba-z32", 4)]
    family = sources.subvolume_gaussian(1, 4)
    for r in runs:
        for key in (
            "model",
            "seq_len",
            "history_state_size",
            "bipartite_mi",
            "avg_kl",
            "kl_by_position",
            "avg_nll",
            "nll_by_position",
            "k_eff",
        ):
            assert key in r
        assert len(r["kl_by_position"]) == 4
        assert r["avg_kl"] == pytest.approx(np.mean(r["kl_by_position"]))
        assert r["bipartite_mi"] == pytest.approx(family.bipartite_mi(2))
    assert runs[1]["history_state_size"] == 32  # gauss-mamba-z32
    assert runs[0]["history_state_size"] == 2 * 2 * 64 * 2  # 2 layers, K·E = 64, L/2 = 2
    assert "late_kl_smallest_ssm_minus_transformer" in results["checks"]
    assert any("late-position KL of mamba-z32 minus gpt2" in f for f in results["findings"])
    for name in ("kl_by_position", "avg_kl_vs_L", "avg_kl_vs_mi_per_state", "k_eff_vs_L"):
        assert (plots / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "laptop"], "unknown sweep preset 'laptop'"),
        (["--models", "gpt2,lstm"], "--models ['lstm'] are not in preset 'cpu'"),
        (["--layers", "0-1"], "--layers must be ≥ 1"),
    ],
)
def test_bad_arguments_give_one_clear_line(argv, message, capsys):
    assert cli.main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(sweep.PRESETS))
def test_every_preset_builds_its_models(name):
    """Every model of every preset is a valid Gaussian-head config at every L (no training)."""
    from l2m_jax import models
    from l2m_jax.experiments import train as train_exp

    preset = sweep.PRESETS[name]
    assert len(preset.steps) == len(preset.layers)
    family = train_exp.gaussian_family(preset.family, preset.channels, layers=preset.layers[-1])
    for spec in preset.models:
        config = train_exp.gaussian_model(spec.preset, family, **dict(spec.overrides))
        assert config.head == "gaussian" and config.channels == preset.channels
        assert config.max_positions == family.length
        assert models.history_state_size(config, family.length // 2).total > 0
