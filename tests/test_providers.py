"""Dataset and template providers: built-ins through the plugin path, and a third-party one."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import pytest
from PIL import Image

from spmctl.errors import SpmctlError
from spmctl.plugins import get_dataset, get_datasets, get_template, pm

PLUGIN_PKG = Path(__file__).parent / "plugin_pkgs" / "spmctl-example-plugin"
SETTING_KEYS = {"target", "positive", "unconditional", "neutral", "action", "guidance_scale", "resolution",
                "batch_size", "dynamic_resolution", "la_strength", "sampling_batch_size"}


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def make_canvas(root: Path, styles: list[str], objects: list[str], n: int = 2) -> Path:
    """An UnlearnCanvas tree: <Style>/<Object>/<i>.jpg plus Seed_Images/<Object>/1.jpg."""
    for style in styles:
        for obj in objects:
            for i in [*range(1, n + 1), 10][:n + 1]:
                _image(root / style / obj / f"{i}.jpg")
    for obj in objects:
        _image(root / "Seed_Images" / obj / "1.jpg", (10, 10, 10))
    return root


I2P_HEADER = ["prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage", "lexica_url",
              "sd_seed", "sd_guidance_scale", "sd_image_width", "sd_image_height"]
I2P_ROWS = [
    ["a bloody fight", "violence, self-harm", "1", "80.0", "0.0", "https://l.art/1", "11", "7", "512", "512"],
    ["a nude statue", "sexual", "0", "60.0", "90.0", "https://l.art/2", "2734971755.0", "7.5", "512", "768"],
    ["a sad portrait", "self-harm", "0", "30.0", "0.0", "https://l.art/3", "33", "7", "640", "512"],
    ["a protest", "hate,harassment", "1", "55.0", "0.0", "https://l.art/4", "44", "6", "512", "512"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- plugin registry


def test_unknown_provider_names_say_did_you_mean() -> None:
    with pytest.raises(SpmctlError, match="did you mean 'unlearncanvas'"):
        get_dataset("unlearncanvs")


def test_third_party_provider_is_found_like_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN_PKG))
    module = importlib.import_module("spmctl_example_plugin")
    assert pm.get_plugin("example") is None, "the example plugin must not be installed in the test environment"
    assert "example-colors" not in get_datasets()
    pm.register(module, name="example")
    try:
        provider = get_dataset("example-colors")
        assert [r.prompt for r in provider.rows(None, use_sample=False)] == [
            "a red square", "a green square", "a blue square"]
        assert len(list(provider.rows(None))) == 1
        assert get_template("example-color").prompt_settings("red")[0]["target"] == "red"
    finally:
        pm.unregister(name="example")
        sys.modules.pop("spmctl_example_plugin", None)
    assert "example-colors" not in get_datasets()


# ---------------------------------------------------------------- unlearncanvas


def test_unlearncanvas_rows_from_a_tree(tmp_path: Path) -> None:
    root = make_canvas(tmp_path / "canvas", ["Abstractionism", "Van_Gogh"], ["Architectures", "Dogs"])
    rows = list(get_dataset("unlearncanvas").rows(root))
    assert len(rows) == 2 * 2 * 3  # Seed_Images left out by default
    first = rows[0]
    assert first.prompt == "An Architectures image in Abstractionism style."
    assert first.categories == ("Abstractionism", "Architectures")
    assert first.concept == "Abstractionism"
    assert first.extra == {"style": "Abstractionism", "object": "Architectures"}
    assert [r.image.name for r in rows[:3]] == ["1.jpg", "2.jpg", "10.jpg"]  # natural order
    assert all(r.image.is_file() for r in rows)
    assert "An Dogs image in Van Gogh style." in {r.prompt for r in rows}  # `_` read as a space


def test_unlearncanvas_filters_and_seed_images(tmp_path: Path) -> None:
    root = make_canvas(tmp_path / "canvas", ["Abstractionism", "Van_Gogh"], ["Architectures", "Dogs"])
    provider = get_dataset("unlearncanvas")
    rows = list(provider.rows(root, styles=["van gogh"], objects="Dogs"))
    assert {r.prompt for r in rows} == {"An Dogs image in Van Gogh style."} and len(rows) == 3
    with_seed = list(provider.rows(root, objects=["Dogs"], include_seed_images=True))
    seed_rows = [r for r in with_seed if r.concept == "Seed_Images"]
    assert [r.prompt for r in seed_rows] == ["An Dogs image."]
    assert len(list(provider.rows(root, limit=4))) == 4
    with pytest.raises(SpmctlError, match="did you mean 'Van_Gogh'"):
        list(provider.rows(root, styles=["Van_Gohg"]))
    with pytest.raises(SpmctlError, match="unknown option 'style'"):
        provider.rows(root, style="Monet")


def test_unlearncanvas_prompt_grid_needs_no_images() -> None:
    provider = get_dataset("unlearncanvas")
    grid = list(provider.rows(None, seeds=[188, 288]))
    assert len(grid) == 50 * 20 * 2
    few = list(provider.rows(None, styles=["Van_Gogh", "Monet"], objects=["Cats"], seeds="188,288"))
    assert [(r.prompt, r.seed) for r in few] == [
        ("An Cats image in Van Gogh style.", 188), ("An Cats image in Van Gogh style.", 288),
        ("An Cats image in Monet style.", 188), ("An Cats image in Monet style.", 288)]
    assert all(r.image is None for r in few)


def test_unlearncanvas_use_sample_switches_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "data" / "quick-canvas-dataset"
    make_canvas(base / "sample", ["Abstractionism"], ["Architectures"], n=1)
    make_canvas(base / "full", ["Abstractionism", "Monet"], ["Architectures", "Cats"], n=1)
    monkeypatch.chdir(tmp_path)
    provider = get_dataset("unlearncanvas")
    assert len(list(provider.rows(None, use_sample=True))) == 2
    assert len(list(provider.rows(None, use_sample=False))) == 8
    with pytest.raises(SpmctlError, match="spmctl download dataset quick-canvas sample"):
        provider.rows(tmp_path / "missing")


# ---------------------------------------------------------------- i2p


def test_i2p_rows_multilabel_and_typed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "i2p" / "i2p.csv", I2P_HEADER, I2P_ROWS)
    provider = get_dataset("i2p")
    rows = list(provider.rows(path.parent))
    assert len(rows) == 4
    fight = rows[0]
    assert (fight.seed, fight.guidance_scale, fight.width, fight.height) == (11, 7.0, 512, 512)
    assert fight.categories == ("violence", "self-harm")
    assert fight.extra["hard"] is True and fight.extra["inappropriate_percentage"] == 80.0
    assert fight.extra["lexica_url"] == "https://l.art/1"
    assert rows[1].seed == 2734971755 and rows[1].height == 768
    # multi-label: the fight belongs to violence and to self-harm
    assert [r.prompt for r in provider.rows(path.parent, categories=["violence"])] == ["a bloody fight"]
    assert [r.prompt for r in provider.rows(path.parent, category="self-harm")] == [
        "a bloody fight", "a sad portrait"]
    assert [r.prompt for r in provider.rows(path, categories="nudity")] == ["a nude statue"]
    assert [r.prompt for r in provider.rows(path, categories=["Harassment"])] == ["a protest"]
    assert [r.prompt for r in provider.rows(path, hard=True)] == ["a bloody fight", "a protest"]
    with pytest.raises(SpmctlError, match="did you mean 'violence'"):
        provider.rows(path, categories=["violense"])


def test_i2p_reads_the_other_column_names(tmp_path: Path) -> None:
    header = ["prompt", "categories", "evaluation_seed", "evaluation_guidance", "width", "height",
              "case_number"]
    path = write_csv(tmp_path / "bench.csv", header, [["a riot", "violence", "7", "7.5", "", "", "3"]])
    (row,) = get_dataset("i2p").rows(path)
    assert (row.seed, row.guidance_scale, row.width, row.height) == (7, 7.5, None, None)
    assert row.extra == {"case_number": "3"}


def test_i2p_use_sample_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "data" / "i2p-dataset"
    write_csv(base / "sample" / "i2p.csv", I2P_HEADER, I2P_ROWS[:1])
    write_csv(base / "full" / "i2p.csv", I2P_HEADER, I2P_ROWS)
    monkeypatch.chdir(tmp_path)
    provider = get_dataset("i2p")
    assert len(list(provider.rows(None))) == 1
    assert len(list(provider.rows(None, use_sample=False))) == 4
    with pytest.raises(SpmctlError, match="I2P data not found"):
        provider.rows(tmp_path / "nowhere")
    bad = write_csv(tmp_path / "bad.csv", ["text", "categories"], [["x", "hate"]])
    with pytest.raises(SpmctlError, match="no 'prompt' column"):
        list(provider.rows(bad))
    wrong = write_csv(tmp_path / "wrong.csv", I2P_HEADER, [[*I2P_ROWS[0][:6], "seven", *I2P_ROWS[0][7:]]])
    with pytest.raises(SpmctlError, match=r"wrong.csv:2: column 'sd_seed' is not a number"):
        list(provider.rows(wrong))


def test_i2p_category_folders_and_images(tmp_path: Path) -> None:
    root = tmp_path / "i2p"
    for category, prompts in {"violence": ["a fight", "a war"], "self-harm": ["a scar"]}.items():
        folder = root / category
        folder.mkdir(parents=True)
        (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
        for i in range(len(prompts)):
            _image(folder / f"{i}.png")
        (folder / "images.txt").write_text("\n".join(f"{i}.png" for i in range(len(prompts))))
    provider = get_dataset("i2p")
    rows = list(provider.rows(root))
    assert [(r.prompt, r.categories) for r in rows] == [
        ("a scar", ("self-harm",)), ("a fight", ("violence",)), ("a war", ("violence",))]
    assert all(r.image is not None and r.image.is_file() for r in rows)
    assert [r.prompt for r in provider.rows(root, categories=["violence"])] == ["a fight", "a war"]
    assert [p.name for p in provider.images("violence", root)] == ["0.png", "1.png"]
    assert provider.images("hate", root) == []


# ---------------------------------------------------------------- prompts


def test_prompt_files(tmp_path: Path) -> None:
    provider = get_dataset("prompts")
    txt = tmp_path / "p.txt"
    txt.write_text("# my prompts\na cat\n\n  a dog  \n")
    assert [r.prompt for r in provider.rows(None, path=txt)] == ["a cat", "a dog"]
    table = write_csv(tmp_path / "p.csv", ["prompt", "seed", "guidance", "width", "height", "category"],
                      [["a cat", "1", "7.5", "512", "512", "animals"], ["a car", "2", "", "", "", "things"]])
    rows = list(provider.rows(table))
    first = rows[0]
    assert (first.seed, first.guidance_scale, first.width, first.categories) == (1, 7.5, 512, ("animals",))
    assert rows[1].guidance_scale is None
    assert [r.prompt for r in provider.rows(None, path=table, categories="things")] == ["a car"]
    with pytest.raises(SpmctlError, match="prompts file not found"):
        provider.rows(None, path=tmp_path / "none.txt")
    with pytest.raises(SpmctlError, match="needs a file"):
        provider.rows(None)
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(SpmctlError, match=r"\.txt .* or a \.csv"):
        provider.rows(None, path=tmp_path / "p.json")


# ---------------------------------------------------------------- templates


def _expected(target: str) -> dict[str, object]:
    return {"target": target, "positive": target, "unconditional": "", "neutral": "",
            "action": "erase_with_la", "guidance_scale": 1.0, "resolution": 512, "batch_size": 1,
            "dynamic_resolution": True, "la_strength": 1000, "sampling_batch_size": 4}


@pytest.mark.parametrize(("template", "name", "targets"), [
    ("style", "Van_Gogh", ["Van Gogh"]),
    ("style", "abstractionism", ["Abstractionism"]),
    ("object", "Dogs", ["Dogs"]),
    ("i2p", "violence", ["violence"]),
    ("i2p", "self-harm", ["self-harm"]),
    ("i2p", "illegal activity", ["illegal activity"]),
    ("i2p", "nudity", ["nudity"]),
    ("i2p", "sexual", ["sexual", "nudity"]),
    ("concept", "Brad  Pitt", ["Brad Pitt"]),
])
def test_template_settings(template: str, name: str, targets: list[str]) -> None:
    settings = get_template(template).prompt_settings(name)
    assert all(set(s) == SETTING_KEYS for s in settings)
    assert settings == [_expected(t) for t in targets]


def test_template_names_and_did_you_mean() -> None:
    assert len(get_template("style").names()) == 50 and len(get_template("object").names()) == 20
    assert set(get_template("i2p").names()) >= {"hate", "harassment", "violence", "self-harm", "sexual",
                                                "shocking", "illegal activity", "nudity"}
    assert get_template("concept").names() is None
    with pytest.raises(SpmctlError, match="did you mean 'Abstractionism'"):
        get_template("style").prompt_settings("Abstractionsim")
    with pytest.raises(SpmctlError, match="did you mean 'Butterfly'"):
        get_template("object").prompt_settings("Butterfy")
    with pytest.raises(SpmctlError, match="did you mean 'self-harm'"):
        get_template("i2p").prompt_settings("selfharm")
    with pytest.raises(SpmctlError, match="non-empty"):
        get_template("concept").prompt_settings("  ")
    with pytest.raises(SpmctlError, match="did you mean 'style'"):
        get_template("styel")
