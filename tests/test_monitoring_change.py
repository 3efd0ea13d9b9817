"""The alert rules: what one observation does to each pixel's state (pipeline.monitoring.change)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipeline.masking import CLOUD, SHADOW
from pipeline.monitoring.change import (
    HIGH,
    LOW,
    NONE,
    UNSEEN,
    Rules,
    State,
    date_of,
    day_number,
    observe,
)
from pipeline.stitch import NODATA
from pipeline.workflow import load_workflow

OTHER, FOREST, LOSS = 0, 1, 2
FOREST_RULES = Rules(lost=frozenset({FOREST}), appeared=frozenset(), confirm=True, baseline=2)


def series(rules: Rules, *observations: list[int]) -> State:
    """The state of a row of pixels after each observation in turn (days 1, 2, …)."""
    state = State.empty((1, len(observations[0])))
    for day, values in enumerate(observations, start=1):
        state, _ = observe(state, np.array([values], np.uint8), day, rules)
    return state


def test_day_numbers_round_trip():
    assert date_of(day_number(dt.date(2020, 1, 1))) == dt.date(2020, 1, 1)
    assert date_of(0) is None


def test_loss_needs_a_baseline_then_is_low_until_a_later_clear_observation():
    f, o = FOREST, OTHER
    # Pixel 0: forest twice, then other twice: low, then confirmed high.
    # Pixel 1: forest once only (no baseline), then other: no alert.
    # Pixel 2: forest twice, other, forest again: the low alert is withdrawn.
    state = series(FOREST_RULES, [f, o, f], [f, f, f], [o, o, o])
    assert state.alert.tolist() == [[LOW, NONE, LOW]]
    assert state.first_detected.tolist() == [[3, 0, 3]]
    assert state.alert_class.tolist() == [[FOREST, UNSEEN, FOREST]]
    state, change = observe(state, np.array([[o, o, f]], np.uint8), 4, FOREST_RULES)
    assert state.alert.tolist() == [[HIGH, NONE, NONE]]
    assert (change.confirmed, change.withdrawn, change.new) == (1, 1, 0)
    assert state.first_detected.tolist() == [[3, 0, 0]]
    assert state.alert_seen.tolist() == [[4, 0, 0]]
    # A high alert stays when the pixel later grows back; its last-seen date does not move.
    state, _ = observe(state, np.array([[f, f, f]], np.uint8), 5, FOREST_RULES)
    assert state.alert.tolist() == [[HIGH, NONE, NONE]]
    assert state.alert_seen.tolist() == [[4, 0, 0]]


@pytest.mark.parametrize("masked", [CLOUD, SHADOW, NODATA])
def test_a_masked_pixel_keeps_its_state_and_is_never_lost(masked):
    f = FOREST
    state = series(FOREST_RULES, [f], [f], [masked], [masked])
    assert state.alert.tolist() == [[NONE]]
    assert state.last_class.tolist() == [[FOREST]]
    assert state.last_seen.tolist() == [[2]]
    assert state.in_a_row.tolist() == [[2]]
    # Under cloud a low alert waits for the next clear observation to decide.
    state = series(FOREST_RULES, [f], [f], [OTHER], [masked], [OTHER])
    assert state.alert.tolist() == [[HIGH]]
    assert state.alert_seen.tolist() == [[5]]


def test_without_confirmation_alerts_are_high_at_once():
    rules = Rules(frozenset({FOREST}), frozenset(), confirm=False, baseline=1)
    state = series(rules, [FOREST], [OTHER])
    assert state.alert.tolist() == [[HIGH]]


def test_appeared_needs_an_earlier_observation_unless_the_model_compares_two_dates():
    burned = 3
    one_date = Rules(frozenset(), frozenset({burned}), confirm=False, baseline=1)
    assert series(one_date, [burned]).alert.tolist() == [[NONE]]  # first sight: baseline
    assert series(one_date, [OTHER], [burned]).alert.tolist() == [[HIGH]]
    assert series(one_date, [burned], [burned]).alert.tolist() == [[NONE]]
    two_dates = Rules(frozenset(), frozenset({burned}), confirm=False, two_dates=True)
    state = series(two_dates, [burned, OTHER])
    assert state.alert.tolist() == [[HIGH, NONE]]
    assert state.alert_class.tolist() == [[burned, UNSEEN]]


def test_patches_smaller_than_the_minimum_raise_no_alert():
    rules = Rules(frozenset({FOREST}), frozenset(), confirm=True, min_pixels=3, baseline=1)
    before = np.full((5, 5), FOREST, np.uint8)
    after = before.copy()
    after[0, 0:2] = OTHER  # two pixels: too small
    after[3:5, 2:4] = OTHER  # four pixels
    after[2, 4] = OTHER  # touches the four diagonally: one 8-connected patch of five
    state, _ = observe(State.empty((5, 5)), before, 1, rules)
    state, change = observe(state, after, 2, rules)
    assert change.new == 5
    assert state.alert[0, 0:2].tolist() == [NONE, NONE]
    assert (state.alert[3:5, 2:4] == LOW).all() and state.alert[2, 4] == LOW


def test_rules_of_the_shipped_workflows():
    forest = load_workflow("forest")
    rules = Rules.of(forest, two_dates=False, pixel_area_m2=100.0)
    assert rules.lost == {FOREST} and rules.confirm and rules.baseline == 2
    assert rules.min_pixels == int(np.ceil(forest.monitor.min_area_m2 / 100))
    fire = Rules.of(load_workflow("fire"), two_dates=True, pixel_area_m2=400.0)
    assert fire.appeared == {3, 4, 5, 6} and not fire.confirm and fire.two_dates


def test_observe_leaves_the_given_state_unchanged():
    state = series(FOREST_RULES, [FOREST], [FOREST])
    before = state.copy()
    observe(state, np.array([[OTHER]], np.uint8), 3, FOREST_RULES)
    for a, b in zip(state.arrays(), before.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
