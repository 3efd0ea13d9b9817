"""`geoseg bench --part model`: generated scenes, the benchmark's model, and a short smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.bench.model import (
    HALO,
    OPENVINO_TILE,
    TILE,
    balanced_shares,
    bench_grid,
    bench_workflow,
    default_tile,
    write_random_unet,
)
from pipeline.bench.scenes import SCENE_BANDS, write_scene
from pipeline.cli import main
from pipeline.grid import blocks
from pipeline.inference import classification_tasks, tile_pixels
from pipeline.models import build_model


def test_generated_scene_has_forest_bare_ground_and_water(tmp_path: Path) -> None:
    a = write_scene(tmp_path / "a.tif", 700, seed=2)
    b = write_scene(tmp_path / "b.tif", 700, seed=2)
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        x = ra.read()
        np.testing.assert_array_equal(x, rb.read())
        assert ra.count == len(SCENE_BANDS) and ra.dtypes[0] == "uint16" and ra.nodata == 0
    refl = x.astype(np.float64) / 10000
    red, nir = refl[SCENE_BANDS.index("red")], refl[SCENE_BANDS.index("nir")]
    ndvi = (nir - red) / (nir + red)
    # Patches of each surface, not noise: a sizeable share of clear forest, bare ground, water.
    assert (ndvi > 0.6).mean() > 0.1
    assert ((ndvi > 0) & (ndvi < 0.4)).mean() > 0.1
    assert (ndvi < 0).mean() > 0.01
    assert (x > 0).all()  # nodata (0) never generated


def test_random_unet_checkpoint_builds_the_bench_workflow(tmp_path: Path) -> None:
    ckpt = write_random_unet(tmp_path / "u.ckpt", ("red", "nir", "swir16"), seed=1)
    workflow = bench_workflow(str(ckpt), tile=256, halo=16)
    assert (workflow.tile_size, workflow.halo) == (256, 16)
    assert [c.vectorize for c in workflow.classes] == [False, True]
    model = build_model(workflow.model, workflow.classes)
    assert model.bands == ("red", "nir", "swir16") and model.num_classes == 2


@pytest.mark.parametrize(
    ("size", "tile"), [(2744, 768), (4096, 768), (10980, 768), (4096, 1024), (10980, 1024)]
)
def test_model_only_shares_are_as_even_as_the_tiles_allow(size: int, tile: int) -> None:
    """The model-only limit is its slowest process: each gets half the pixels, within a tile."""
    groups = classification_tasks(blocks(bench_grid(size), tile), tile, 1)
    shares = balanced_shares(groups, 2, lambda g: tile_pixels(g, 32))
    assert sorted(x for share in shares for x in share) == sorted(groups)
    pixels = [sum(tile_pixels(g, 32) for g in share) for share in shares]
    largest = max(tile_pixels(g, 32) for g in groups)
    assert abs(pixels[0] - pixels[1]) <= largest
    assert max(pixels) / (sum(pixels) / 2) < 1.013


@pytest.mark.parametrize(
    ("extra", "engine", "tile"),
    [
        ([], "auto", None),
        (["--engine", "torch"], "torch", None),
        (["--engine", "openvino"], "openvino", None),
        (["--engine", "openvino", "--precision", "bf16"], "openvino", None),
        (["--engine", "openvino", "--tile-size", "512"], "openvino", 512),
    ],
)
def test_bench_leaves_the_tile_to_the_engine_unless_given(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    engine: str,
    tile: int | None,
) -> None:
    """Without --tile-size the benchmark takes its engine's default (see default_tile)."""
    import pipeline.bench as bench

    seen: dict[str, object] = {}

    def record(size: int, workers: int, **kw: object) -> dict[str, object]:
        seen.update(kw)
        return {}

    monkeypatch.setattr(bench, "bench_model", record)
    assert main(["bench", "--part", "model", "--size", "512", "--json", *extra]) == 0
    capsys.readouterr()
    assert (seen["engine"], seen["tile"]) == (engine, tile)


def test_default_tile_is_larger_where_workers_hold_less(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """OpenVINO's workers stay under 1.5 GiB at 1088² inputs; torch's would not."""
    assert default_tile("openvino") == OPENVINO_TILE == 1024
    assert default_tile("torch") == TILE == 768
    # The CLI, which imports no benchmark code to build its parser, states both defaults.
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"{OPENVINO_TILE} with --engine openvino, {TILE} with torch" in shown
    assert f"cut off after the forward pass (default: {HALO})" in shown


@pytest.mark.slow
def test_bench_model_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = write_random_unet(tmp_path / "u.ckpt", ("green", "red", "nir"), seed=3)
    args = ["bench", "--part", "model", "--size", "640", "--workers", "1"]
    args += ["--tile-size", "256", "--halo", "16", "--model", str(ckpt), "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["bands"] == ["green", "red", "nir"]
    assert r["model_only_tiles"] == 9  # 640 = 256 + 256 + 128 per axis
    assert r["model_only_input_mpx"] == pytest.approx((2 * 288 + 160) ** 2 / 1e6)
    for key in ("model_only_s", "pipeline_s", "peer_s", "peak_rss_mb", "peer_peak_rss_mb"):
        assert r[key] > 0
    assert r["overhead_ratio"] == pytest.approx(r["pipeline_s"] / r["model_only_s"])
    assert r["peer_ratio"] == pytest.approx(r["peer_s"] / r["pipeline_raster_s"])
    assert r["peer_chips"] == 4  # 512 chips at stride 448 over 640 px: 2 × 2
    assert r["peer_unpredicted_pixels"] == 0
    assert 0 <= r["peer_agreement"] <= 1 and 0 <= r["tile_parity"] <= 1
    assert r["parity_window"] == 512
    assert r["mask_only_s"] > 0 and r["mask_s_per_mpx"] > 0 and r["mask_only_peak_rss_mb"] > 0
    # The default engine is auto's choice, with its reason; memory also as PSS.
    assert r["engine"] in ("openvino", "torch") and r["engine_reason"]
    for role in ("client", "worker"):
        assert 0 < r[f"{role}_peak_pss_mb"] <= r[f"{role}_peak_rss_mb"]
    assert r["run_peak_pss_mb"] >= r["worker_peak_pss_mb"] + r["client_peak_pss_mb"] * 0.5


def test_bench_with_one_model_fed_by_the_other_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = write_random_unet(tmp_path / "u.ckpt", ("green", "red", "nir"), seed=3)
    args = ["bench", "--part", "model", "--size", "640", "--workers", "2", "--one-model"]
    args += ["--tile-size", "256", "--halo", "16", "--model", str(ckpt), "--json"]
    assert main([*args, "--no-peer", "--no-mask"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model_layout"]["one_model"] and r["model_layout"]["readers"] == 1
    assert r["model_only_tiles"] == 9
    mpx = r["model_only_input_mpx"]
    assert r["model_only_mpx_per_s"] == pytest.approx(mpx / r["model_only_s"])
    assert r["pipeline_mpx_per_s"] == pytest.approx(mpx / r["pipeline_s"])
    assert r["tiles_mpx_per_s"] == pytest.approx(mpx / r["pipeline_times"]["tiles_s"])


def test_model_alone_runs_in_the_hosts_batches() -> None:
    from pipeline.bench.model import _rebatched

    shapes = [(1, 3, 288, 288)] * 5 + [(1, 3, 160, 288)] * 2 + [(1, 3, 288, 288)]
    assert _rebatched(shapes, 2) == [
        (2, 3, 288, 288),
        (2, 3, 288, 288),
        (1, 3, 288, 288),
        (2, 3, 160, 288),
        (1, 3, 288, 288),
    ]
    assert _rebatched(shapes, 1) == shapes


def test_bench_rejects_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["bench", "--part", "model", "--model", str(tmp_path / "none.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "none.ckpt" in err
    assert len(err.strip().splitlines()) == 1
