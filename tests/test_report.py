"""`l2m report`: parts run as their own commands; results, status and summary are written."""

import json

from l2m_jax.cli import main


def test_report_runs_the_chosen_parts(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--out", str(out), "--only", "gaussian_mi"]) == 0
    status = json.loads((out / "report.json").read_text())
    assert list(status["parts"]) == ["gaussian_mi"]
    assert status["parts"]["gaussian_mi"]["returncode"] == 0
    rec = json.loads((out / "gaussian_mi.json").read_text())
    assert 0.78 <= rec["exponent"] <= 0.82
    summary = (out / "summary.md").read_text()
    assert f"L^{rec['exponent']:.4f}" in summary and "![gaussian_mi](gaussian_mi.png)" in summary
    assert (out / "gaussian_mi.png").stat().st_size > 10_000
    assert "exit 0" in capsys.readouterr().out


def test_report_rejects_unknown_parts(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--only", "gaussian_mi,nope"]) == 2
    assert "unknown part(s) ['nope']" in capsys.readouterr().err
