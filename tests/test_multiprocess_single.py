"""l2m_jax.distributed in one process: start-up from the environment, shares, provenance.

The multi-process behaviour itself is tested with real processes in test_multiprocess.py.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from l2m_jax import distributed
from l2m_jax.experiments._common import write_json
from l2m_jax.sources import text

_JOB_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@pytest.fixture
def no_job(monkeypatch):
    """An environment that describes no job (whatever the machine running the tests is)."""
    import os

    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "KUBERNETES_")) or name in _JOB_VARS:
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_environment_decides_whether_a_job_has_several_processes(no_job):
    assert distributed.job_from_environment() is None
    assert distributed.initialize() is False
    assert not jax.distributed.is_initialized()
    no_job.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"):
        distributed.job_from_environment()
    no_job.setenv("JAX_NUM_PROCESSES", "4")
    no_job.setenv("JAX_PROCESS_ID", "two")
    with pytest.raises(ValueError, match="must be integers"):
        distributed.job_from_environment()
    no_job.setenv("JAX_PROCESS_ID", "2")
    assert distributed.job_from_environment() == (4, 2, "JAX_COORDINATOR_ADDRESS")
    no_job.setenv("SLURM_JOB_ID", "77")  # SLURM with 3 tasks: JAX detects it by itself
    for name, value in [("STEP_NODELIST", "n[1-3]"), ("NTASKS", "3"), ("PROCID", "1")]:
        no_job.setenv(f"SLURM_{name}", value)
    no_job.setenv("SLURM_LOCALID", "0")
    for name in _JOB_VARS:
        no_job.delenv(name)
    assert distributed.job_from_environment() == (3, 1, "SlurmCluster")


def test_a_job_started_after_jax_was_used_fails_clearly(no_job):
    jax.devices()  # the backend of this pytest process is up
    for name, value in zip(_JOB_VARS, ("127.0.0.1:1", "2", "0"), strict=True):
        no_job.setenv(name, value)
    with pytest.raises(RuntimeError, match=r"call l2m_jax.distributed.initialize\(\) first"):
        distributed.initialize()


def test_one_process_gets_everything_without_communication():
    x = np.arange(6, dtype=np.uint64).reshape(3, 2)
    (got,) = distributed.gather_arrays(x)
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(distributed.sum_arrays(x), x)
    assert distributed.on_primary(lambda: {"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="own"), distributed.agreed_errors():
        raise ValueError("own")
    assert distributed.shard_for_host(list(range(7)), process_index=2, process_count=3) == [2, 5]
    assert distributed.shard_for_host(list(range(3))) == [0, 1, 2]
    with pytest.raises(ValueError, match="process_index must be in"):
        distributed.shard_for_host([1], process_index=3, process_count=3)
    assert distributed.provenance() == {"process_count": 1, "device_count": 8}


def test_every_json_records_processes_and_devices(tmp_path):
    path = write_json(tmp_path / "a.json", {"mi": np.float64(0.5)})
    assert json.loads(path.read_text()) == {"mi": 0.5, "process_count": 1, "device_count": 8}
    given = {"process_count": 4, "device_count": None}
    path = write_json(tmp_path / "b.json", {"x": 1}, provenance=given)
    assert json.loads(path.read_text()) == {"x": 1, **given}


def test_a_shard_of_a_folder_reads_only_its_own_files(tmp_path, monkeypatch):
    for i in range(7):
        (tmp_path / f"doc{i}.txt").write_text(f"Document number {i}." if i != 3 else "  ")
    opened = []
    read_text = pathlib.Path.read_text

    def recording(self, *args, **kwargs):
        opened.append(self.name)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", recording)
    docs = list(text.read_documents(str(tmp_path), shard=(1, 3)))
    assert opened == ["doc1.txt", "doc4.txt"]  # never files 0, 2, 3, 5, 6
    assert [d.title for d in docs] == ["doc1.txt", "doc4.txt"]
    opened.clear()
    docs = list(text.read_documents(str(tmp_path), shard=(0, 3)))
    assert opened == ["doc0.txt", "doc3.txt", "doc6.txt"]
    assert [d.title for d in docs] == ["doc0.txt", "doc6.txt"]  # doc3 is empty
