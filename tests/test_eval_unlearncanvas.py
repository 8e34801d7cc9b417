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
    # UA: 2 of 4 Van Gogh images not seen as Van Gogh; IRA: mean of Monet (3/4) and Picasso (1); CRA, as the
    # benchmark: mean of Dogs (6/6) and Cats (5/6) over every style's images, Van Gogh's included
    assert (spm["UA"], spm["IRA"], spm["CRA"]) == pytest.approx((0.5, 7 / 8, 11 / 12))
    assert spm["CRA_without_erased"] == 7 / 8  # spmctl's variant: the 8 Monet/Picasso images, one wrong object
    assert spm["erased"] == "Van_Gogh" and spm["images"] == 12  # seed 999 left out
    assert spm["style_acc"] == 9 / 12 and spm["object_acc"] == 11 / 12
    dogs = result.table["dogs"]  # object erasure (named with --erased), nothing actually erased
    assert (dogs["UA"], dogs["IRA"], dogs["CRA"]) == (0.0, 1.0, 1.0)
    base = result.table["base"]  # no SPM: only the plain accuracies
    assert base["UA"] is None and base["erased"] == "-" and base["style_acc"] == base["object_acc"] == 1.0
    average = result.details["(average)"]
    assert average == pytest.approx({"UA": 0.25, "IRA": 15 / 16, "CRA": 23 / 24, "CRA_without_erased": 15 / 16})
    assert result.details["pins"]["seeds"] == [188, 288]
    assert result.details["pins"]["style_classifier"]["name"] == "colour-style"
    assert result.details["spm"]["per_concept"]["Van_Gogh"]["forget_images"] == 4


def test_all_seeds_by_default_and_a_missing_classifier_leaves_scores_empty(runs, colour_classifiers):
    result = UnlearnCanvasMetric().evaluate(runs[1:2], style_classifier="colour-style")
    spm = result.table["spm"]
    assert spm["images"] == 13 and spm["CRA"] is None and spm["object_acc"] is None
    assert spm["IRA"] == (3 / 5 + 1) / 2  # Monet's accuracy counts the seed-999 image, drawn as Picasso


def test_concept_scores_by_hand():
    truth = {"style": ["A", "A", "B", "B", "C"], "object": ["x", "y", "x", "y", "x"]}
    pred = {"style": ["A", "B", "B", "C", "C"], "object": ["x", "y", "y", "y", "x"]}
    scores = concept_scores(truth, pred, "A", "style", {"style": {"A"}, "object": set()})
    # per-label accuracies: styles A 1/2, B 1/2, C 1; objects x 2/3 (A's image included), y 1
    assert (scores["UA"], scores["IRA"], scores["CRA"]) == pytest.approx((0.5, 0.75, 5 / 6))
    assert scores["CRA_without_erased"] == 2 / 3  # objects of the B and C images only
    both = concept_scores(truth, pred, "A", "style", {"style": {"A"}, "object": {"y"}})  # also erased object y
    assert both["retain_images"] == 2 and (both["IRA"], both["CRA"]) == pytest.approx((0.75, 5 / 6))
    assert both["CRA_without_erased"] == 0.5


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


def random_vit_checkpoint(path: Path, classes: int, dim: int = 128, depth: int = 2) -> dict[str, Any]:
    """A small random classifier in the benchmark's key layout (timm's ViT names under
    `model_state_dict`), 224-px input with 16-px patches and 64-dim heads, as ViT-L/16 has."""
    import torch

    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=g) * 0.2

    state = {"cls_token": rand(1, 1, dim), "pos_embed": rand(1, 197, dim),
             "patch_embed.proj.weight": rand(dim, 3, 16, 16), "patch_embed.proj.bias": rand(dim),
             "norm.weight": 1 + rand(dim), "norm.bias": rand(dim), "head.weight": rand(classes, dim),
             "head.bias": rand(classes)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + rand(dim), b + "norm1.bias": rand(dim),
                      b + "attn.qkv.weight": rand(3 * dim, dim), b + "attn.qkv.bias": rand(3 * dim),
                      b + "attn.proj.weight": rand(dim, dim), b + "attn.proj.bias": rand(dim),
                      b + "norm2.weight": 1 + rand(dim), b + "norm2.bias": rand(dim),
                      b + "mlp.fc1.weight": rand(4 * dim, dim), b + "mlp.fc1.bias": rand(4 * dim),
                      b + "mlp.fc2.weight": rand(dim, 4 * dim), b + "mlp.fc2.bias": rand(dim)})
    torch.save({"model_state_dict": state, "epoch": 3}, path)
    return state


def vit_by_hand(state: dict[str, Any], x: Any) -> Any:
    """The oracle: timm's ViT forward written out with plain tensor ops (64-dim heads)."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    def ln(h, name):
        return F.layer_norm(h, h.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=1e-6)

    def lin(h, name):
        return h @ state[name + ".weight"].T + state[name + ".bias"]

    h = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([state["cls_token"].expand(len(h), -1, -1), h], 1) + state["pos_embed"]
    dim = h.shape[-1]
    heads = dim // 64
    for i in range(1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))):
        b = f"blocks.{i}."
        q, k, v = lin(ln(h, b + "norm1"), b + "attn.qkv").split(dim, dim=-1)
        q, k, v = (t.reshape(len(h), -1, heads, 64).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
        h = h + lin(attn.transpose(1, 2).reshape(len(h), -1, dim), b + "attn.proj")
        h = h + lin(F.gelu(lin(ln(h, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
    return lin(ln(h, "norm")[:, 0], "head")


def test_plain_loader_reads_the_benchmark_checkpoint_without_timm(tmp_path: Path, runs):
    import torch
    from PIL import Image

    from spmctl.eval import classifiers

    path = tmp_path / "style.pth"
    state = random_vit_checkpoint(path, classes=51)  # the released style head: 50 styles + Seed_Images
    loaded = resolve_classifier(str(path), "style", loader="plain")
    assert loaded.loader == "plain" and loaded.labels == unlearncanvas_labels("style", 51)
    assert loaded.sha256 == classifiers.file_sha256(path) and len(loaded.sha256) == 64
    images = [Image.open(p).convert("RGB") for p in runs[0].paths[:4]]
    with torch.no_grad():
        logits = vit_by_hand(state, classifiers.preprocess(images))
        assert torch.allclose(loaded.module(classifiers.preprocess(images)), logits, atol=1e-4)
    assert loaded.predict(images) == [loaded.labels[i] for i in logits.argmax(-1).tolist()]
    result = UnlearnCanvasMetric().evaluate(runs[:1], style_classifier=str(path), loader="plain")
    assert result.details["pins"]["style_classifier"]["sha256"] == loaded.sha256
    del state["blocks.1.mlp.fc2.bias"]  # a checkpoint that does not fit: one line naming the key
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(SpmctlError, match="does not fit.*blocks.1.mlp.fc2.bias"):
        resolve_classifier(str(path), "style", loader="plain")


def test_timm_loader_and_plain_loader_agree(tmp_path: Path, runs):
    """timm (the benchmark's own loader) where it imports; the plain ViT must give the same logits."""
    try:
        import timm
    except Exception:  # timm imports torchvision, which fails beside the CPU torch here
        from spmctl.eval.base import MetricUnavailable

        path = tmp_path / "object.pth"
        random_vit_checkpoint(path, classes=20)
        with pytest.raises(MetricUnavailable, match="needs timm"):
            resolve_classifier(str(path), "object", loader="timm")
        assert resolve_classifier(str(path), "object").loader == "plain"  # auto falls back
        pytest.skip("timm cannot import here: its loader is untested on this machine")
    import torch
    from PIL import Image

    from spmctl.eval import classifiers

    # the benchmark's ViT-L/16 is ~1 GB; the same loading code with timm's smallest ViT
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=20)
    path = tmp_path / "object.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    images = [Image.open(p).convert("RGB") for p in runs[0].paths[:3]]
    with torch.no_grad():
        expected = model.eval()(classifiers.preprocess(images))
    plain = resolve_classifier(str(path), "object", loader="plain")
    with torch.no_grad():
        assert torch.allclose(plain.module(classifiers.preprocess(images)), expected, atol=1e-4)
    import unittest.mock

    with unittest.mock.patch.object(classifiers, "ARCH", "vit_tiny_patch16_224"):
        loaded = resolve_classifier(str(path), "object", loader="timm")
    assert loaded.loader == "timm" and loaded.labels == unlearncanvas_labels("object")
    assert loaded.predict(images) == [loaded.labels[i] for i in expected.argmax(-1).tolist()]


def test_plugins_list_names_classifiers_as_classifiers(colour_classifiers):
    from typer.testing import CliRunner

    from spmctl.cli import app

    result = CliRunner().invoke(app, ["plugins", "list"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "colour-style" in line]
    assert rows and "classifier" in rows[0] and "metric" not in rows[0]
