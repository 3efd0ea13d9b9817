"""A run on a real Dask cluster survives a lost worker, and a lost scheduler loses nothing.

The cluster is ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (see
:mod:`tests.cluster`); the run is the real command, ``geoseg run … --scheduler ADDR``. A
fault is injected from outside while tiles are being classified, which the test sees through
the run's resume cache (one file per finished block) and the scheduler's own task states.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import (
    DaskProcesses,
    assert_same_outputs,
    dask_processes,
    patchy_scene,
    worker_pids,
)
from tests.helpers import geoseg, run_args, start_geoseg

#: Scene edge and block edge: 256 blocks, a few seconds of tiles on two one-thread workers.
SIZE, TILE = 1024, 64
BLOCKS = (SIZE // TILE) ** 2
#: Prefix of the keys of the tile stage's tasks (see pipeline.orchestrate.tiles).
BLOCK_TASKS = "geoseg-blocks-"
#: Exit status of a run whose cluster was lost (README, "Commands").
CLUSTER_LOST = 69
#: Generous bound on how long a run may take to give up once its scheduler is gone.
GIVE_UP_S = 90.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The patchy scene's catalog, written once for the module's runs."""
    return patchy_scene(tmp_path_factory.mktemp("scene"), SIZE)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskProcesses]:
    """A scheduler and two workers, killed with everything they started after the test."""
    with dask_processes(tmp_path / "dask", workers=2) as procs:
        yield procs


@pytest.fixture(scope="module")
def reference(catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of an undisturbed run on a local cluster."""
    out = tmp_path_factory.mktemp("reference")
    proc = geoseg(*_command(catalog, out, "--workers", "2"))
    assert proc.returncode == 0, proc.stderr
    return out / "forest" / "synth"


def test_worker_killed_mid_run_loses_nothing(catalog, reference, cluster, tmp_path):
    from distributed import Client

    out = tmp_path / "out"
    with Client(cluster.address, timeout="30s") as client:
        client.get_task_stream()  # from now on the scheduler records every task's worker
        pids = worker_pids(cluster.address)
        run = _start_run(catalog, out, "--scheduler", cluster.address)
        try:
            _wait_for_blocks(out, run)
            # The run's client held still: the blocks it handed out stay where they are.
            run.send_signal(signal.SIGSTOP)
            held = client.run_on_scheduler(_block_tasks_held)
            victim = max(held, key=held.get)
            done_at_kill = _blocks_done(out)
            os.kill(pids[victim], signal.SIGKILL)
            # Its nanny starts a replacement, which the scheduler gives the run's model.
            replacement = _wait_for_replacement(client, set(pids))
            plugins = client.run(_plugin_names, workers=[replacement])[replacement]
            run.send_signal(signal.SIGCONT)
            stdout, stderr = run.communicate(timeout=600)
        finally:
            _end(run)
        rescheduled = _rescheduled_block_tasks(client)
        ran = [t["worker"] for t in client.get_task_stream() if _is_block(t["key"])]

    assert run.returncode == 0, stderr
    assert held[victim] > 0 and 0 < done_at_kill < BLOCKS  # killed mid-run, holding blocks
    assert any(name.startswith("geoseg-model-") for name in plugins)
    assert rescheduled >= 1  # the killed worker's blocks ran again elsewhere
    assert ran.count(replacement) >= 1  # and its replacement classified blocks too
    folder = out / "forest" / "synth"
    assert_same_outputs(folder, reference)
    summary = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert summary["execution"]["scheduler"] == cluster.address
    assert stderr == "", stderr


def test_model_host_killed_mid_run_loses_nothing(catalog, reference, cluster, tmp_path):
    """With one model fed by the other worker (``--one-model``), losing its host loses nothing."""
    from distributed import Client

    out = tmp_path / "out"
    with Client(cluster.address, timeout="30s") as client:
        client.get_task_stream()
        pids = worker_pids(cluster.address)
        run = _start_run(catalog, out, "--scheduler", cluster.address, "--one-model")
        try:
            _wait_for_blocks(out, run)
            run.send_signal(signal.SIGSTOP)
            host = min(pids)  # the run's host: the first worker by address (no GPU marked)
            done_at_kill = _blocks_done(out)
            os.kill(pids[host], signal.SIGKILL)
            run.send_signal(signal.SIGCONT)
            stdout, stderr = run.communicate(timeout=600)
        finally:
            _end(run)
        hosts = {t["worker"] for t in client.get_task_stream() if _is_model_batch(t["key"])}

    assert run.returncode == 0, stderr
    assert 0 < done_at_kill < BLOCKS
    assert host in hosts and len(hosts) >= 2  # batches went on elsewhere once it was gone
    folder = out / "forest" / "synth"
    assert_same_outputs(folder, reference)
    summary = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert summary["execution"]["model_layout"]["model_host"] == host
    assert stderr == "", stderr


def test_scheduler_killed_mid_run_is_one_error_and_resumes(catalog, reference, cluster, tmp_path):
    out = tmp_path / "out"
    folder = out / "forest" / "synth"
    # Earlier outputs of the scene, which the failed run must leave as they are.
    shutil.copytree(reference, folder)
    (folder / "run.json").write_text("{}")  # marks them apart from what a new run writes
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    run = _start_run(catalog, out, "--scheduler", cluster.address)
    try:
        done_at_kill = _wait_for_blocks(out, run)
        assert cluster.scheduler is not None
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=GIVE_UP_S)  # ends, and does not hang
    finally:
        _end(run)

    assert 0 < done_at_kill < BLOCKS
    assert run.returncode == CLUSTER_LOST, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert cluster.address in lines[0] and "resume" in lines[0]
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before  # nothing replaced, and no scratch or partial file left beside them
    cached = len(list((folder / ".work").glob("*/*.npy")))
    assert cached >= done_at_kill

    # The next run, on a local cluster this time, takes the finished blocks as they are.
    again = geoseg(*_command(catalog, out, "--workers", "2"))
    assert again.returncode == 0, again.stderr
    summary = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert summary["execution"]["resumed_blocks"] == cached > 0
    assert_same_outputs(folder, reference)
    assert not (folder / ".work").exists()


def test_scheduler_lost_in_a_batch_ends_the_batch(catalog, cluster, tmp_path):
    """Not every scene after it reported failed: the batch ends as a single run does, 69."""
    out = tmp_path / "out"
    command = _command(catalog, out, "--scheduler", cluster.address)
    at = command.index("--scene")
    command[at : at + 2] = ["--all"]  # the catalog's every scene, as a batch
    run = start_geoseg(*command)
    try:
        _wait_for_blocks(out, run)
        assert cluster.scheduler is not None
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        _, stderr = run.communicate(timeout=GIVE_UP_S)
    finally:
        _end(run)
    assert run.returncode == CLUSTER_LOST, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: lost the Dask scheduler"), stderr
    assert not (out / "forest" / "synth" / "classes.tif").exists()
    assert list((out / "forest" / "synth" / ".work").glob("*/*.npy"))  # kept to resume


def _command(catalog: Path, out: Path, *extra: str) -> list[str]:
    """The arguments of ``geoseg run forest`` on the patchy scene in TILE-pixel blocks, quiet."""
    return run_args("forest", "synth", catalog, out, "--tile-size", str(TILE), "--quiet", *extra)


def _start_run(catalog: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return start_geoseg(*_command(catalog, out, *extra))


def _blocks_done(out: Path) -> int:
    """Blocks the run has finished so far: files of its resume cache."""
    return len(list((out / "forest" / "synth" / ".work").glob("*/*.npy")))


def _wait_for_blocks(out: Path, run: subprocess.Popen[str], at_least: int = 8) -> int:
    """Wait until the run has finished ``at_least`` blocks; how many it had then."""
    deadline = time.monotonic() + 300
    while (done := _blocks_done(out)) < at_least:
        assert run.poll() is None, f"the run ended before its tiles: {run.communicate()}"
        assert time.monotonic() < deadline, "no block finished in 300 s"
        time.sleep(0.02)
    return done


def _block_tasks_held(dask_scheduler: Any) -> dict[str, int]:
    """Block tasks each worker runs, holds to run next or holds the result of (on the scheduler)."""
    return {
        address: sum(_is_block(ts.key) for ts in {*ws.processing, *ws.has_what})
        for address, ws in dask_scheduler.workers.items()
    }


def _wait_for_replacement(client: Any, known: set[str]) -> str:
    """The address of the first worker that joins the scheduler beyond ``known``."""
    deadline = time.monotonic() + 120
    while not (new := set(client.scheduler_info(n_workers=-1)["workers"]) - known):
        assert time.monotonic() < deadline, "no replacement worker joined in 120 s"
        time.sleep(0.1)
    return new.pop()


def _plugin_names(dask_worker: Any) -> list[str]:
    """The worker plugins a worker holds (run on the worker)."""
    return list(dask_worker.plugins)


def _end(run: subprocess.Popen[str]) -> None:
    """Kill the run if a failed assertion left it running (or stopped)."""
    if run.poll() is None:
        run.kill()
        run.wait()


def _rescheduled_block_tasks(client: Any) -> int:
    """Block tasks that the scheduler sent to a worker more than once."""

    def count(dask_scheduler: Any) -> int:
        starts: dict[str, int] = {}
        for t in dask_scheduler.transition_log:
            if t.finish == "processing" and _is_block(t.key):
                starts[t.key] = starts.get(t.key, 0) + 1
        return sum(n > 1 for n in starts.values())

    return int(client.run_on_scheduler(count))


def _is_block(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(BLOCK_TASKS)


def _is_model_batch(key: Any) -> bool:
    """A batch of the model's host (see pipeline.orchestrate.feeding)."""
    return isinstance(key, str) and key.startswith("geoseg-model-")
