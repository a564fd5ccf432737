"""Training machinery: exact KL vs Monte Carlo, data parallelism, checkpoint/resume, bad input.

The model here is a tiny causal linear predictor (position-dependent weights on the inputs so
far and a learned std per position). It can represent the exact conditionals of any Gaussian
family, so the loss has a known minimum (0) and the tests need no architecture.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2m_jax import sources, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_init(seq_len: int, key) -> dict:
    return {
        "w_LxL": 0.1 * jax.random.normal(key, (seq_len, seq_len)),
        "log_std_L": jnp.zeros((seq_len,)),
    }


def tiny_apply(params, inputs_BxLxC):
    """mean_i = Σ_{j≤i} w[i, j] · inputs_j (inputs are the sequence behind a zero BOS)."""
    w_LxL = jnp.tril(params["w_LxL"])
    mean_BxLxC = jnp.einsum("ij,bjc->bic", w_LxL, inputs_BxLxC)
    std_BxLxC = jnp.broadcast_to(jnp.exp(params["log_std_L"])[None, :, None], mean_BxLxC.shape)
    return mean_BxLxC, std_BxLxC


@functools.cache
def tiny_task(layers=2, channels=2):
    """One task object per shape, so tests share compiled steps."""
    return train.GaussianTask(sources.subvolume_gaussian(layers, channels), tiny_apply)


def small_config(**overrides):
    base = dict(
        steps=12,
        batch_size=8,
        learning_rate=3e-2,
        warmup_steps=2,
        eval_every=6,
        eval_size=16,
        checkpoint_every=3,
        log_every=2,
        seed=3,
    )
    return train.TrainConfig(**{**base, **overrides})


def tree_max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


def test_kl_loss_is_monte_carlo_expectation_of_log_ratio():
    """Exact per-token KL = E_p[log p(z_i|z_<i) − log q(z_i|z_<i)], checked by Monte Carlo."""
    task = tiny_task(layers=2, channels=4)
    params = tiny_init(task.seq_len, jax.random.key(1))
    params["log_std_L"] = 0.3 * jax.random.normal(jax.random.key(2), (task.seq_len,))
    x = task.sample(jax.random.key(3), 4096)
    per_token = jax.jit(task.per_token)(params, x)
    kl_BxL = np.asarray(per_token["kl"], np.float64)
    # Monte Carlo: log p − log q at the sampled targets, from the family's exact conditionals.
    targets = x[:, 1:]
    mean_p, std_p = task.family.conditionals(targets)
    mean_q, std_q = tiny_apply(params, x[:, :-1])
    log_ratio = train.gaussian_nll(targets, mean_q, std_q) - train.gaussian_nll(
        targets, mean_p, std_p
    )
    log_ratio_B = np.asarray(log_ratio, np.float64).mean(axis=(1, 2))
    stderr = log_ratio_B.std(ddof=1) / np.sqrt(len(log_ratio_B))
    exact = kl_BxL.mean()
    assert exact > 0.05  # a visibly wrong model, so the check is not vacuous
    assert abs(log_ratio_B.mean() - exact) < 4 * stderr, (log_ratio_B.mean(), exact, stderr)
    # The NLL reported alongside is the same per-token −log q.
    np.testing.assert_allclose(
        np.asarray(per_token["nll"]),
        np.asarray(train.gaussian_nll(targets, mean_q, std_q)).mean(-1),
        rtol=1e-6,
    )


def test_kl_vanishes_at_the_exact_conditionals():
    task = tiny_task(layers=2, channels=2)
    w_exact = np.asarray(task.family.predictor.weights_LxL)
    L = task.seq_len
    w_model = np.zeros((L, L), np.float32)
    w_model[:, 1:] = w_exact[:, :-1]  # input j is z_{j-1}
    params = {"w_LxL": jnp.asarray(w_model), "log_std_L": jnp.log(task.family.predictor.std_L)}
    x = task.sample(jax.random.key(0), 64)
    kl = np.asarray(task.per_token(params, x)["kl"])
    assert np.abs(kl).max() < 2e-5


def test_eight_devices_give_the_one_device_loss_curve():
    assert jax.device_count() == 8
    task = tiny_task()
    params = tiny_init(task.seq_len, jax.random.key(0))
    config = small_config(checkpoint_every=100)
    curves = {}
    for n in (8, 1):
        mesh = train.data_mesh(jax.devices()[:n])
        result = train.fit(task, params, config, mesh=mesh, progress=False)
        curves[n] = (np.array([r["loss"] for r in result.history]), result)
    loss8, res8 = curves[8]
    loss1, res1 = curves[1]
    assert len(loss8) == 12 and loss8[-1] < loss8[0]
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    np.testing.assert_allclose(
        res8.evals[-1]["kl_by_position"], res1.evals[-1]["kl_by_position"], rtol=1e-5
    )
    assert res8.state.params["w_LxL"].sharding.mesh.size == 8


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.test_train import small_config, tiny_init, tiny_task
import jax
from l2m_jax import train

def kill_at(step, state):
    if step == {kill_step}:
        os.kill(os.getpid(), signal.SIGKILL)

task = tiny_task()
train.fit(task, tiny_init(task.seq_len, jax.random.key(0)), small_config(), out_dir={out!r},
          run_config={{"model": "tiny"}}, callback=kill_at, progress=False)
"""


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    task = tiny_task()
    params = tiny_init(task.seq_len, jax.random.key(0))
    config = small_config()  # 12 steps, checkpoints every 3
    full = train.fit(
        task,
        params,
        config,
        out_dir=tmp_path / "full",
        run_config={"model": "tiny"},
        progress=False,
    )

    out = tmp_path / "killed"
    script = _KILLED_RUN.format(repo=str(REPO), kill_step=8, out=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    log_before = train.read_jsonl(out / "log.jsonl")
    assert max(r["step"] for r in log_before) == 8  # steps 7, 8 ran after the last checkpoint

    resumed = train.fit(
        task, params, config, out_dir=out, run_config={"model": "tiny"}, resume=True, progress=False
    )
    assert [r["step"] for r in resumed.history] == list(range(7, 13))  # from checkpoint 6
    assert int(resumed.state.step) == 12
    assert tree_max_diff(resumed.state.params, full.state.params) <= 1e-6
    assert tree_max_diff(resumed.state.opt_state, full.state.opt_state) <= 1e-6
    # No step lost or repeated in the log; the curve is the uninterrupted one.
    log = train.read_jsonl(out / "log.jsonl")
    full_log = train.read_jsonl(tmp_path / "full" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in log], [r["loss"] for r in full_log], rtol=1e-6)
    assert [r["step"] for r in train.read_jsonl(out / "eval.jsonl")] == [6, 12]


def _tree_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_bad_resumes_fail_clearly_and_overwrite_nothing(tmp_path):
    task = tiny_task()
    params = tiny_init(task.seq_len, jax.random.key(0))
    config = small_config()
    run = {"model": "tiny"}
    with pytest.raises(ValueError, match="does not exist"):
        train.fit(task, params, config, out_dir=tmp_path / "none", run_config=run, resume=True)
    out = tmp_path / "run"
    train.fit(task, params, config, out_dir=out, run_config=run, progress=False)
    digest = _tree_digest(out)

    with pytest.raises(ValueError, match="already holds a run"):
        train.fit(task, params, config, out_dir=out, run_config=run)
    with pytest.raises(ValueError, match=r"different config \(model: saved 'tiny', now 'other'"):
        train.fit(task, params, config, out_dir=out, run_config={"model": "other"}, resume=True)
    with pytest.raises(ValueError, match=r"different config \(train.learning_rate"):
        train.fit(
            task, params, small_config(learning_rate=1.0), out_dir=out, run_config=run, resume=True
        )
    assert _tree_digest(out) == digest

    # Corrupt every file of the saved step: a clear error, and the files are left as they were.
    for f in (out / "checkpoints" / "12").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage" * 3)
    digest = _tree_digest(out)
    with pytest.raises(ValueError, match="corrupt"):
        train.fit(task, params, config, out_dir=out, run_config=run, resume=True)
    assert _tree_digest(out) == digest

    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is corrupt"):
        train.fit(task, params, config, out_dir=out, run_config=run, resume=True)

    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text(json.dumps({**run, "train": dataclasses.asdict(config)}))
    with pytest.raises(ValueError, match="checkpoints is missing"):
        train.fit(task, params, config, out_dir=no_ckpt, run_config=run, resume=True)


def test_config_and_batch_errors_name_the_fix():
    with pytest.raises(ValueError, match="warmup_steps"):
        train.TrainConfig(steps=100, warmup_steps=2000)
    with pytest.raises(ValueError, match="batch_size"):
        train.TrainConfig(batch_size=0)
    task = tiny_task()
    params = tiny_init(task.seq_len, jax.random.key(0))
    with pytest.raises(ValueError, match="multiple of the 8 data-parallel devices"):
        train.fit(task, params, small_config(batch_size=4, eval_size=16), progress=False)
