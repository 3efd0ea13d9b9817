"""Assertions shared by several test modules."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import GeosegError
from tests.conftest import ROOT


def run_args(workflow: str, scene: str, catalog: Path, out: Path, *extra: str) -> list[str]:
    """The arguments of ``geoseg run WORKFLOW --scene SCENE --catalog CATALOG --out OUT EXTRA``."""
    return ["run", workflow, "--scene", scene, "--catalog", str(catalog), "--out", str(out), *extra]


def run_python(
    *argv: str,
    cwd: Path = ROOT,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` in a fresh process of this interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def geoseg(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """``geoseg ARGS`` as a user runs it: a fresh process, its output captured.

    ``options`` are those of :func:`run_python` (``env`` replaces the environment).
    """
    return run_python("-m", "pipeline", *args, **options)


def start_geoseg(*args: str, start_new_session: bool = False) -> subprocess.Popen[str]:
    """``geoseg ARGS`` started in a fresh process, its output piped (``communicate`` reads it).

    ``start_new_session``: the run leads its own process group, as a terminal's job does.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=start_new_session,
    )


def user_error(exc_type: type[GeosegError], fn: Callable[..., Any], *args: Any) -> str:
    """Call ``fn``, expect ``exc_type`` (a GeosegError) with a one-line message; return it."""
    with pytest.raises(exc_type) as info:
        fn(*args)
    assert isinstance(info.value, GeosegError)
    message = str(info.value)
    assert "\n" not in message
    return message


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch at ``n`` intra-op threads inside the block, at as many as before after it.

    The thread count changes what a test trains, and a count left behind changes later tests.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def loaded_kernels() -> dict[str, int]:
    """Compiled signatures each kernel of :mod:`pipeline.kernels` has loaded in this process."""
    import numba

    from pipeline import kernels

    return {
        name: len(f.signatures)
        for name, f in vars(kernels).items()
        if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures
    }


def run_fresh(script: str, *args: str) -> Any:
    """Run ``script`` in a new Python process (at the repository root); its last line as JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])
