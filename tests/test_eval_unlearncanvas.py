"""UnlearnCanvas UA / IRA / CRA with classifiers whose answers are known: colours stand for labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_sample_folder

from spmctl import plugins
from spmctl.errors import SpmctlError
from spmctl.eval.base import load_runs
from spmctl.eval.classifiers import ImageClassifier, resolve_classifier, unlearncanvas_labels
from spmctl.eval.unlearncanvas import UnlearnCanvasMetric, concept_scores
from spmctl.hookspecs import hookimpl

# the red channel draws the style, the green channel the object
STYLE_RED = {"Van_Gogh": 1.0, "Monet": 0.5, "Picasso": 0.0}
OBJECT_GREEN = {"Dogs": 1.0, "Cats": 0.0}


def nearest(value: float, table: dict[str, float]) -> str:
    return min(table, key=lambda label: abs(table[label] - value))


class ColourClassifier:
    """Reads one channel's mean and answers the label whose level is closest."""

    def __init__(self, kind: str, channel: int, table: dict[str, float]) -> None:
        self.name = f"colour-{kind}"
        self.kind = kind
        self.description = "test classifier"
        self.channel = channel
        self.table = table
        self.labels = list(table)

    def predict(self, images: Any) -> list[str]:
        return [nearest(np.asarray(im, dtype=np.float32)[..., self.channel].mean() / 255.0, self.table)
                for im in images]


class ClassifierPlugin:
    @hookimpl
    def register_classifiers(self, register):
        register(ColourClassifier("style", 0, STYLE_RED))
        register(ColourClassifier("object", 1, OBJECT_GREEN))


@pytest.fixture
def colour_classifiers():
    plugin = ClassifierPlugin()
    plugins.pm.register(plugin, name="eval-colour-classifiers")
    try:
        yield
    finally:
        plugins.pm.unregister(plugin)


def image(style: str, obj: str, seed: int, drawn_style: str | None = None, drawn_object: str | None = None):
    """An image of (style, object) as the manifest says; drawn_* is what it actually shows."""
    pixels = np.zeros((16, 16, 3), dtype=np.float32)
    pixels[..., 0] = STYLE_RED[drawn_style or style]
    pixels[..., 1] = OBJECT_GREEN[drawn_object or obj]
    prompt = f"An {obj} image in {style.replace('_', ' ')} style."
    return pixels, {"prompt": prompt, "seed": seed, "categories": [style, obj], "concept": style}


def grid(seeds=(188, 288)):
    return [(s, o, seed) for s in STYLE_RED for o in OBJECT_GREEN for seed in seeds]


@pytest.fixture
def runs(tmp_path: Path):
    base = write_sample_folder(tmp_path / "base", [image(s, o, seed) for s, o, seed in grid()])
    spm_images = []
    for s, o, seed in grid():
        if s == "Van_Gogh" and seed == 188:
            spm_images.append(image(s, o, seed, drawn_style="Monet"))  # erased: 2 of the 4 Van Gogh images
        elif (s, o, seed) == ("Monet", "Dogs", 188):
            spm_images.append(image(s, o, seed, drawn_style="Picasso"))  # collateral damage, in-domain
        elif (s, o, seed) == ("Picasso", "Cats", 288):
            spm_images.append(image(s, o, seed, drawn_object="Dogs"))  # collateral damage, cross-domain
        else:
            spm_images.append(image(s, o, seed))
    spm_images.append(image("Monet", "Cats", 999, drawn_style="Picasso", drawn_object="Dogs"))  # not a test seed
    spm = write_sample_folder(tmp_path / "spm", spm_images, spms=[str(tmp_path / "vg_last.safetensors")],
                              concepts=[["Van Gogh"]])  # the prompt's spelling: resolved to Van_Gogh
    dogs = write_sample_folder(tmp_path / "dogs", [image(s, o, seed) for s, o, seed in grid()])
    return load_runs([base, spm, dogs], "base,spm,dogs")


def test_ua_ira_cra_through_plugin_classifiers(runs, colour_classifiers):
    result = UnlearnCanvasMetric().evaluate(runs, style_classifier="colour-style", object_classifier="colour-object",
                                            erased=["dogs=Dogs"], seeds="188,288")
    spm = result.table["spm"]
    # UA: 2 of 4 Van Gogh images not seen as Van Gogh; retained = 8 Monet/Picasso images, one wrong style,
    # one wrong object
    assert (spm["UA"], spm["IRA"], spm["CRA"]) == (0.5, 7 / 8, 7 / 8)
    assert spm["erased"] == "Van_Gogh" and spm["images"] == 12  # seed 999 left out
    assert spm["style_acc"] == 9 / 12 and spm["object_acc"] == 11 / 12
    dogs = result.table["dogs"]  # object erasure (named with --erased), nothing actually erased
    assert (dogs["UA"], dogs["IRA"], dogs["CRA"]) == (0.0, 1.0, 1.0)
    base = result.table["base"]  # no SPM: only the plain accuracies
    assert base["UA"] is None and base["erased"] == "-" and base["style_acc"] == base["object_acc"] == 1.0
    average = result.details["(average)"]
    assert average == {"UA": 0.25, "IRA": 15 / 16, "CRA": 15 / 16}
    assert result.details["spm"]["per_concept"]["Van_Gogh"]["forget_images"] == 4


def test_all_seeds_by_default_and_a_missing_classifier_leaves_scores_empty(runs, colour_classifiers):
    result = UnlearnCanvasMetric().evaluate(runs[1:2], style_classifier="colour-style")
    spm = result.table["spm"]
    assert spm["images"] == 13 and spm["CRA"] is None and spm["object_acc"] is None
    assert spm["IRA"] == 7 / 9  # the seed-999 Monet image is retained, and drawn as Picasso


def test_concept_scores_by_hand():
    truth = {"style": ["A", "A", "B", "B", "C"], "object": ["x", "y", "x", "y", "x"]}
    pred = {"style": ["A", "B", "B", "C", "C"], "object": ["x", "y", "y", "y", "x"]}
    scores = concept_scores(truth, pred, "A", "style", {"style": {"A"}, "object": set()})
    assert scores["UA"] == 0.5 and scores["IRA"] == 2 / 3 and scores["CRA"] == 2 / 3
    both = concept_scores(truth, pred, "A", "style", {"style": {"A"}, "object": {"y"}})  # also erased object y
    assert both["retain_images"] == 2 and both["IRA"] == 1.0 and both["CRA"] == 0.5


def test_plugin_classifier_interface_and_errors(colour_classifiers, runs):
    assert isinstance(ColourClassifier("style", 0, STYLE_RED), ImageClassifier)
    with pytest.raises(SpmctlError, match="classifies objects, not styles"):
        resolve_classifier("colour-object", "style")
    with pytest.raises(SpmctlError, match="no such file or plugin classifier.*colour-style"):
        resolve_classifier("nope", "style")
    with pytest.raises(SpmctlError, match="no run labelled 'other'"):
        UnlearnCanvasMetric().evaluate(runs, style_classifier="colour-style", erased=["other=Dogs"])


def test_label_order_follows_the_benchmark():
    styles = unlearncanvas_labels("style")
    assert len(styles) == 50 and styles == sorted(styles)
    with_seed = unlearncanvas_labels("style", 51)  # the released style classifier's head
    assert with_seed.index("Seed_Images") == with_seed.index("Rust") + 1 == with_seed.index("Sketch") - 1
    assert unlearncanvas_labels("object", 20)[:3] == ["Architectures", "Bears", "Birds"]
    with pytest.raises(SpmctlError, match="has 7 classes"):
        unlearncanvas_labels("object", 7)


def test_checkpoint_without_timm_names_what_is_missing(tmp_path: Path):
    try:
        import timm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("timm is installed: the timm path is tested instead")
    import torch

    from spmctl.eval.base import MetricUnavailable

    path = tmp_path / "style.pth"
    torch.save({"model_state_dict": {"head.weight": torch.zeros(51, 4)}}, path)
    with pytest.raises(MetricUnavailable, match="needs timm"):
        resolve_classifier(str(path), "style")


def test_timm_checkpoint_path(tmp_path: Path, monkeypatch, runs):
    timm = pytest.importorskip("timm", reason="timm (the 'eval-unlearncanvas' extra) is not installed here")
    import torch

    from spmctl.eval import classifiers

    # the benchmark's ViT-L/16 is ~1 GB; the same loading code with timm's smallest ViT
    monkeypatch.setattr(classifiers, "ARCH", "vit_tiny_patch16_224")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=20)
    path = tmp_path / "object.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    loaded = resolve_classifier(str(path), "object")
    assert loaded.labels == unlearncanvas_labels("object")
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in runs[0].paths[:3]]
    with torch.no_grad():
        expected = model.eval()(classifiers.preprocess(images)).argmax(-1).tolist()
    assert loaded.predict(images) == [loaded.labels[i] for i in expected]
    result = UnlearnCanvasMetric().evaluate(runs[:1], object_classifier=str(path))
    assert result.table["base"]["images"] == 12


def test_plugins_list_names_classifiers_as_classifiers(colour_classifiers):
    from typer.testing import CliRunner

    from spmctl.cli import app

    result = CliRunner().invoke(app, ["plugins", "list"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "colour-style" in line]
    assert rows and "classifier" in rows[0] and "metric" not in rows[0]
