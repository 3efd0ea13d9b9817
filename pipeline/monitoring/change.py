"""A series' state per pixel, and what one new observation changes in it: the alert rules.

Arrays in, arrays out; :mod:`.store` keeps the state between runs. A pixel's state is the class
it was last *observed* as and when, and its alert: none, low or high confidence, the class it
is about, when the change was first detected and when an observation last showed it. Cloud,
shadow and no data are not observations: under them a pixel keeps its state, so a cloud never
reads as a clearing.

An observation raises an alert where a pixel leaves a ``lost`` class or enters an ``appeared``
one (:class:`~pipeline.workflow.MonitorConfig`), in patches of at least ``min_pixels``, once
the class it leaves was its baseline: observed ``baseline`` times in a row, so that one stray
observation (a classifier's flicker) is not taken for what was there. With
``confirm``, as GLAD and RADD forest alerts do, the alert is low until the pixel's next clear
observation: still changed, it becomes high; back as it was, the alert is withdrawn.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from pipeline.masking import SHADOW
from pipeline.workflow import Workflow

#: ``last_class`` and ``alert_class`` of a pixel never observed, or with no alert.
UNSEEN = 255
#: Alert levels.
NONE, LOW, HIGH = 0, 1, 2
#: Day numbers count from this date; 0 means "never".
EPOCH = dt.date(1970, 1, 1)


def day_number(date: dt.date) -> int:
    """``date`` as the day number the state stores (days since :data:`EPOCH`)."""
    return (date - EPOCH).days


def date_of(day: int) -> dt.date | None:
    """The date of a stored day number (None for 0, never)."""
    return EPOCH + dt.timedelta(days=int(day)) if day else None


@dataclass
class State:
    """Each pixel's last observed class and its alert, as arrays of one grid's shape."""

    last_class: np.ndarray  # uint8, UNSEEN if never observed
    last_seen: np.ndarray  # int32 day of the last observation, 0 never
    in_a_row: np.ndarray  # uint8 observations in a row as last_class (at most 255)
    alert: np.ndarray  # uint8 NONE, LOW or HIGH
    alert_class: np.ndarray  # uint8: the class lost or appeared, UNSEEN with no alert
    first_detected: np.ndarray  # int32 day the change was first observed, 0 with no alert
    alert_seen: np.ndarray  # int32 day an observation last showed the change, 0 with no alert

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> State:
        """The state of a series nothing has been observed of."""
        return cls(
            np.full(shape, UNSEEN, np.uint8),
            np.zeros(shape, np.int32),
            np.zeros(shape, np.uint8),
            np.zeros(shape, np.uint8),
            np.full(shape, UNSEEN, np.uint8),
            np.zeros(shape, np.int32),
            np.zeros(shape, np.int32),
        )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The arrays' names, in the order :mod:`.store` writes them as bands."""
        return tuple(f.name for f in fields(cls))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays, in :meth:`names` order."""
        return tuple(getattr(self, n) for n in self.names())

    def copy(self) -> State:
        """A copy whose arrays can be changed without changing these."""
        return State(*(a.copy() for a in self.arrays()))


@dataclass(frozen=True)
class Rules:
    """What raises an alert, as class values (see :class:`~pipeline.workflow.MonitorConfig`)."""

    lost: frozenset[int]
    appeared: frozenset[int]
    confirm: bool
    #: The model compares two dates itself: its "appeared" needs no earlier observation.
    two_dates: bool = False
    min_pixels: int = 1
    #: Observations in a row that make a pixel's class its baseline.
    baseline: int = 1

    @classmethod
    def of(cls, workflow: Workflow, two_dates: bool, pixel_area_m2: float) -> Rules:
        """The rules of ``workflow``'s ``monitor:`` settings, on pixels of ``pixel_area_m2``."""
        config = workflow.monitor
        value = {c.name: c.value for c in workflow.classes}
        min_pixels = max(1, int(np.ceil(config.min_area_m2 / pixel_area_m2)))
        return cls(
            frozenset(value[n] for n in config.lost),
            frozenset(value[n] for n in config.appeared),
            config.confirm,
            two_dates,
            min_pixels,
            config.baseline_observations,
        )


@dataclass(frozen=True)
class Change:
    """Pixels one observation observed, and the alerts it raised, confirmed and withdrew."""

    observed: int
    new: int
    confirmed: int
    withdrawn: int


def observe(state: State, classes: np.ndarray, day: int, rules: Rules) -> tuple[State, Change]:
    """The state after observing ``classes`` (a run's class raster, on the state's grid) on ``day``.

    Returns the new state (``state`` is left as it was) and what changed.
    """
    seen = classes < SHADOW  # not cloud shadow, cloud or no data
    settled = state.in_a_row >= rules.baseline
    lost = np.isin(state.last_class, list(rules.lost)) & settled
    lost &= ~np.isin(classes, list(rules.lost))
    appeared = np.isin(classes, list(rules.appeared))
    if not rules.two_dates:  # a pixel's first observations are its baseline
        appeared &= settled & (state.last_class != UNSEEN)
        appeared &= ~np.isin(state.last_class, list(rules.appeared))
    changed = _large_patches(seen & (lost | appeared), rules.min_pixels)

    new = state.copy()
    still = _still_changed(state, classes, rules)
    confirmed = (state.alert == LOW) & seen & still
    withdrawn = (state.alert == LOW) & seen & ~still
    new.alert[confirmed] = HIGH
    new.alert_seen[seen & still & (state.alert != NONE)] = day
    new.alert[withdrawn] = NONE
    new.alert_class[withdrawn] = UNSEEN
    new.first_detected[withdrawn] = 0
    new.alert_seen[withdrawn] = 0

    fresh = changed & (new.alert == NONE) & ~withdrawn
    new.alert[fresh] = LOW if rules.confirm else HIGH
    new.alert_class[fresh] = np.where(lost, state.last_class, classes)[fresh]
    new.first_detected[fresh] = day
    new.alert_seen[fresh] = day
    again = seen & (classes == state.last_class)
    new.in_a_row[again] = np.minimum(state.in_a_row[again], 254) + 1
    new.in_a_row[seen & ~again] = 1
    new.last_class[seen] = classes[seen]
    new.last_seen[seen] = day
    counts = (int(seen.sum()), int(fresh.sum()), int(confirmed.sum()), int(withdrawn.sum()))
    return new, Change(*counts)


def _still_changed(state: State, classes: np.ndarray, rules: Rules) -> np.ndarray:
    """Where ``classes`` still shows each pixel's alerted change; False with no alert.

    Still changed: out of the class it lost, or in the class that appeared.
    """
    was_lost = np.isin(state.alert_class, list(rules.lost))
    out_of_lost = ~np.isin(classes, list(rules.lost))
    in_appeared = np.isin(classes, list(rules.appeared))
    return (state.alert != NONE) & np.where(was_lost, out_of_lost, in_appeared)


def _large_patches(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` without its 8-connected patches of fewer than ``min_pixels`` pixels."""
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return np.asarray(keep[labels])
