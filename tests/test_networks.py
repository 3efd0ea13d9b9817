"""TorchGeo networks, their checkpoints and model cards (pipeline.models.networks/checkpoints/card).

Every network here is a small U-Net on ResNet18 built on the CPU; inputs are a few dozen pixels.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.catalog import load_catalog
from pipeline.errors import ConfigError, ModelError
from pipeline.models import build_model
from pipeline.models.card import (
    CardClass,
    ModelCard,
    Normalization,
    check_resolution,
    check_values,
)
from pipeline.models.checkpoints import load_checkpoint, load_pretrained, safe_load, save_checkpoint
from pipeline.models.networks import TorchGeoSegmentation, build_network, init_backbone
from pipeline.orchestrate import RunOptions, run
from pipeline.planning import plan
from pipeline.workflow import ClassDef, TorchGeoModelConfig, Workflow, load_workflow
from tests.data import catalog_yaml, forest_scene
from tests.helpers import torch_threads, user_error

BANDS = ("red", "nir", "swir16")
CLASSES = (
    ClassDef(value=0, name="other", colour="#000000", vectorize=False),
    ClassDef(value=1, name="forest", colour="#00aa00"),
)
#: Hyper-parameters of TorchGeo's SemanticSegmentationTask for the 3-band, 2-class U-Net.
HPARAMS = {
    "model": "unet",
    "backbone": "resnet18",
    "weights": None,
    "in_channels": 3,
    "num_classes": 2,
}
MEAN = (0.05, 0.3, 0.15)
STD = (0.02, 0.1, 0.05)
MOCO = "ResNet18_Weights.SENTINEL2_ALL_MOCO"
#: Sentinel-2 L1C's 13 bands, the input of the SENTINEL2_ALL weights.
S2_ALL = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "wvp",
    "cirrus",
    "swir16",
    "swir22",
)


def make_card(**update: object) -> ModelCard:
    card = ModelCard(
        arch="unet",
        backbone="resnet18",
        bands=BANDS,
        classes=tuple(CardClass(value=c.value, name=c.name, colour=c.colour) for c in CLASSES),
        gsd_m=10.0,
        normalization=Normalization(mean=MEAN, std=STD),
        value_range=((0.01, 0.5),) * 3,
        licence="CC-BY-4.0",
    )
    return card.model_copy(update=update)


def seeded_net(in_channels: int = 3, num_classes: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network("unet", "resnet18", in_channels, num_classes).eval()


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def config(**fields: object) -> TorchGeoModelConfig:
    return TorchGeoModelConfig(kind="torchgeo", **fields)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny forward passes only slow down when threads contend."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """A randomly initialised U-Net/ResNet18 for 3 bands and 2 classes (do not modify)."""
    return seeded_net()


@pytest.fixture
def ckpt(tmp_path: Path, net: torch.nn.Module) -> Path:
    """A geoseg checkpoint of ``net`` with the card of :func:`make_card`."""
    path = tmp_path / "models" / "forest.ckpt"
    save_checkpoint(path, net.state_dict(), dict(HPARAMS), make_card())
    return path


def forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


# --- build_network -------------------------------------------------------------------------


def test_build_network_is_torchgeos_unet():
    import segmentation_models_pytorch as smp
    from torchgeo.trainers import SemanticSegmentationTask

    net = build_network("unet", "resnet18", 4, 3)
    assert isinstance(net, smp.Unet)
    assert net.encoder.conv1.weight.shape == (64, 4, 7, 7)
    theirs = SemanticSegmentationTask(
        model="unet", backbone="resnet18", weights=None, in_channels=4, num_classes=3
    ).model.state_dict()
    ours = net.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert forward(net.eval(), torch.rand(1, 4, 64, 32)).shape == (1, 3, 64, 32)


@pytest.mark.parametrize("arch", ["deeplabv3+", "upernet", "fcn"])
def test_build_network_matches_torchgeos_task(arch):
    from torchgeo.trainers import SemanticSegmentationTask

    ours = build_network(arch, "resnet18", 5, 4)
    theirs = SemanticSegmentationTask(
        model=arch, backbone="resnet18", weights=None, in_channels=5, num_classes=4
    ).model
    assert type(ours) is type(theirs)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == other.keys()
    assert all(mine[k].shape == other[k].shape for k in mine)


def test_build_network_unknown_backbone():
    message = user_error(ModelError, build_network, "unet", "resnet_nope", 3, 2)
    assert "resnet_nope" in message and "unet" in message


# --- TorchGeoSegmentation ------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(45, 70), (33, 33), (8, 8), (40, 70), (1, 5)])
def test_forward_any_tile_size(net, h, w):
    model = TorchGeoSegmentation(net, make_card(), "t").eval()
    out = forward(model, torch.rand(2, 3, h, w))
    assert out.shape == (2, 2, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("h", "w", "mode"), [(45, 70, "reflect"), (8, 8, "edge")])
def test_forward_pads_bottom_right_and_crops(net, h, w, mode):
    model = TorchGeoSegmentation(net, make_card(), "t").eval()
    x = torch.rand(2, 3, h, w)
    normed = (
        (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    ).numpy()
    pad = ((0, 0), (0, 0), (0, -h % 32), (0, -w % 32))
    padded = torch.from_numpy(np.pad(normed, pad, mode=mode))
    expected = forward(net, padded)[..., :h, :w]
    torch.testing.assert_close(forward(model, x), expected, rtol=1e-4, atol=1e-4)


def test_forward_normalizes_with_the_cards_mean_and_std(net):
    model = TorchGeoSegmentation(net, make_card(), "t").eval()
    x = torch.rand(2, 3, 32, 64)
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    out = forward(model, x)
    torch.testing.assert_close(out, forward(net, (x - m) / s), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, forward(net, x), atol=1e-3)


def test_forward_without_normalization_is_the_bare_net(net):
    model = TorchGeoSegmentation(net, make_card(normalization=None), "t").eval()
    x = torch.rand(1, 3, 32, 64)
    torch.testing.assert_close(forward(model, x), forward(net, x), rtol=1e-5, atol=1e-5)


def test_forward_rejects_wrong_channels(net):
    model = TorchGeoSegmentation(net, make_card(), "forest-net").eval()
    with pytest.raises(
        ValueError, match=r"'forest-net' expects \[N, 3, H, W\], got \[2, 4, 40, 70\]"
    ):
        forward(model, torch.rand(2, 4, 40, 70))
    with pytest.raises(ValueError, match="expects"):
        forward(model, torch.rand(3, 40, 70))


def test_card_interface_and_normalization_length():
    net6 = seeded_net(in_channels=6)
    model = TorchGeoSegmentation(net6, make_card(needs_before=True, normalization=None), "t")
    assert (model.bands, model.needs_before, model.in_channels, model.num_classes) == (
        BANDS,
        True,
        6,
        2,
    )
    assert forward(model.eval(), torch.rand(1, 6, 20, 20)).shape == (1, 2, 20, 20)
    short = make_card(normalization=Normalization(mean=(0.1, 0.2), std=(1.0, 1.0)))
    message = user_error(ModelError, TorchGeoSegmentation, seeded_net(), short, "t")
    assert "2 values for 3 input channels" in message


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip(ckpt, net):
    loaded = load_checkpoint(ckpt)
    assert same_state(loaded.state_dict, net.state_dict())
    assert loaded.hyper_parameters == HPARAMS
    assert loaded.card == make_card()
    assert loaded.card.licence == "CC-BY-4.0"


def test_checkpoint_loads_in_torchgeo(ckpt, net):
    from torchgeo.trainers import SemanticSegmentationTask

    task = SemanticSegmentationTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert same_state(task.model.state_dict(), net.state_dict())
    assert task.hparams["in_channels"] == 3 and task.hparams["num_classes"] == 2


def test_plain_state_dict_loads_without_card(tmp_path, net):
    path = tmp_path / "plain.pt"
    torch.save(net.state_dict(), path)
    loaded = load_checkpoint(path)
    assert same_state(loaded.state_dict, net.state_dict())
    assert loaded.card is None and loaded.hyper_parameters == {}


def test_lightning_checkpoint_strips_model_prefix(tmp_path, net):
    path = tmp_path / "lightning.ckpt"
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["criterion.weight"] = torch.ones(2)
    torch.save({"state_dict": state, "hyper_parameters": HPARAMS, "epoch": 3}, path)
    loaded = load_checkpoint(path)
    assert same_state(loaded.state_dict, net.state_dict())
    assert loaded.hyper_parameters == HPARAMS and loaded.card is None


@pytest.mark.parametrize("garbage", [[1, 2], {"a": "b"}, {}, {"state_dict": "x"}])
def test_garbage_checkpoint(tmp_path, garbage):
    path = tmp_path / "garbage.pt"
    torch.save(garbage, path)
    message = user_error(ModelError, load_checkpoint, path)
    assert str(path) in message


def test_missing_checkpoint(tmp_path):
    message = user_error(ModelError, load_checkpoint, tmp_path / "nope.ckpt")
    assert "nope.ckpt not found" in message and "checkpoint:" in message


def test_truncated_checkpoint(ckpt):
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    message = user_error(ModelError, load_checkpoint, ckpt)
    assert message.startswith(f"cannot read checkpoint {ckpt}")


def test_empty_checkpoint_file(tmp_path):
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    assert "cannot read checkpoint" in user_error(ModelError, load_checkpoint, path)


def test_invalid_card_is_one_line(tmp_path, net):
    path = tmp_path / "badcard.ckpt"
    torch.save({"state_dict": net.state_dict(), "geoseg_card": json.dumps({"arch": "unet"})}, path)
    assert "model card is invalid" in user_error(ModelError, load_checkpoint, path)


def test_save_is_atomic(tmp_path, net, monkeypatch):
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, net.state_dict(), dict(HPARAMS), make_card())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]
    before = path.read_bytes()

    def failing_save(obj: object, f: str | os.PathLike[str]) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    other = seeded_net(seed=1)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, other.state_dict(), dict(HPARAMS), make_card())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


# --- safe loading --------------------------------------------------------------------------


class Evil:
    """Unpickling this runs a shell command that creates :attr:`marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _write_hostile(path: Path, marker: Path, how: str) -> None:
    if how == "torch":
        torch.save({"state_dict": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": Evil(marker)}, protocol=2))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_hostile_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    _write_hostile(path, marker, how)
    for loader in (safe_load, load_checkpoint):
        message = user_error(ModelError, loader, path)
        assert "refused" in message and str(path) in message
    cfg = config(checkpoint=str(path), bands=BANDS)
    assert "refused" in user_error(ModelError, build_model, cfg, CLASSES)
    assert not marker.exists()
    # The file is truly hostile: an unsafe load runs its code.
    control = tmp_path / "control"
    _write_hostile(path, control, how)
    if how == "torch":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert control.exists()


# --- offline pretrained weights ------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; any download attempt fails the test."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home


def moco_cache_path(torch_home: Path) -> Path:
    from torchgeo.models import get_weight

    url = get_weight(MOCO).url
    return torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]


def write_moco_fixture(torch_home: Path) -> dict[str, torch.Tensor]:
    """A ResNet18 encoder state for 13 bands, as TorchGeo's backbone weights hold it."""
    import timm

    torch.manual_seed(7)
    state = timm.create_model("resnet18", in_chans=13, num_classes=0).state_dict()
    path = moco_cache_path(torch_home)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_pretrained_weights_are_never_downloaded(torch_home):
    expected = moco_cache_path(torch_home)
    assert expected.name.endswith(".pth")
    message = user_error(ModelError, load_pretrained, MOCO)
    assert f"at {expected}," in message
    assert f"get_weight('{MOCO}').get_state_dict()" in message
    assert not expected.exists()


def test_pretrained_weights_from_the_hub_cache(torch_home):
    fixture = write_moco_fixture(torch_home)
    state, weights = load_pretrained(MOCO)
    assert same_state(state, fixture)
    assert type(weights).__name__ == "ResNet18_Weights"
    net13 = seeded_net(in_channels=13)
    assert not torch.equal(net13.encoder.conv1.weight, fixture["conv1.weight"])
    init_backbone(net13, MOCO)
    torch.testing.assert_close(net13.encoder.conv1.weight, fixture["conv1.weight"])
    encoder = net13.encoder.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in fixture.items())


def test_hub_cache_path_is_where_torchgeo_looks(tmp_path, monkeypatch):
    """TorchGeo's own trainer, offline, reads the file from the path our message names."""
    from torchgeo.trainers import SemanticSegmentationTask

    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    fixture = write_moco_fixture(home)
    task = SemanticSegmentationTask(
        model="unet", backbone="resnet18", weights=MOCO, in_channels=13, num_classes=2
    )
    torch.testing.assert_close(task.model.encoder.conv1.weight, fixture["conv1.weight"])


def test_unknown_weights_name(torch_home):
    for name in ("ResNet18_Weights.NOPE", "NoSuch_Weights.X"):
        message = user_error(ModelError, load_pretrained, name)
        assert repr(name) in message
    assert "ResNet18_Weights.NOPE" in user_error(
        ModelError, init_backbone, seeded_net(), "ResNet18_Weights.NOPE"
    )


def test_backbone_weights_that_do_not_fit(torch_home):
    fixture = write_moco_fixture(torch_home)
    message = user_error(ModelError, init_backbone, seeded_net(in_channels=3), MOCO)
    assert "bands" in message and MOCO in message
    # A file lacking some of the encoder's tensors must not initialise it partly.
    del fixture["layer4.1.bn2.running_var"]
    torch.save(fixture, moco_cache_path(torch_home))
    message = user_error(ModelError, init_backbone, seeded_net(in_channels=13), MOCO)
    assert "layer4.1.bn2.running_var" in message


def test_backbone_weights_cannot_segment(torch_home):
    write_moco_fixture(torch_home)
    cfg = config(weights=MOCO, bands=S2_ALL)
    message = user_error(ModelError, build_model, cfg, CLASSES)
    assert "train" in message and MOCO in message


def test_full_model_weights_from_the_hub_cache(torch_home):
    from torchgeo.models import get_weight

    name = "Unet_Weights.OAM_RGB_RESNET34_TCD"
    torch.manual_seed(3)
    fixture = build_network("unet", "resnet34", 3, 2).state_dict()
    path = torch_home / "hub" / "checkpoints" / get_weight(name).url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(fixture, path)
    cfg = config(weights=name, backbone="resnet34", bands=("red", "green", "blue"))
    model = build_model(cfg, CLASSES)
    assert same_state(model.net.state_dict(), fixture)
    assert model.model_id == f"unet-resnet34:{name}"
    message = user_error(
        ModelError, build_model, cfg.model_copy(update={"bands": BANDS[:2]}), CLASSES
    )
    assert "do not fit" in message


# --- workflow wiring -----------------------------------------------------------------------


def test_build_model_from_a_checkpoint_with_card(ckpt, net):
    model = build_model(config(checkpoint=str(ckpt)), CLASSES)
    assert isinstance(model, TorchGeoSegmentation)
    assert not model.training
    assert model.bands == BANDS and model.num_classes == 2 and not model.needs_before
    assert model.card == make_card()
    assert model.model_id == "unet-resnet18:forest"
    assert model.mean_.flatten().tolist() == pytest.approx(MEAN)
    assert model.std_.flatten().tolist() == pytest.approx(STD)
    assert same_state(model.net.state_dict(), net.state_dict())
    x = torch.rand(1, 3, 32, 32)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(forward(model, x), forward(net, (x - m) / s), rtol=1e-4, atol=1e-4)
    # Bands named in the workflow too are fine when they agree.
    assert build_model(config(checkpoint=str(ckpt), bands=BANDS), CLASSES).bands == BANDS


def test_workflow_classes_must_match_the_card(ckpt):
    renamed = (CLASSES[0], CLASSES[1].model_copy(update={"name": "woods"}))
    message = user_error(ModelError, build_model, config(checkpoint=str(ckpt)), renamed)
    assert "['other', 'forest']" in message and "['other', 'woods']" in message


def test_workflow_bands_must_match_the_card(ckpt):
    cfg = config(checkpoint=str(ckpt), bands=("red", "swir16", "nir"))
    message = user_error(ModelError, build_model, cfg, CLASSES)
    assert "bands" in message and "('red', 'nir', 'swir16')" in message


def test_plain_state_dict_needs_bands(tmp_path, net):
    path = tmp_path / "plain.pt"
    torch.save(net.state_dict(), path)
    message = user_error(ModelError, build_model, config(checkpoint=str(path)), CLASSES)
    assert "model.bands" in message
    model = build_model(config(checkpoint=str(path), bands=BANDS), CLASSES)
    assert model.bands == BANDS and model.card.normalization is None
    assert [c.name for c in model.card.classes] == ["other", "forest"]
    assert same_state(model.net.state_dict(), net.state_dict())


def test_plain_state_dict_that_does_not_fit(tmp_path, net):
    path = tmp_path / "plain.pt"
    torch.save(net.state_dict(), path)
    cfg = config(checkpoint=str(path), bands=("red", "nir"))
    assert "does not fit" in user_error(ModelError, build_model, cfg, CLASSES)


@pytest.mark.parametrize(
    ("field", "key", "ours", "theirs"),
    [("backbone", "backbone", "resnet18", "resnet34"), ("arch", "model", "unet", "deeplabv3+")],
)
def test_arch_and_backbone_must_match_hyper_parameters(tmp_path, net, field, key, ours, theirs):
    path = tmp_path / "lightning.ckpt"
    hparams = {**HPARAMS, key: theirs}
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    message = user_error(
        ModelError, build_model, config(checkpoint=str(path), bands=BANDS), CLASSES
    )
    assert f"says {field} {ours!r}" in message and repr(theirs) in message


def test_in_channels_must_match_hyper_parameters(tmp_path, net):
    path = tmp_path / "lightning.ckpt"
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {**HPARAMS, "in_channels": 4}}, path)
    message = user_error(
        ModelError, build_model, config(checkpoint=str(path), bands=BANDS), CLASSES
    )
    assert "4 input channels" in message


def test_card_backbone_must_match_the_workflow(ckpt):
    message = user_error(
        ModelError, build_model, config(checkpoint=str(ckpt), backbone="resnet34"), CLASSES
    )
    assert "'resnet34'" in message and "'resnet18'" in message


def test_torchgeo_model_needs_weights():
    message = user_error(ModelError, build_model, config(bands=BANDS), CLASSES)
    assert "checkpoint" in message


def _workflow_yaml(path: Path, model: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "name": "net",
        "model": {"kind": "torchgeo", **model},
        "classes": [c.model_dump() for c in CLASSES],
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def test_relative_checkpoint_is_relative_to_the_workflow(tmp_path, monkeypatch):
    path = _workflow_yaml(tmp_path / "sub" / "net.yaml", {"checkpoint": "../models/net.ckpt"})
    elsewhere = tmp_path / "run" / "from" / "here"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    wf = load_workflow(str(path))
    assert Path(wf.model.checkpoint).is_absolute()
    assert Path(wf.model.checkpoint).resolve() == (tmp_path / "models" / "net.ckpt").resolve()
    absolute = tmp_path / "abs" / "x.ckpt"
    wf = load_workflow(
        str(_workflow_yaml(tmp_path / "sub" / "a.yaml", {"checkpoint": str(absolute)}))
    )
    assert Path(wf.model.checkpoint) == absolute


def test_checkpoint_and_weights_together_fail_at_load(tmp_path):
    path = _workflow_yaml(tmp_path / "both.yaml", {"checkpoint": "m.ckpt", "weights": MOCO})
    message = user_error(ConfigError, load_workflow, str(path))
    assert "not both" in message and str(path) in message


# --- card checks ---------------------------------------------------------------------------


def test_check_resolution():
    card = make_card(gsd_m=10.0)
    for gsd in (10.0, 14.9, 15.0, 6.7, 7.0):
        check_resolution(card, "s", gsd)
    for gsd in (15.1, 6.6, 60.0, 1.0):
        message = user_error(ModelError, check_resolution, card, "s", gsd)
        assert "resample" in message and "10.0 m" in message and f"{gsd:.1f} m" in message
    check_resolution(make_card(gsd_m=None), "s", 60.0)


def test_check_values():
    card = make_card(value_range=((0.02, 0.4),) * 3)
    rng = np.random.default_rng(0)
    good = rng.uniform(0.05, 0.35, (3, 16, 16)).astype(np.float32)
    valid = np.ones((16, 16), dtype=bool)
    check_values(card, "s", BANDS, good, valid)
    message = user_error(ModelError, check_values, card, "s", BANDS, good * 10000, valid)
    assert "scale" in message and "unscaled" in message and "'red'" in message
    off = good.copy()
    off[2] += 2.0
    message = user_error(ModelError, check_values, card, "s", BANDS, off, valid)
    assert "'swir16'" in message and "scale" in message and "unscaled" not in message
    # Only valid pixels count; none valid means nothing to check.
    check_values(card, "s", BANDS, good * 10000, np.zeros((16, 16), dtype=bool))
    mixed = good.copy()
    mixed[:, :4] = 5000.0
    check_values(card, "s", BANDS, mixed, np.arange(16)[None, :].repeat(16, 0) >= 4)
    check_values(make_card(value_range=None), "s", BANDS, good * 10000, valid)


@pytest.fixture
def scene_catalog(tmp_path):
    """One forest scene listed twice: with and without ``scale: 0.0001``."""
    paths = forest_scene(tmp_path / "scene")
    assets = {k: str(v.relative_to(tmp_path)) for k, v in paths.items()}
    entry = {"assets": assets, "acquired": "2024-06-01", "sensor": "sentinel-2-l1c"}
    return load_catalog(
        catalog_yaml(tmp_path, {"scaled": {**entry, "scale": 0.0001}, "unscaled": entry})
    )


def _workflow(path: Path) -> Workflow:
    return Workflow(name="net", model=config(checkpoint=str(path)), classes=CLASSES)


def test_plan_checks_the_scene_against_the_card(scene_catalog, ckpt, tmp_path, monkeypatch):
    wf = _workflow(ckpt)
    model, scene, before, grid = plan(wf, scene_catalog.scene("scaled"))
    assert model.bands == BANDS and before is None and grid.res[0] == 10.0

    message = user_error(ModelError, plan, wf, scene_catalog.scene("unscaled"))
    assert "'unscaled'" in message and "scale" in message

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cluster was started")

    monkeypatch.setattr("pipeline.orchestrate.dask_client", no_cluster)
    options = RunOptions(out=tmp_path / "out", progress=False)
    with pytest.raises(ModelError, match="scale"):
        run(wf, scene_catalog.scene("unscaled"), None, options)
    # No output; only engine auto's converted network, kept for the next run to reuse.
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".cache"]


def test_plan_refuses_a_scene_at_another_resolution(scene_catalog, net, tmp_path):
    path = tmp_path / "coarse.ckpt"
    save_checkpoint(path, net.state_dict(), dict(HPARAMS), make_card(gsd_m=60.0))
    message = user_error(ModelError, plan, _workflow(path), scene_catalog.scene("scaled"))
    assert "10.0 m pixels" in message and "60.0 m" in message and "resample" in message
