"""Which scenes a batch runs: given by id, whole series, or every scene of a catalog that fits.

:func:`select_scenes` turns what a user asked for into :class:`Job` s (one scene, maybe after
another) and two-date series (run pair by pair, :func:`pipeline.orchestrate.batch.run_series`),
checking on the way what can be checked without reading pixels: ids, series, band names, files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.catalog import Catalog
from pipeline.errors import ConfigError, GeosegError


@dataclass(frozen=True)
class Job:
    """One scene to run (after ``before``), by catalog id: resolved when its turn comes."""

    scene: str
    before: str | None = None


@dataclass(frozen=True)
class Selection:
    """The scenes of a batch: single jobs, two-date series, and what was left out and why."""

    singles: tuple[Job, ...] = ()
    #: Scene ids of each two-date series, oldest first (the first is the baseline).
    series: tuple[tuple[str, ...], ...] = ()
    #: One line per scene ``every`` left out, saying why.
    left_out: tuple[str, ...] = ()

    @property
    def scenes(self) -> int:
        """Scenes that will run (a series' baseline is not run)."""
        return len(self.singles) + sum(len(ids) - 1 for ids in self.series)


def select_scenes(
    catalog: Catalog,
    bands: Sequence[str],
    two_dates: bool,
    scenes: Sequence[str] = (),
    befores: Sequence[str] = (),
    series: Sequence[str] = (),
    every: bool = False,
) -> Selection:
    """The jobs for ``scenes`` (each after its ``befores`` entry), ``series`` and ``every``.

    ``bands`` are those the workflow's model reads; ``two_dates`` says whether it compares two
    dates. A series of a one-date model gives a job per scene; of a two-date model, a series
    run pair by pair. ``every`` takes each catalog scene whose files are there and that has
    ``bands`` (for a two-date model, each series with two such scenes or more). Raises
    :class:`~pipeline.errors.ConfigError` for an unknown id or series, or a scene asked for
    twice with different pre-event scenes.
    """
    if befores and len(befores) != len(scenes):
        raise ConfigError(
            f"{len(befores)} --before for {len(scenes)} --scene; give one per scene, in order"
        )
    if two_dates and scenes and not befores:
        raise ConfigError(
            "the workflow compares two dates: give one --before per --scene, or --series NAME "
            "to pair each scene with the one before it"
        )
    known = set(catalog.ids())
    for sid in [*scenes, *befores]:
        if sid not in known:
            catalog.scene(sid)  # raises the catalog's own error, with the known ids
    pre: Sequence[str | None] = befores or [None] * len(scenes)
    singles = [Job(s, b) for s, b in zip(scenes, pre, strict=True)]
    pairs: list[tuple[str, ...]] = []
    left_out: list[str] = []
    for name in series:
        ids = tuple(catalog.series_ids(name))
        if two_dates:
            if len(ids) < 2:
                raise ConfigError(
                    f"series {name!r} has {len(ids)} scene: a two-date workflow needs two or more"
                )
            pairs.append(ids)
        else:
            singles.extend(Job(sid) for sid in ids)
    if every:
        fitting = _fitting(catalog, bands, left_out)
        if two_dates:
            pairs.extend(_fitting_series(catalog, fitting, left_out))
        else:
            singles.extend(Job(sid) for sid in fitting)
    return Selection(_unique(singles, pairs), _unique_series(pairs), tuple(left_out))


def _fitting(catalog: Catalog, bands: Sequence[str], left_out: list[str]) -> list[str]:
    """Catalog ids whose files are there and that have ``bands``; the others in ``left_out``."""
    fitting = []
    for sid in catalog.ids():
        try:
            scene = catalog.scene(sid)
        except GeosegError as exc:
            left_out.append(f"{sid}: {exc}")
            continue
        missing = [b for b in bands if b not in scene.band_names]
        if missing:
            left_out.append(f"{sid}: no band {', '.join(missing)}")
        else:
            fitting.append(sid)
    return fitting


def _fitting_series(
    catalog: Catalog, fitting: list[str], left_out: list[str]
) -> list[tuple[str, ...]]:
    """The series of the ``fitting`` scenes that have two of them or more, oldest first."""
    chosen = set(fitting)
    out = []
    for name in catalog.series_names():
        ids = tuple(sid for sid in catalog.series_ids(name) if sid in chosen)
        chosen -= set(ids)
        if len(ids) >= 2:
            out.append(ids)
        elif ids:
            left_out.append(f"{ids[0]}: the only usable scene of series {name!r}")
    left_out.extend(f"{sid}: in no series, so nothing to compare it with" for sid in sorted(chosen))
    return out


def _unique(singles: list[Job], pairs: list[tuple[str, ...]]) -> tuple[Job, ...]:
    """``singles`` with repeats dropped; a scene asked for with two pre-event scenes is an error.

    A scene's outputs have one folder, so it runs once per batch.
    """
    seen: dict[str, Job] = {}
    in_series = {sid for ids in pairs for sid in ids[1:]}
    for job in singles:
        earlier = seen.get(job.scene)
        if (earlier is not None and earlier != job) or job.scene in in_series:
            raise ConfigError(
                f"scene {job.scene!r} is asked for twice, with different pre-event scenes; its "
                "outputs have one folder: run the other pair in a batch of its own"
            )
        seen[job.scene] = job
    return tuple(seen.values())


def _unique_series(pairs: list[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """Each series once; a scene in two series is an error (its outputs have one folder)."""
    out: list[tuple[str, ...]] = []
    owner: dict[str, tuple[str, ...]] = {}
    for ids in pairs:
        if ids in out:
            continue
        for sid in ids[1:]:
            if sid in owner:
                raise ConfigError(f"scene {sid!r} is in two of the series asked for")
            owner[sid] = ids
        out.append(ids)
    return tuple(out)
