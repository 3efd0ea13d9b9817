"""Which scenes a batch runs (pipeline.selection), on the project's catalog."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.selection import Job, select_scenes

FIRE_BANDS = ("nir", "swir22", "red")
FOREST_BANDS = ("red", "nir", "swir16")


def test_scenes_with_their_pre_event_scenes(project_catalog):
    got = select_scenes(
        project_catalog, FIRE_BANDS, True, ["hurst-post", "dove-post"], ["hurst-pre", "dove-pre"]
    )
    assert got.singles == (Job("hurst-post", "hurst-pre"), Job("dove-post", "dove-pre"))
    assert got.series == () and got.scenes == 2


def test_a_series_is_one_job_per_scene_for_one_date_and_pairs_for_two(project_catalog):
    one = select_scenes(project_catalog, FOREST_BANDS, False, series=["slovenia"])
    assert [j.scene for j in one.singles][:2] == ["slovenia-2015-07-11", "slovenia-2015-07-31"]
    assert all(j.before is None for j in one.singles) and one.scenes == 5
    two = select_scenes(project_catalog, FIRE_BANDS, True, series=["hurst", "slovenia"])
    assert two.series[0] == ("hurst-pre", "hurst-post")
    assert two.series[1][0] == "slovenia-2015-07-11" and len(two.series[1]) == 5
    assert two.scenes == 1 + 4  # a series' first scene is its baseline, not run


def test_every_scene_that_fits(project_catalog):
    forest = select_scenes(project_catalog, FOREST_BANDS, False, every=True)
    ids = {j.scene for j in forest.singles}
    assert {"s2-virginia", "slovenia-2015-07-11", "pucallpa-2020"} <= ids
    assert not any(i.startswith("hurst") for i in ids)  # the fire scenes have no swir16
    assert any(line.startswith("hurst-pre: no band swir16") for line in forest.left_out)
    fire = select_scenes(project_catalog, FIRE_BANDS, True, every=True)
    names = {ids[0].rsplit("-", 1)[0] for ids in fire.series}
    assert {"hurst", "dove", "fire-66"} <= names and len(fire.series) == 10  # nine fires, slovenia
    assert any("in no series" in line for line in fire.left_out)  # s2-virginia: nothing to pair
    assert any(line.startswith("pucallpa-1985: no band swir22") for line in fire.left_out)


def test_selection_errors_name_the_fix(project_catalog):
    with pytest.raises(ConfigError, match="2 --before for 1 --scene"):
        select_scenes(project_catalog, FIRE_BANDS, True, ["hurst-post"], ["a", "b"])
    with pytest.raises(ConfigError, match="compares two dates: give one --before per --scene"):
        select_scenes(project_catalog, FIRE_BANDS, True, ["hurst-post"])
    with pytest.raises(ConfigError, match="no scene 'nope'"):
        select_scenes(project_catalog, FOREST_BANDS, False, ["nope"])
    with pytest.raises(ConfigError, match="series"):
        select_scenes(project_catalog, FOREST_BANDS, False, series=["nope"])
    with pytest.raises(ConfigError, match="asked for twice"):
        select_scenes(
            project_catalog,
            FIRE_BANDS,
            True,
            ["hurst-post"],
            ["slovenia-2015-07-11"],
            series=["hurst"],
        )


def test_a_scene_asked_for_twice_alike_runs_once(project_catalog):
    got = select_scenes(
        project_catalog, FOREST_BANDS, False, ["slovenia-2015-07-11"], series=["slovenia"]
    )
    assert [j.scene for j in got.singles].count("slovenia-2015-07-11") == 1
