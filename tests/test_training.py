"""Training a TorchGeo U-Net on real fire data, and running and scoring what it produced."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from pipeline.catalog import load_catalog
from pipeline.evaluate import confusion_of, report_from_confusion
from pipeline.models.checkpoints import load_checkpoint
from pipeline.training import Sample, TrainOptions, _Source, predict_scene, train
from pipeline.workflow import load_workflow
from tests.conftest import ROOT
from tests.data import catalog_yaml
from tests.helpers import geoseg, start_geoseg

#: Columns of the Dove fire scene used for training; the rest is held out.
SPLIT = 224


def _crop(src_path: Path, dst_path: Path, window: Window) -> Path:
    with rasterio.open(src_path) as src:
        profile = src.profile | {
            "width": int(window.width),
            "height": int(window.height),
            "transform": src.transform
            @ Affine.translation(int(window.col_off), int(window.row_off)),
        }
        data = src.read(window=window)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


@pytest.fixture(scope="module")
def dove(shared_data, tmp_path_factory):
    """The Dove fire split by columns into a training part and a held-out part."""
    folder = tmp_path_factory.mktemp("dove")
    fire = shared_data / "fire" / "DOVE_20241019"
    with rasterio.open(fire / "post.tif") as src:
        h, w = src.height, src.width
    parts = {"train": Window(0, 0, SPLIT, h), "held": Window(SPLIT, 0, w - SPLIT, h)}
    scenes = {}
    for part, window in parts.items():
        for when in ("pre", "post"):
            path = _crop(fire / f"{when}.tif", folder / f"{part}-{when}.tif", window)
            scenes[f"{part}-{when}"] = {
                "path": path.name,
                "bands": ["blue", "green", "red", "nir", "swir22"],
                "scale": 0.0001,
            }
        _crop(fire / "perimeter_mask.tif", folder / f"{part}-mask.tif", window)
    return load_catalog(catalog_yaml(folder, scenes)), folder


@pytest.fixture(scope="module")
def trained(dove, tmp_path_factory):
    catalog, folder = dove
    sample = Sample(
        catalog.scene("train-post"), catalog.scene("train-pre"), str(folder / "train-mask.tif")
    )
    out = tmp_path_factory.mktemp("model") / "fire-unet.ckpt"
    options = TrainOptions(epochs=2, steps_per_epoch=20, batch_size=8, chip_size=64, seed=0)
    result = train(load_workflow("fire-unet"), [sample], out, options=options)
    return result, out


@pytest.mark.slow
def test_loss_falls_and_beats_one_class_on_held_out_part(trained, dove):
    result, out = trained
    losses = np.array(result.losses)
    assert len(losses) == 40
    # Cross-entropy of two classes starts near ln 2 ≈ 0.69; learning must cut it clearly.
    assert losses[-8:].mean() < 0.7 * losses[:8].mean()

    catalog, folder = dove
    held = Sample(
        catalog.scene("held-post"), catalog.scene("held-pre"), str(folder / "held-mask.tif")
    )
    from pipeline.reading import read_labels, scene_grid

    grid = scene_grid(held.scene, result.model.bands)
    pred = predict_scene(result.model, _Source(held, grid), tile=128, halo=16)
    truth = read_labels(held.labels, grid, Window(0, 0, grid.width, grid.height))
    model_miou = report_from_confusion(confusion_of(pred, truth)).mean_iou
    # A trivial model predicts one class everywhere: its mean IoU over the two classes is half
    # that class's share of the pixels. The network must beat the better of the two.
    burned = (truth == 1).mean()
    trivial = max(burned, 1 - burned) / 2
    assert 0.02 < burned < 0.5  # the held-out part holds both classes
    assert model_miou > trivial + 0.05, (model_miou, trivial)


@pytest.mark.slow
def test_checkpoint_carries_its_card(trained):
    result, out = trained
    ckpt = load_checkpoint(out)
    card = ckpt.card
    assert card is not None and card == result.card
    assert card.bands == ("blue", "green", "red", "nir", "swir22") and card.needs_before
    assert [c.name for c in card.classes] == ["unburned", "burned"]
    assert card.normalization is not None and len(card.normalization.mean) == 10
    assert card.value_range is not None and len(card.value_range) == 10
    # ~0.00017966° pixels at 35.4° N are about 16 m across.
    assert card.gsd_m is not None and 14 < card.gsd_m < 18
    assert card.training_data["scenes"] == ["train-post"]
    assert {"loss_first", "loss_last"} <= set(card.metrics)
    assert ckpt.hyper_parameters["in_channels"] == 10 and ckpt.hyper_parameters["num_classes"] == 2


@pytest.mark.slow
def test_run_with_trained_checkpoint_writes_what_the_index_model_writes(
    trained, shared_data, tmp_path
):
    _, ckpt = trained
    flow = (ROOT / "workflows" / "fire-unet.yaml").read_text()
    flow = flow.replace("../models/fire-unet.ckpt", str(ckpt))
    (tmp_path / "fire-unet.yaml").write_text(flow)
    out = tmp_path / "out"
    unet = geoseg(
        "run",
        str(tmp_path / "fire-unet.yaml"),
        "--scene",
        "hurst-post",
        "--before",
        "hurst-pre",
        "--out",
        str(out),
    )
    assert unet.returncode == 0, unet.stderr
    index = geoseg(
        "run", "fire", "--scene", "hurst-post", "--before", "hurst-pre", "--out", str(out)
    )
    assert index.returncode == 0, index.stderr

    a, b = out / "fire-unet" / "hurst-post", out / "fire" / "hurst-post"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    ia = pyogrio.read_info(a / "polygons.gpkg", layer="fire-unet")
    ib = pyogrio.read_info(b / "polygons.gpkg", layer="fire")
    assert list(ia["fields"]) == list(ib["fields"]) and ia["crs"] == ib["crs"] == "EPSG:4326"
    with rasterio.open(a / "classes.tif") as ra, rasterio.open(b / "classes.tif") as rb:
        assert ra.profile["width"] == rb.profile["width"] and ra.transform == rb.transform
        assert set(np.unique(ra.read(1))) <= {0, 1, 255}
    run_json = json.loads((a / "run.json").read_text())
    assert run_json["model"].startswith("unet-resnet18:")
    assert run_json["workflow"]["model"]["kind"] == "torchgeo"

    # And geoseg evaluate scores it against the perimeter, as it does the index model.
    scored = geoseg(
        "evaluate",
        "--pred",
        str(a / "classes.tif"),
        "--truth",
        str(shared_data / "fire" / "HURST_20250107" / "perimeter_mask.tif"),
        "--json",
    )
    assert scored.returncode == 0, scored.stderr
    report = json.loads(scored.stdout)
    assert {c["value"] for c in report["classes"]} <= {0, 1}


def _train_dove(catalog, folder: Path, out: Path, epochs: int) -> list[str]:
    """``geoseg train fire-unet`` on the training part of the Dove fire, in tiny steps."""
    labels = str(folder / "train-mask.tif")
    scenes = ["--scene", "train-post", "--before", "train-pre", "--labels", labels]
    steps = ["--epochs", str(epochs), "--steps-per-epoch", "2", "--batch-size", "2"]
    chips = ["--chip-size", "64", "--out", str(out)]
    return ["train", "fire-unet", "--catalog", str(catalog.path), *scenes, *steps, *chips]


@pytest.mark.slow
def test_geoseg_train_command(dove, tmp_path):
    catalog, folder = dove
    out = tmp_path / "m.ckpt"
    proc = geoseg(
        *_train_dove(catalog, folder, out, epochs=1),
        "--val-scene",
        "held-post",
        "--val-before",
        "held-pre",
        "--val-labels",
        str(folder / "held-mask.tif"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no library's warning either
    assert proc.stdout.startswith("epoch 1/1: loss ")  # no terminal here: a line per epoch
    assert str(out) in proc.stdout and "val_iou_burned" in proc.stdout
    card = load_checkpoint(out).card
    assert card is not None and "val_iou_burned" in card.metrics
    assert card.training_data["validation"] == "held-post"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            [
                "train",
                "fire",
                "--scene",
                "hurst-post",
                "--before",
                "hurst-pre",
                "--labels",
                "LABELS",
                "--out",
                "x.ckpt",
            ],
            "nothing to train",
        ),
        (
            [
                "train",
                "fire-unet",
                "--scene",
                "hurst-post",
                "--labels",
                "LABELS",
                "--out",
                "x.ckpt",
            ],
            "--before",
        ),
        (
            [
                "train",
                "fire-unet",
                "--scene",
                "hurst-post",
                "--before",
                "hurst-pre",
                "--before",
                "dove-pre",
                "--labels",
                "LABELS",
                "--out",
                "x.ckpt",
            ],
            "one per scene",
        ),
        (
            [
                "train",
                "fire-unet",
                "--scene",
                "hurst-post",
                "--before",
                "hurst-pre",
                "--labels",
                "missing.tif",
                "--out",
                "x.ckpt",
            ],
            "missing.tif",
        ),
        (["evaluate", "--pred", "nope.tif", "--truth", "LABELS"], "nope.tif"),
        (["evaluate", "--pred", "LABELS", "--truth", "LABELS", "--pred-map", "x"], "e.g."),
    ],
)
def test_train_and_evaluate_user_errors(args, needle, shared_data, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    labels = str(shared_data / "fire" / "HURST_20250107" / "perimeter_mask.tif")
    monkeypatch.chdir(ROOT)
    args = [labels if a == "LABELS" else a for a in args]
    args = [str(tmp_path / a) if a.endswith(".ckpt") else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_polygon_labels_train_like_the_raster_they_came_from(dove, tmp_path):
    import shapely
    from rasterio import features

    from pipeline.reading import read_labels, scene_grid

    catalog, folder = dove
    with rasterio.open(folder / "train-mask.tif") as src:
        mask, transform, crs = src.read(1), src.transform, src.crs
    shapes = [
        (shapely.geometry.shape(g), int(v))
        for g, v in features.shapes(mask, mask=mask == 1, transform=transform)
    ]
    gpkg = tmp_path / "perimeter.gpkg"
    pyogrio.raw.write(
        str(gpkg),
        geometry=shapely.to_wkb(np.array([g for g, _ in shapes], dtype=object)),
        field_data=[np.array([v for _, v in shapes], dtype=np.int32)],
        fields=["burned"],
        crs=crs.to_wkt(),
        driver="GPKG",
        geometry_type="Polygon",
    )
    scene = catalog.scene("train-post")
    grid = scene_grid(scene, ("nir",))
    window = Window(0, 0, grid.width, grid.height)
    from_polygons = read_labels(str(gpkg), grid, window, field="burned")
    np.testing.assert_array_equal(from_polygons, mask)

    sample = Sample(scene, catalog.scene("train-pre"), str(gpkg))
    options = TrainOptions(
        epochs=1, steps_per_epoch=2, batch_size=2, chip_size=64, label_field="burned"
    )
    result = train(load_workflow("fire-unet"), [sample], tmp_path / "m.ckpt", options=options)
    assert result.card.training_data["labels"] == [str(gpkg)]
    assert result.card.training_data["label_pixels"]["burned"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "status", "line"),
    [
        (signal.SIGINT, 130, "error: interrupted; no output was replaced"),
        (signal.SIGTERM, 143, "error: terminated (SIGTERM); no output was replaced"),
    ],
)
def test_a_stop_mid_training_is_one_line_and_writes_nothing(dove, tmp_path, sig, status, line):
    """Lightning ends a fit stopped by a signal with sys.exit(1): still our line and status."""
    catalog, folder = dove
    out = tmp_path / "m.ckpt"
    proc = start_geoseg(*_train_dove(catalog, folder, out, epochs=50))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("epoch 1/50: loss "), first  # the fit is under way
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
    assert proc.returncode == status, stderr
    assert stderr == line + "\n"
    assert list(tmp_path.iterdir()) == []
