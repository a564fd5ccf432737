"""The `l2m` command line: dispatch, JSON contents, plots and clean errors."""

import json
import subprocess
import sys

import pytest

from l2m_jax.cli import COMMANDS, main


def test_gaussian_mi_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "gmi.json", tmp_path / "gmi.png"
    rc = main(
        [
            "gaussian-mi",
            "--family",
            "subvolume",
            "--layers",
            "1-4",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    rec = json.loads(out.read_text())
    for key in ("family", "L", "bipartite_mi", "two_point_mi", "exponent", "exponent_stderr"):
        assert key in rec
    assert rec["family"] == "subvolume" and rec["L"] == [4, 16, 64, 256]
    assert rec["bipartite_mi"][1] == pytest.approx(1.172, abs=6e-4)
    assert rec["families"]["log"]["two_point_mi"] == pytest.approx(rec["two_point_mi"], rel=1e-9)
    assert png.stat().st_size > 10_000
    assert "fitted exponent" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(capsys):
    assert main(["gaussian-mi", "--layers", "0-2"]) == 2
    assert "layers must be integers ≥ 1" in capsys.readouterr().err
    assert main(["gaussian-mi", "--copies", "5", "--layers", "1-2"]) == 2
    assert "copies must be an integer in 1..branching" in capsys.readouterr().err


def test_every_command_has_a_module_and_python_m_works():
    import importlib

    for module, _ in COMMANDS.values():
        mod = importlib.import_module(f"l2m_jax.experiments.{module}")
        assert callable(mod.add_arguments) and callable(mod.run)
    res = subprocess.run(
        [sys.executable, "-m", "l2m_jax", "--help"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0 and "gaussian-mi" in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "l2m_jax", "nope"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2 and "unknown command" in res.stderr
