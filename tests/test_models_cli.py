"""`l2m models`: history-state sizes, parameter counts and the L²M condition in JSON."""

import json

from l2m_jax import models
from l2m_jax.cli import main
from l2m_jax.sources import subvolume_gaussian

PRESETS = "gpt2,mamba-130m,mamba2-130m,gauss-mamba-z32"


def _run(tmp_path, seq_len, channels=4):
    path = tmp_path / f"models_{seq_len}.json"
    args = ["models", "--seq-len", str(seq_len), "--channels", str(channels)]
    assert main([*args, "--presets", PRESETS, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_models_cli_reports_state_sizes_and_the_l2m_condition(tmp_path, capsys):
    small, large = _run(tmp_path, 64), _run(tmp_path, 256)
    for result, L in ((small, 64), (large, 256)):
        layers = {64: 3, 256: 4}[L]
        i_bp = subvolume_gaussian(layers, 1).bipartite_mi(L // 2)
        assert abs(result["i_bp_per_channel"] - i_bp) < 1e-9
        assert abs(result["i_bp"] - 4 * i_bp) < 1e-9
        for record in result["presets"]:
            config = models.preset(record["preset"])
            assert record["state_total"] == models.history_state_size(config, L // 2).total
            assert record["meets_l2m"] == (record["state_total"] >= result["i_bp"])
    by_name = [{r["preset"]: r for r in res["presets"]} for res in (small, large)]
    # transformers: linear in the position (4x the split -> 4x the state), exact formula
    assert by_name[0]["gpt2"]["state_total"] == 12 * 2 * 12 * 64 * 32
    assert by_name[1]["gpt2"]["state_total"] == 4 * by_name[0]["gpt2"]["state_total"]
    assert by_name[0]["gpt2"]["params"] == 124_439_808  # GPT-2 small with tied embeddings
    # SSMs: constant
    for name in ("mamba-130m", "mamba2-130m", "gauss-mamba-z32"):
        assert by_name[0][name]["state_total"] == by_name[1][name]["state_total"]
    assert by_name[0]["gauss-mamba-z32"]["state_total"] == 32
    assert by_name[1]["gauss-mamba-z32"]["meets_l2m"] is False
    assert "I_BP(L/2; L)" in capsys.readouterr().out


def test_models_cli_says_when_l_is_not_a_power_of_four(tmp_path, capsys):
    result = _run(tmp_path, 100)
    assert result["i_bp"] is None and "not a power of 4" in result["note"]
    assert all(r["meets_l2m"] is None for r in result["presets"])
    assert "not a power of 4" in capsys.readouterr().out
    assert main(["models", "--presets", "gpt9"]) == 2
    assert "unknown preset" in capsys.readouterr().err
