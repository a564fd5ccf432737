"""`l2m train`: token training and evaluation conventions, and clear errors for bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2m_jax import cli, models, train
from l2m_jax.experiments import train as train_exp


def test_token_eval_nll_is_the_estimators_logprob(tmp_path):
    """Held-out NLL_i equals −log q(token_i | BOS, tokens_<i) from models.token_logprob_fn."""
    config = models.preset("gpt2-tiny", vocab_size=257, bos_id=256, max_positions=16)
    params = models.init(config, jax.random.key(0))
    tokens_BxL = np.asarray(jax.random.randint(jax.random.key(1), (8, 16), 0, 256), np.int32)
    task = train.TokenTask(
        apply_fn=functools.partial(models.apply, config),
        batches=lambda step, batch: None,
        seq_len=16,
        eval_data=np.concatenate([np.full((8, 1), 256, np.int32), tokens_BxL], axis=1),
    )
    data = jax.device_put(jnp.asarray(task.eval_data))
    metrics = train.evaluate(params, task, data, chunk=4)
    logp_BxL = models.token_logprob_fn(config)(params, jnp.asarray(tokens_BxL))
    np.testing.assert_allclose(
        metrics["nll_by_position"], -np.asarray(logp_BxL, np.float64).mean(0), rtol=2e-6
    )
    assert metrics["avg_nll"] == pytest.approx(metrics["nll_by_position"].mean())


def test_text_training_runs_and_reports_nll_by_position(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    sentence = "The quick brown fox jumps over the lazy dog. It sleeps. "
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(sentence * 40)
    out = tmp_path / "runs"
    argv = [
        "train",
        "--data",
        "text",
        "--corpus",
        str(folder),
        "--tokenizer",
        "bytes",
        "--model",
        "gpt2-tiny",
        "--seq-len",
        "16",
        "--steps",
        "6",
        "--batch",
        "8",
        "--eval-size",
        "8",
        "--lr",
        "1e-2",
        "--out",
        str(out),
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert cli.main(argv) == 0
    summary = __import__("json").loads((tmp_path / "r.json").read_text())["runs"][0]
    assert summary["steps"] == 6 and len(summary["nll_by_position"]) == 16
    assert np.all(np.isfinite(summary["nll_by_position"]))
    assert summary["avg_nll"] < np.log(257)  # 6 steps at lr 1e-2 beat the uniform guess
    assert train.read_run_config(out)["data"]["tokenizer"] == "bytes"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model", "--layers", "2"], "unknown preset 'no-such-model'"),
        (["--model", "gauss-gpt2", "--seq-len", "100"], "produces only L = 4^layers"),
        (["--model", "gauss-gpt2", "--layers", "2", "--seq-len", "16"], "exactly one of"),
        (["--model", "gpt2-tiny", "--layers", "2"], "has a token head"),
        (
            ["--model", "gauss-gpt2", "--data", "text", "--preset", "cpu", "--steps", "1"],
            "has a Gaussian head",
        ),
        (["--model", "gauss-gpt2", "--layers", "2", "--preset", "cpu"], "unknown preset 'cpu'"),
        (
            ["--model", "gauss-gpt2", "--layers", "2", "--steps", "10", "--warmup", "20"],
            "warmup_steps",
        ),
        (["--model", "gauss-gpt2", "--layers", "2", "--resume"], "--resume needs --out"),
    ],
)
def test_bad_arguments_give_one_clear_line(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(train_exp, "text_data", lambda args, config: None)  # no corpus needed
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_run_directory_and_foreign_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert (
        cli.main(
            ["train", "--model", "gauss-gpt2", "--layers", "1", "--out", str(missing), "--resume"]
        )
        == 2
    )
    assert "nothing to resume" in capsys.readouterr().err
    assert not missing.exists()  # a failed resume creates nothing
