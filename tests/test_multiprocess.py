"""Multi-process runs under jax.distributed on one machine: 2 processes × 4 devices = 1 × 8.

Every test starts real processes on localhost (JAX_COORDINATOR_ADDRESS on a free port,
JAX_NUM_PROCESSES, JAX_PROCESS_ID, gloo CPU collectives, 4 simulated CPU devices each) and
compares what they computed with the same computation in this pytest process (1 process,
8 devices). A compilation cache shared by the children keeps repeated launches cheap; every
child has a timeout.

  worker (one 2-process launch, several checks): a Gaussian training run (`train.fit`),
    pair counts and two-point MI, bipartite per-document scores, `gather_arrays` /
    `agreed_errors` / `on_primary`, and `l2m train --data text` on a per-host corpus with
    every file opened recorded (no process may open another's documents).
  `python -m l2m_jax train`: process 1 killed (process 0 must stop with an error within
    60 s), or both killed; resumed to the end, the parameters equal the worker's
    uninterrupted run exactly.
  `l2m two-point` (in the worker, and docs/scaling.md's two-process launch run by bash as
    written): the figures of the 1-process command.

The children run `python -m tests.test_multiprocess WORK_DIR` (the worker) or the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 4  # per process; 2 processes × 4 = the 8 devices of this pytest process
TIMEOUT_S = 420  # per launch: generous for 2 loaded CPU cores, but bounded

# `l2m train` on text: 2 processes, each with its own 4 of the corpus's 8 files.
TEXT_STEPS, TEXT_EVERY = 12, 4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog. ",
    "It sleeps by the river until the sun goes down. ",
    "Then the owls wake, and the night birds sing. ",
    "A small boat drifts past the old mill. ",
]


def _text_argv(corpus: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        "text",
        "--corpus",
        str(corpus),
        "--tokenizer",
        "bytes",
        "--model",
        "gpt2-tiny",
        "--seq-len",
        "16",
        "--max-docs",
        "7",  # of the 8 books: process 0 reads 0, 2, 4, 6 and process 1 reads 1, 3, 5
        "--steps",
        str(TEXT_STEPS),
        "--batch",
        "8",
        "--eval-size",
        "8",
        "--lr",
        "2e-3",
        "--checkpoint-every",
        str(TEXT_EVERY),
        "--eval-every",
        "8",
        "--out",
        str(out),
        *extra,
    ]


def _write_corpus(folder: pathlib.Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(8):
        text = "".join(SENTENCES[(i + k) % 4] for k in range(12 + i))
        (folder / f"book{i}.txt").write_text(text)
        names.append(f"book{i}.txt")
    return names


# ----------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], work: pathlib.Path, n: int = 2) -> list[subprocess.Popen]:
    """Starts `python ARGV` as processes 0..n-1 of one jax.distributed job (logs in work/)."""
    port = _free_port()
    procs = []
    for i in range(n):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(n),
            JAX_PROCESS_ID=str(i),
            JAX_PLATFORMS="cpu",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
            JAX_COMPILATION_CACHE_DIR=str(work.parent / "jax-cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            L2M_CACHE=str(work.parent / "l2m-cache"),
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            PYTHONUNBUFFERED="1",
        )
        log = work / f"{argv[1] if argv[0] == '-m' else 'run'}-{int(time.time() * 1e3)}-p{i}"
        procs.append(
            subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO,
                env=env,
                stdout=open(f"{log}.out", "w"),  # noqa: SIM115 (closed with the process)
                stderr=open(f"{log}.err", "w"),  # noqa: SIM115
            )
        )
        procs[-1].log = log  # type: ignore[attr-defined]
    return procs


def _stderr(proc) -> str:
    return pathlib.Path(f"{proc.log}.err").read_text()[-3000:]


def _wait(procs, timeout: float = TIMEOUT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"a process ran past {timeout} s:\n{_stderr(proc)}")
    return codes


def _checkpoints(out: pathlib.Path) -> list[int]:
    ckpt = out / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _wait_for_checkpoint(procs, out: pathlib.Path, step: int, timeout: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in _checkpoints(out)):
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"a process ended before checkpoint {step}:\n{_stderr(procs[0])}")
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"no checkpoint {step} within {timeout} s")
        time.sleep(0.02)


# ----------------------------------------------------------------------------- the worker


def _worker(work: pathlib.Path) -> None:
    """Runs in each of the 2 processes: every library check, results in work/*.p{i}.npz."""
    from l2m_jax import distributed

    distributed.initialize()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from l2m_jax import cli, information, train
    from l2m_jax.experiments import train as train_exp
    from tests.test_train import small_config, tiny_init, tiny_task

    pid = jax.process_index()
    assert jax.process_count() == 2 and jax.device_count() == 2 * DEVICES

    clock = [time.perf_counter()]

    def save(name: str, **arrays) -> None:
        np.savez(work / f"{name}.p{pid}.npz", **arrays)
        now = time.perf_counter()
        print(f"worker {pid}: {name} in {now - clock[0]:.1f} s", file=sys.stderr, flush=True)
        clock[0] = now

    # Collectives: ragged uint64 rows in several blocks, errors and decisions shared.
    distributed._GATHER_BYTES = 4096  # 512 uint64 per call: 3 calls
    local = (np.arange(900 + 300 * pid, dtype=np.uint64) + np.uint64(2**40 + pid)).reshape(-1, 1)
    parts = distributed.gather_arrays(local)
    distributed._GATHER_BYTES = 64 << 20
    try:
        with distributed.agreed_errors():
            if pid == 1:
                raise ValueError("bad input on 1")
        agreed = ""
    except ValueError as err:
        agreed = str(err)
    try:
        distributed.on_primary(lambda: (_ for _ in ()).throw(ValueError("no run here")))
        primary = ""
    except ValueError as err:
        primary = str(err)
    save(
        "collectives",
        part0=parts[0],
        part1=parts[1],
        agreed=agreed,
        primary=primary,
        decided=distributed.on_primary(lambda: {"pid": jax.process_index()})["pid"],
        summed=distributed.sum_arrays(np.array([2**40 + pid, 1], np.int64)),
    )

    # A Gaussian training run: fresh samples inside the step, gradients over 8 devices.
    task = tiny_task()
    result = train.fit(task, tiny_init(task.seq_len, jax.random.key(0)), small_config())
    save(
        "gaussian",
        loss=np.array([r["loss"] for r in result.history]),
        kl=result.evals[-1]["kl_by_position"],
        w=np.asarray(result.state.params["w_LxL"]),
    )

    # Pair counts and I_TP: each process its own documents, V inferred across processes.
    docs = _count_docs()
    mine = distributed.shard_for_host(docs)
    counts = information.count_pairs(mine, COUNT_DISTANCES, progress=False)
    tp = information.two_point_mi(mine, COUNT_DISTANCES, **TWO_POINT)
    # A surrogate and a bootstrap: shifts and shuffles are each process's own draws (unlike
    # one process's), but both processes must agree on every figure.
    sur = information.two_point_mi(mine, COUNT_DISTANCES, **SURROGATE)
    save(
        "counts",
        mi=tp.mi,
        stderr=tp.stderr,
        sur_raw=sur.mi_raw,
        sur_mi=sur.mi,
        sur_boot=np.array(sur.bootstrap[:3]),
        **_count_arrays(counts),
    )

    # Bipartite: each process scores its own documents; per-document sums gathered.
    src, docs_NxL = _bipartite_docs()
    half = len(docs_NxL) // 2
    res = information.bipartite_mi(
        src.logprob_fn, src.params, docs_NxL[pid * half : (pid + 1) * half], **BIPARTITE
    )
    save("bipartite", **_bipartite_arrays(res))

    # `l2m two-point` on a token file: each process reads its own rows.
    assert cli.main([*_two_point_argv(work), str(work / f"two-point.p{pid}.json")]) == 0

    # `l2m train` on text from a per-host corpus: record every file opened and the data.
    corpus = work / "corpus"
    opened: list[str] = []
    sys.addaudithook(
        lambda event, args: (
            opened.append(str(args[0]))
            if event == "open" and str(args[0]).startswith(str(corpus))
            else None
        )
    )
    seen = {}
    loader = train_exp.text_data
    train_exp.text_data = lambda args, config: seen.setdefault("data", loader(args, config))
    argv = _text_argv(corpus, work / "text-full", "--json", str(work / "text-full.json"))
    assert cli.main(argv) == 0
    data = seen["data"]
    save(
        "text",
        opened=np.array(sorted({pathlib.Path(p).name for p in opened})),
        train=data.train_BxL,
        eval=data.eval_BxL,
    )


COUNT_DISTANCES = (1, 2, 3, 5, 8, 13)
TWO_POINT = dict(surrogate=None, fit_range="all", progress=False)
SURROGATE = dict(surrogate="shift", shuffles=2, bootstrap=16, blocks=4, fit_range="all")


def _two_point_argv(work: pathlib.Path) -> list[str]:
    tokens = work / "docs.npz"  # `_count_docs()`, written by the `worker` fixture
    argv = ["two-point", "--tokens", str(tokens), "--distances", "1-16", "--quiet"]
    return [*argv, "--fit-range", "all", "--json"]


# No data-processing bound: its surrogate shuffles each process's own documents (another
# draw than one process's), and the fits' split rule would follow it.
BIPARTITE = dict(
    splits=(2, 4, 8, 16), ratio=2, batch_size=4, bootstrap=64, check_bound=False, progress=False
)


def _count_docs() -> list[np.ndarray]:
    from l2m_jax import sources

    tokens = np.asarray(sources.markov_chain(seed=0).sample(jax.random.key(0), 11, 420))
    return [row[: 50 + 37 * i] for i, row in enumerate(tokens)]  # 11 different lengths


def _count_arrays(counts) -> dict:
    out = {"unigrams": counts.unigrams, "totals": np.array([counts.tokens, counts.documents])}
    out["vocab"] = np.array(counts.vocab_size)
    for d, table in zip(counts.distances, counts.tables, strict=True):
        out[f"keys{d}"], out[f"counts{d}"] = table.keys, table.counts
    return out


def _bipartite_docs():
    from l2m_jax import sources

    src = sources.markov_chain(seed=1)
    return src, np.asarray(src.sample(jax.random.key(2), 16, 40))


def _bipartite_arrays(res) -> dict:
    out = {f"score_{k}": v for k, v in res.scores._asdict().items()}
    for key in ("direct", "direct_uncorrected", "vclub"):
        out[key], out[f"{key}_stderr"] = getattr(res, key), getattr(res, f"{key}_stderr")
        fit = getattr(res, f"{key}_fit")
        interval = None if fit is None else fit.interval
        out[f"{key}_interval"] = np.array((np.nan, np.nan) if interval is None else interval)
    out["ngram_entropy"] = np.array(res.ngram_entropy)
    out["ngram_tokens"] = np.array(res.ngram_tokens)
    out["logprob_joint"] = res.logprobs.joint
    return out


def _load(work: pathlib.Path, name: str) -> list[dict]:
    return [dict(np.load(work / f"{name}.p{i}.npz")) for i in range(2)]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The worker's 2-process launch (one per module); its work directory."""
    work = tmp_path_factory.mktemp("multiprocess") / "worker"
    work.mkdir()
    _write_corpus(work / "corpus")
    np.savez(work / "docs.npz", *_count_docs())
    procs = _start(["-m", "tests.test_multiprocess", str(work)], work)
    codes = _wait(procs)
    assert codes == [0, 0], "\n".join(_stderr(p) for p in procs)
    return work


# ----------------------------------------------------------------------------- the checks

pytestmark = pytest.mark.slow


def test_collectives_move_exact_bytes_and_share_errors(worker):
    for got in _load(worker, "collectives"):
        for p in (0, 1):
            want = np.arange(900 + 300 * p, dtype=np.uint64) + np.uint64(2**40 + p)
            np.testing.assert_array_equal(got[f"part{p}"][:, 0], want)
            assert got[f"part{p}"].dtype == np.uint64
        assert int(got["decided"]) == 0  # the primary's answer, on both
        assert got["primary"] == "no run here"
        np.testing.assert_array_equal(got["summed"], [2**41 + 1, 2])
    p0, p1 = _load(worker, "collectives")
    assert p1["agreed"] == "bad input on 1"  # its own error
    assert p0["agreed"] == "process 1 of 2: bad input on 1"  # the same failure, named


def test_gaussian_training_matches_one_process_with_eight_devices(worker):
    from l2m_jax import train
    from tests.test_train import small_config, tiny_init, tiny_task

    task = tiny_task()
    ref = train.fit(task, tiny_init(task.seq_len, jax.random.key(0)), small_config())
    assert jax.device_count() == 8 and jax.process_count() == 1
    loss = np.array([r["loss"] for r in ref.history])
    for got in _load(worker, "gaussian"):
        np.testing.assert_allclose(got["loss"], loss, rtol=1e-6, atol=0)
        np.testing.assert_allclose(got["kl"], ref.evals[-1]["kl_by_position"], rtol=1e-6)
        np.testing.assert_allclose(got["w"], np.asarray(ref.state.params["w_LxL"]), atol=1e-6)


def test_pair_counts_are_identical_and_mi_agrees(worker, x64):
    from l2m_jax import information

    docs = _count_docs()
    ref = _count_arrays(information.count_pairs(docs, COUNT_DISTANCES, progress=False))
    tp = information.two_point_mi(docs, COUNT_DISTANCES, **TWO_POINT)
    both = _load(worker, "counts")
    for key in ("sur_mi", "sur_boot"):  # the processes agree on the surrogate's figures
        np.testing.assert_array_equal(both[1][key], both[0][key])
    for got in both:
        np.testing.assert_allclose(got.pop("sur_raw"), tp.mi, rtol=0, atol=1e-12)
        del got["sur_mi"], got["sur_boot"]
        assert set(got) == {*ref, "mi", "stderr"}
        for key, want in ref.items():
            np.testing.assert_array_equal(got[key], want, err_msg=key)
            assert got[key].dtype == want.dtype, key
        np.testing.assert_allclose(got["mi"], tp.mi, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["stderr"], tp.stderr, rtol=0, atol=1e-12)


def test_bipartite_per_document_scores_match(worker):
    from l2m_jax import information

    src, docs_NxL = _bipartite_docs()
    ref = _bipartite_arrays(
        information.bipartite_mi(src.logprob_fn, src.params, docs_NxL, **BIPARTITE)
    )
    for got in _load(worker, "bipartite"):
        for key, want in ref.items():
            np.testing.assert_allclose(got[key], want, rtol=1e-12, atol=1e-12, err_msg=key)


def _text_reference(work: pathlib.Path):
    """The 1-process run fed the 2-process run's global batches: process 0's rows, then 1's."""
    from l2m_jax.experiments import train as train_exp
    from l2m_jax.sources import tokenize

    shards = _load(work, "text")
    parser = __import__("argparse").ArgumentParser()
    train_exp.add_arguments(parser)
    args = parser.parse_args(_text_argv(work / "corpus", work / "unused")[1:])
    train_exp._apply_defaults(args)
    config = train_exp.train_config(args)
    tokenizer = tokenize.get_tokenizer("bytes")
    data = train_exp.TextData("corpus", tokenizer, shards[0]["train"], shards[0]["eval"], 1, (0, 0))
    task, params, _ = train_exp.text_task("gpt2-tiny", data, config)  # as `l2m train` builds it
    _, bos = train_exp.token_model("gpt2-tiny", tokenizer, 16)
    local = [train_exp._epoch_batches(s["train"], bos, config.seed, processes=2) for s in shards]
    task = dataclasses.replace(
        task,
        batches=lambda step, batch: np.concatenate([f(step, batch) for f in local]),
        eval_data=np.concatenate([train_exp._with_bos(s["eval"], bos) for s in shards]),
    )
    return task, params, config


def test_text_training_reads_only_its_own_documents_and_matches(worker):
    from l2m_jax import train

    shards = _load(worker, "text")
    names = sorted(p.name for p in (worker / "corpus").iterdir())
    for pid, shard in enumerate(shards):
        assert sorted(shard["opened"]) == names[pid:7:2]  # its own books, no other file
    task, params, config = _text_reference(worker)
    ref = train.fit(task, params, config, progress=False)
    log = train.read_jsonl(worker / "text-full" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, TEXT_STEPS + 1))
    np.testing.assert_allclose(
        [r["loss"] for r in log], [r["loss"] for r in ref.history], rtol=1e-6, atol=0
    )
    # Per-position means over 8 held-out rows of a float32 model whose parameters differ in
    # the last bits (gradients summed in another order across processes): ~1e-6 apart.
    evals = train.read_jsonl(worker / "text-full" / "eval.jsonl")
    np.testing.assert_allclose(
        evals[-1]["nll_by_position"], ref.evals[-1]["nll_by_position"], rtol=1e-5
    )
    summary = json.loads((worker / "text-full.json").read_text())
    assert (summary["process_count"], summary["device_count"]) == (2, 8)
    assert summary["runs"][0]["train_chunks"] == sum(len(s["train"]) for s in shards)
    assert train.read_run_config(worker / "text-full")["data"]["processes"] == 2


def _restore(out: pathlib.Path, work: pathlib.Path):
    """The final train state of a run directory, restored into this (1-process) mesh."""
    from l2m_jax import train
    from l2m_jax.train import checkpoint, step

    _, params, config = _text_reference(work)
    mesh = train.data_mesh()
    template = jax.device_put(
        train.init_state(params, train.make_optimizer(config), config.seed), step.replicated(mesh)
    )
    manager = checkpoint.checkpoint_manager(out, config.keep_checkpoints)
    try:
        return checkpoint.restore_state(manager, template)
    finally:
        manager.close()


def _resumed_run_equals_the_uninterrupted_one(worker, work, argv, out) -> None:
    from l2m_jax import train

    assert train.read_run_config(out)["data"]["processes"] == 2  # the directory is intact
    assert 0 < _checkpoints(out)[-1] < TEXT_STEPS, "the run ended before it was killed"
    procs = _start([*argv, "--resume"], work)
    assert _wait(procs) == [0, 0], _stderr(procs[0])
    log = train.read_jsonl(out / "log.jsonl")
    full_log = train.read_jsonl(worker / "text-full" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, TEXT_STEPS + 1))  # none lost or twice
    assert [r["loss"] for r in log] == [r["loss"] for r in full_log]
    resumed, full = _restore(out, worker), _restore(worker / "text-full", worker)
    assert int(resumed.step) == int(full.step) == TEXT_STEPS
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_train_one_process_killed_the_other_stops_and_resume_completes(worker):
    """`python -m l2m_jax train`: SIGKILL process 1 at checkpoint 4; process 0 must stop by
    itself within 60 s with an error; `--resume` completes, with the parameters of the
    uninterrupted 2-process run, exactly."""
    work = worker.parent / "kill-one"
    work.mkdir()
    out = work / "run"
    argv = ["-m", "l2m_jax", *_text_argv(worker / "corpus", out)]
    procs = _start(argv, work)
    _wait_for_checkpoint(procs, out, TEXT_EVERY)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = _wait(procs[:1], timeout=90)[0]
    waited = time.monotonic() - killed
    print(f"process 0 stopped {waited:.1f} s after process 1 was killed")
    err = _stderr(procs[0])
    assert code != 0 and waited < 60, (code, waited, err)
    assert (
        "a computation across processes failed" in err
        or "JAX distributed service detected fatal errors" in err
    ), err
    assert _wait(procs[1:]) == [-signal.SIGKILL]
    _resumed_run_equals_the_uninterrupted_one(worker, work, argv, out)


def test_cli_train_every_process_killed_and_resumed(worker):
    """SIGKILL both processes at checkpoint 4 (a job preempted whole); `--resume` completes
    with the uninterrupted run's parameters, exactly."""
    work = worker.parent / "kill-all"
    work.mkdir()
    out = work / "run"
    argv = ["-m", "l2m_jax", *_text_argv(worker / "corpus", out)]
    procs = _start(argv, work)
    _wait_for_checkpoint(procs, out, TEXT_EVERY)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    assert _wait(procs) == [-signal.SIGKILL] * 2
    _resumed_run_equals_the_uninterrupted_one(worker, work, argv, out)


def _same_figures(two: dict, one: dict, devices: int) -> None:
    assert (two.pop("process_count"), one.pop("process_count")) == (2, 1)
    assert (two.pop("device_count"), one.pop("device_count")) == (devices, 8)
    for key in ("tokens", "documents", "pairs", "distances", "vocab_size", "exact", "surrogate"):
        assert two.get(key) == one.get(key), key
    # The raw estimates and their offset fit; a surrogate is each process's own random draw.
    np.testing.assert_allclose(two["mi_raw"], one["mi_raw"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(two["stderr_raw"], one["stderr_raw"], rtol=0, atol=1e-12)
    two_fit, one_fit = two["offset_fit"], one["offset_fit"]
    assert one_fit is not None
    np.testing.assert_allclose(two_fit["alpha"], one_fit["alpha"], rtol=1e-9)
    if two["surrogate"] is None:
        np.testing.assert_allclose(two["mi"], one["mi"], rtol=0, atol=1e-12)


def test_cli_two_point_with_a_token_file_matches_one_process(worker, tmp_path):
    from l2m_jax import cli

    assert cli.main([*_two_point_argv(worker), str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert not (worker / "two-point.p1.json").exists()  # only process 0 writes
    _same_figures(json.loads((worker / "two-point.p0.json").read_text()), one, 8)


def test_the_documented_two_process_launch_runs_as_written(tmp_path):
    """docs/scaling.md's block "two local processes", run by bash as it stands (a free port
    in place of 29400; 1 CPU device per process, as on a plain machine)."""
    from l2m_jax import cli

    doc = (REPO / "docs" / "scaling.md").read_text()
    block = doc[doc.index("# two local processes") : doc.index("wait\n```") + 5]
    script = block.replace("127.0.0.1:29400", f"127.0.0.1:{_free_port()}")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    argv = block.split("JAX_PROCESS_ID=0 python -m l2m_jax ")[1].split("\nwait")[0]
    argv = argv.replace("\\\n", " ").split()
    argv[argv.index("tp.json")] = str(tmp_path / "one.json")
    assert cli.main(argv) == 0
    two = json.loads((tmp_path / "tp.json").read_text())
    _same_figures(two, json.loads((tmp_path / "one.json").read_text()), 2)


if __name__ == "__main__":
    _worker(pathlib.Path(sys.argv[1]))
