"""Many scenes of one workflow on one cluster: ``geoseg run`` with several scenes, and monitoring.

A :class:`Batch` starts the cluster and builds the model on every worker once, then runs each
scene exactly as a single run does (:func:`~pipeline.orchestrate.run_plan`: the same outputs in
``OUT/WORKFLOW/SCENE``, the same resume cache), :data:`IN_FLIGHT` scenes at a time, so that the
workers classify one scene's tiles while the client publishes another's outputs. A scene whose
outputs are complete for the same inputs is not run again. A scene that cannot be read, or that
is too cloudy to map, becomes a :class:`SceneOutcome` saying why; the others go on.

A series (:func:`run_series`) pairs each scene with the previous usable one for a model that
compares two dates; the pairs of one series then run one after another.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pipeline.catalog import Scene
from pipeline.errors import ClusterLostError, GeosegError, UnusableSceneError
from pipeline.orchestrate import output_folder, run_plan
from pipeline.orchestrate.cluster import (
    RunOptions,
    SharedCluster,
    dask_client,
    register_model,
    scheduler_gone,
    scheduler_lost,
)
from pipeline.orchestrate.feeding import uses_one_model
from pipeline.orchestrate.tiles import resume_key
from pipeline.planning import (
    RunPlan,
    build_planned_model,
    default_cache,
    plan_run,
    resolve_engine,
)
from pipeline.publish import replace_json
from pipeline.remote import redact
from pipeline.selection import Job
from pipeline.workflow import Workflow

log = logging.getLogger(__name__)

#: Scenes a batch runs at once: one on the workers while the client publishes another.
IN_FLIGHT = 2

Status = Literal["done", "unusable", "failed"]


@dataclass(frozen=True)
class SceneOutcome:
    """How one scene of a batch ended, and why when it did not give outputs."""

    scene: str
    before: str | None
    #: ``done`` (outputs written, or already there), ``unusable`` (read fine, but too cloudy
    #: or no change to show) or ``failed`` (the scene could not be run).
    status: Status
    seconds: float
    message: str = ""
    folder: Path | None = None
    #: True when the outputs were already complete for the same inputs.
    reused: bool = False
    #: Shares of the pixels masked (``cloud``, ``cloud_shadow``, ``total``), when known.
    masked: dict[str, float] = field(default_factory=dict)
    #: The run's ``run.json``, for a scene that is done.
    summary: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def polygons(self) -> int | None:
        """Polygons the run wrote (None unless done)."""
        return int(self.summary["counts"]["polygons"]) if self.summary else None

    def to_dict(self) -> dict[str, Any]:
        """The scene's row of ``batch.json``."""
        classes = None
        if self.summary is not None:
            classes = {
                name: info["area_m2_approx"] / 1e6
                for name, info in self.summary["counts"]["classes"].items()
            }
        return {
            "scene": self.scene,
            "before": self.before,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "message": self.message,
            "folder": str(self.folder) if self.folder else None,
            "reused": self.reused,
            "polygons": self.polygons,
            "masked_fraction": self.masked.get("total"),
            "class_area_km2": classes,
        }

    def line(self) -> str:
        """The outcome in one line, as the command line prints it."""
        pair = f" after {self.before}" if self.before else ""
        if self.status != "done":
            return f"{self.scene}{pair}: {self.status}: {self.message}"
        how = "already done" if self.reused else f"done in {self.seconds:.1f} s"
        return f"{self.scene}{pair}: {how}, {self.polygons} polygons"


class Batch:
    """A cluster whose workers hold ``workflow``'s model, running scenes as they are submitted.

    Use it as a context manager: entering starts the cluster and builds the model on every
    worker; leaving waits for the scenes submitted and stops the cluster. ``resolve`` turns a
    catalog id into a :class:`~pipeline.catalog.Scene`; ``catalog`` names the catalog file for
    the outputs' provenance. ``model`` is the planned model (:func:`planned_model`) when the
    caller already made it.
    """

    def __init__(
        self,
        workflow: Workflow,
        resolve: Callable[[str], Scene],
        options: RunOptions | None = None,
        catalog: str | None = None,
        model: Any = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.workflow, self.resolve, self.catalog = workflow, resolve, catalog
        self.options = options or RunOptions()
        self.model = model
        self.in_flight = in_flight
        self.setup_s = 0.0
        self._stack = ExitStack()
        self._shared: SharedCluster | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Batch:
        t0 = time.perf_counter()
        with ExitStack() as stack:
            if self.model is None:
                self.model = planned_model(self.workflow, self.options)
            opts = self.options
            resolved, engine = resolve_engine(self.workflow, default_cache(opts.out))
            one_model = uses_one_model(opts, engine)
            client = stack.enter_context(dask_client(opts.workers, opts.scheduler, one_model))
            converted = getattr(self.model, "folder", None)
            plugin = register_model(client, resolved, converted, opts.out, lazy=one_model)
            self._shared = SharedCluster(client, plugin, self.model)
            self._pool = stack.enter_context(
                ThreadPoolExecutor(self.in_flight, thread_name_prefix="geoseg-scene")
            )
            self._stack = stack.pop_all()
        self.setup_s = time.perf_counter() - t0
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None and kind is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._stack.close()

    def submit(self, job: Job) -> Future[SceneOutcome]:
        """Start ``job`` once a scene slot is free; its outcome comes in the future."""
        assert self._pool is not None, "enter the batch before submitting scenes"
        return self._pool.submit(self.run_job, job)

    def run_job(self, job: Job) -> SceneOutcome:
        """Run one scene here and now; every error becomes the scene's outcome."""
        t0 = time.perf_counter()
        folder = None
        try:
            plan = self._plan(job)
            folder = output_folder(plan, self.options)
            earlier = completed_run(plan, self.options)
            if earlier is not None:
                return self._outcome(job, "done", t0, folder=folder, summary=earlier, reused=True)
            result = run_plan(plan, self.options, t0, self._shared)
            return self._outcome(job, "done", t0, folder=folder, summary=result.summary)
        except UnusableSceneError as exc:
            return self._outcome(job, "unusable", t0, str(exc), folder, masked=exc.masked)
        except ClusterLostError:
            raise
        except GeosegError as exc:
            self._check_cluster(exc)
            return self._outcome(job, "failed", t0, str(exc), folder)
        except Exception as exc:  # noqa: BLE001 - one broken scene must not end the batch
            self._check_cluster(exc)
            # A file that breaks mid-read surfaces as GDAL's or a library's own error.
            log.debug("scene %s failed", job.scene, exc_info=True)
            message = redact(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            return self._outcome(job, "failed", t0, message, folder)

    def _check_cluster(self, exc: Exception) -> None:
        """Raise :class:`ClusterLostError` when ``exc`` came of the batch's scheduler going away.

        A lost scheduler is no scene's fault: every scene after it would fail the same way,
        so the batch ends, its finished scenes kept and the unfinished ones resumable.
        """
        shared, scheduler = self._shared, self.options.scheduler
        if scheduler and shared is not None and scheduler_gone(shared.client, exc):
            raise scheduler_lost(scheduler) from None

    def _plan(self, job: Job) -> RunPlan:
        scene = self.resolve(job.scene)
        before = self.resolve(job.before) if job.before else None
        cache = default_cache(self.options.out)
        bbox = self.options.bbox
        return plan_run(self.workflow, scene, before, cache, self.catalog, self.model, bbox)

    @staticmethod
    def _outcome(
        job: Job,
        status: Status,
        t0: float,
        message: str = "",
        folder: Path | None = None,
        **rest: Any,
    ) -> SceneOutcome:
        summary = rest.get("summary")
        masked = rest.get("masked") or (summary["mask"]["masked_fraction"] if summary else {})
        return SceneOutcome(
            job.scene,
            job.before,
            status,
            time.perf_counter() - t0,
            message,
            folder if status == "done" else None,
            bool(rest.get("reused")),
            dict(masked),
            summary,
        )


def planned_model(workflow: Workflow, options: RunOptions) -> Any:
    """``workflow``'s model as planning builds it (converted for OpenVINO), for a batch."""
    cache = default_cache(options.out)
    return build_planned_model(resolve_engine(workflow, cache)[0], cache)


def completed_run(plan: RunPlan, options: RunOptions) -> dict[str, Any] | None:
    """The ``run.json`` of outputs already complete for exactly this plan's inputs, if any."""
    path = output_folder(plan, options) / "run.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if summary.get("execution", {}).get("inputs_key") != resume_key(plan):
        return None
    return summary


def run_series(
    batch: Batch, ids: Sequence[str], on_outcome: Callable[[SceneOutcome], None]
) -> list[SceneOutcome]:
    """Run a two-date series pair by pair: each scene after the latest scene that was usable.

    A pair that is unusable or failed leaves the baseline where it was, so one cloudy scene
    never becomes the "before" of the next.
    """
    outcomes = []
    baseline = ids[0]
    for sid in ids[1:]:
        outcome = batch.run_job(Job(sid, baseline))
        on_outcome(outcome)
        outcomes.append(outcome)
        if outcome.status == "done":
            baseline = sid
    return outcomes


def run_batch(
    batch: Batch,
    singles: Iterable[Job] = (),
    series: Iterable[Sequence[str]] = (),
    on_outcome: Callable[[SceneOutcome], None] | None = None,
) -> list[SceneOutcome]:
    """Run every job of ``singles`` and every two-date series of ``series``; their outcomes.

    ``on_outcome`` hears of each scene as it ends (from any thread, one call at a time).
    Outcomes come back in the order given: the singles, then each series' pairs.
    """
    lock = threading.Lock()

    def heard(outcome: SceneOutcome) -> None:
        if on_outcome is not None:
            with lock:
                on_outcome(outcome)

    def noted(job: Job) -> SceneOutcome:
        outcome = batch.run_job(job)
        heard(outcome)
        return outcome

    assert batch._pool is not None, "enter the batch before running scenes"
    single_futures = [batch._pool.submit(noted, job) for job in singles]
    # Each series' pairs depend on the pair before: a driver thread per series keeps one of
    # its pairs in flight, beside the other series' and the single scenes.
    with ThreadPoolExecutor(batch.in_flight, thread_name_prefix="geoseg-series") as drivers:
        series_futures = [drivers.submit(run_series, batch, ids, heard) for ids in series]
        outcomes = [f.result() for f in single_futures]
        for f in series_futures:
            outcomes.extend(f.result())
    return outcomes


@dataclass
class BatchRecord:
    """A finished batch: what ``batch.json`` holds."""

    workflow: str
    outcomes: list[SceneOutcome]
    setup_s: float
    total_s: float
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    #: Where :meth:`write` wrote it.
    path: Path | None = None

    def counts(self) -> dict[str, int]:
        """Scenes per status."""
        statuses: tuple[Status, ...] = ("done", "unusable", "failed")
        return {s: sum(o.status == s for o in self.outcomes) for s in statuses}

    def to_dict(self) -> dict[str, Any]:
        """The content of ``batch.json``."""
        return {
            "workflow": self.workflow,
            "started": self.started.isoformat(timespec="seconds"),
            "setup_s": round(self.setup_s, 3),
            "total_s": round(self.total_s, 3),
            "counts": self.counts(),
            "scenes": [o.to_dict() for o in self.outcomes],
        }

    def write(self, out: Path) -> Path:
        """Write ``OUT/WORKFLOW/batch.json`` (replacing the last batch's); its path."""
        path = Path(out).expanduser() / self.workflow / "batch.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(path, self.to_dict())
        self.path = path
        return path
