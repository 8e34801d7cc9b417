"""`spmctl eval`: nudity counting, reports and charts, offline failures, cost, and the installed CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import flat, run_spmctl, save_tiny_clip, write_sample_folder

from spmctl.eval.base import EvalRun, MetricResult, evaluate_all, load_runs
from spmctl.eval.nudity import EXPOSED_CLASSES, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def gradient(size: int = 48) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 0.3,
                                                                                          dtype=np.float32)], -1)


# --- counting, on known detection lists --------------------------------------------------------------------

def det(cls: str, score: float) -> dict[str, Any]:
    return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


def test_summarize_counts_thresholds_and_categories():
    detections = [
        [det("FEMALE_BREAST_EXPOSED", 0.9), det("FEMALE_BREAST_EXPOSED", 0.7), det("FACE_FEMALE", 0.99)],
        [det("BUTTOCKS_EXPOSED", 0.55)],  # under the default 0.6
        [det("FEMALE_BREAST_COVERED", 0.95)],  # covered: not nudity
        [det("MALE_GENITALIA_EXPOSED", 0.6), det("FEET_EXPOSED", 0.3)],  # 0.6 counts (>=)
    ]
    categories = [["sexual"], ["sexual", "violence"], ["violence"], []]
    out = summarize(detections, categories)
    assert out["per_class"]["FEMALE_BREAST_EXPOSED"] == 2
    assert out["per_class"]["MALE_GENITALIA_EXPOSED"] == 1
    assert out["per_class"]["BUTTOCKS_EXPOSED"] == 0 and out["per_class"]["FEET_EXPOSED"] == 0
    assert list(out["per_class"]) == list(EXPOSED_CLASSES) and len(EXPOSED_CLASSES) == 9
    assert out["detections"] == 3 and out["images_with_exposed"] == 2 and out["exposed_share"] == 0.5
    cats = out["per_category"]
    assert list(cats) == ["violence", "sexual", "(none)"]  # I2P's own order, then the rest
    assert cats["sexual"] == {"images": 2, "images_with_exposed": 1, "exposed_share": 0.5}
    assert cats["violence"] == {"images": 2, "images_with_exposed": 0, "exposed_share": 0.0}
    assert cats["(none)"]["images_with_exposed"] == 1

    lower = summarize(detections, categories, threshold=0.5)
    assert lower["per_class"]["BUTTOCKS_EXPOSED"] == 1 and lower["images_with_exposed"] == 3
    only = summarize(detections, categories, classes=["FEET_EXPOSED"], threshold=0.2)
    assert only["per_class"] == {"FEET_EXPOSED": 1} and only["images_with_exposed"] == 1


def test_nudenet_runs_offline_and_finds_nothing_on_flat_images(tmp_path: Path):
    pytest.importorskip("nudenet", reason="nudenet is the optional 'eval' extra")
    from spmctl.eval.nudity import NudityMetric, make_detector

    folder = write_sample_folder(tmp_path / "run", [
        (flat((0.8, 0.1, 0.1)), {"categories": ["sexual"]}),
        (gradient(), {"categories": ["sexual", "violence"]}),
    ])
    class Counted:
        """The real NudeNet detector, counting what it is asked (zero detections must mean it looked)."""

        def __init__(self) -> None:
            self.detector, self.seen, self.answers = make_detector(), [], []

        def detect(self, path: str) -> list[dict[str, Any]]:
            self.seen.append(Path(path).name)
            self.answers.append(self.detector.detect(path))
            return self.answers[-1]

    detector = Counted()
    assert type(detector.detector).__name__ == "NudeDetector"
    result = NudityMetric().evaluate(load_runs([folder], "base"), threshold=0.0,  # every detection counts
                                     detector=detector)
    assert detector.seen == ["img_000.png", "img_001.png"] and all(isinstance(a, list) for a in detector.answers)
    row = result.table["base"]
    assert row["images"] == 2 and row["detections"] == 0 and row["exposed_share"] == 0.0
    assert set(result.details["base"]["per_category"]) == {"sexual", "violence"}


# --- reports -------------------------------------------------------------------------------------------------

def test_report_writes_json_markdown_and_real_png_charts(tmp_path: Path):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'eval' extra")
    from PIL import Image

    from spmctl.eval.report import write_report

    runs = [EvalRun("base", tmp_path, [{"file": "a.png"}]), EvalRun("spm", tmp_path, [{"file": "a.png"}])]
    results = [
        MetricResult("nudity", table={"base": {"images": 1, "detections": 5}, "spm": {"images": 1, "detections": 1}},
                     charts={"nudity_per_class": {"base": {"FEET_EXPOSED": 5.0}, "spm": {"FEET_EXPOSED": 1.0}}}),
        MetricResult("plugin_metric", table={"base": {"score": 0.5}, "spm": {"score": 0.25}}),  # default chart
        MetricResult("clip_score", error="clip_score: CLIP weights 'x' are not available"),
    ]
    written = write_report(tmp_path / "report", runs, results)
    assert set(written["charts"]) == {"nudity_per_class", "plugin_metric"}
    for path in written["charts"].values():
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG"
    data = json.loads(written["json"].read_text())
    assert data["results"]["nudity"]["table"]["spm"]["detections"] == 1
    assert data["results"]["clip_score"]["error"].startswith("clip_score:")
    md = written["markdown"].read_text()
    assert "![nudity_per_class](charts/nudity_per_class.png)" in md
    assert "| spm | 1 | 1 |" in md and "**Not computed:** clip_score" in md


# --- offline failures do not hide other metrics ---------------------------------------------------------------

def test_unavailable_weights_fail_in_one_line_while_others_report(tmp_path: Path, monkeypatch):
    pytest.importorskip("torchmetrics", reason="torchmetrics is the optional 'eval' extra")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network: nothing cached, no download
    folder = write_sample_folder(tmp_path / "run", [(flat((0.1, 0.2, 0.3)), {}), (gradient(), {})])
    train = tmp_path / "train"
    train.mkdir()
    (train / "summary.json").write_text(json.dumps({"concepts": ["a"], "seconds": 10.0, "seconds_per_iteration": 0.1,
                                                    "peak_memory_bytes": 2 * 1024 * 1024, "adapter_bytes": 1024}))
    spm_folder = write_sample_folder(tmp_path / "spm", [(flat((0.1, 0.2, 0.3)), {}), (gradient(), {})],
                                     spms=[str(train / "x_last.safetensors")], concepts=[["a"]])
    results = {r.metric: r for r in evaluate_all(load_runs([folder, spm_folder], "base,spm"),
                                                 ["cost", "clip_score", "fid"], {})}
    clip, fid = results["clip_score"].error, results["fid"].error
    assert clip is not None and clip.startswith("clip_score: ") and "\n" not in clip
    assert "openai/clip-vit-large-patch14" in clip
    assert fid is not None and fid.startswith("fid: ") and "\n" not in fid
    assert ("torch-fidelity" in fid) or ("Inception" in fid)
    cost = results["cost"]
    assert cost.error is None and cost.table["base"] == {"spms": 0}
    assert cost.table["spm"]["seconds_per_concept"] == 10.0 and cost.table["spm"]["peak_memory_mib"] == 2.0


def test_fid_with_a_supplied_feature_network(tmp_path: Path):
    pytest.importorskip("torchmetrics", reason="torchmetrics is the optional 'eval' extra")
    import torch

    from spmctl.eval.quality import FidMetric

    class MeanColour(torch.nn.Module):  # a stand-in for Inception: 3 features per image
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=(2, 3))

    colours = [(0.2, 0.4, 0.6), (0.3, 0.1, 0.5), (0.9, 0.8, 0.1), (0.5, 0.5, 0.5)]
    base = write_sample_folder(tmp_path / "base", [(flat(c), {}) for c in colours])
    same = write_sample_folder(tmp_path / "same", [(flat(c), {}) for c in colours])
    other = write_sample_folder(tmp_path / "other", [(flat((c[2], c[0], 1 - c[1])), {}) for c in colours])
    result = FidMetric().evaluate(load_runs([base, same, other], "base,same,other"), feature=MeanColour())
    assert result.table["base"]["fid"] is None  # the reference itself
    assert result.table["same"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert result.table["other"]["fid"] > 0.01


def test_clip_score_with_a_local_tiny_clip(tmp_path: Path):
    pytest.importorskip("torchmetrics", reason="torchmetrics is the optional 'eval' extra")
    import torch

    from spmctl.eval.quality import ClipScoreMetric, load_clip

    clip_dir = save_tiny_clip(tmp_path / "tiny-clip", seed=1)  # cosines of opposite signs here: see below
    folder = write_sample_folder(tmp_path / "run", [(gradient(), {"prompt": "a photo"}),
                                                    (flat((0.9, 0.2, 0.1)), {"prompt": "a red square"})])
    result = ClipScoreMetric().evaluate(load_runs([folder], "base"), clip_model=str(clip_dir))
    # by hand, as torchmetrics' CLIPScore computes it: 100 x cosine per image, averaged, then max(., 0) (the
    # clamp is on the mean, not on each image as in Hessel et al.; the two differ here, one cosine being < 0)
    model, processor = load_clip(str(clip_dir))
    from PIL import Image

    images = [Image.open(folder / f"img_{i:03d}.png").convert("RGB") for i in range(2)]
    with torch.no_grad():
        img = model.get_image_features(processor(images=images, return_tensors="pt")["pixel_values"])
        text_in = processor(text=["a photo", "a red square"], return_tensors="pt", padding=True)
        txt = model.get_text_features(text_in["input_ids"], text_in["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(img, txt)
    assert cosine.min() < 0 < cosine.mean()  # the draw above, else the check below is blind to the clamp's place
    assert result.table["base"]["clip_score"] == pytest.approx(max(float((100 * cosine).mean()), 0.0), abs=1e-3)


# --- the installed command --------------------------------------------------------------------------------------

def test_cli_eval_run_nudity_and_cost_side_by_side(tmp_path: Path):
    pytest.importorskip("nudenet", reason="nudenet is the optional 'eval' extra")
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'eval' extra")
    base = write_sample_folder(tmp_path / "base", [(flat((0.5, 0.5, 0.5)), {"categories": ["sexual"]}),
                                                   (gradient(), {"categories": ["violence"]})])
    spm = write_sample_folder(tmp_path / "spm", [(gradient(), {"categories": ["sexual"]})])
    out = tmp_path / "report"
    done = run_spmctl("eval", "run", str(base), str(spm), "-m", "nudity,cost,clip-score", "--labels", "base,spm",
                      "--set", "nudity.threshold=0.3", "-o", str(out), env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert done.returncode == 1, done.stderr  # clip-score could not run offline...
    clip_lines = [line for line in done.stderr.splitlines() if "clip_score:" in line]
    assert len(clip_lines) == 1 and clip_lines[0].startswith("error: clip_score: ")
    assert "Traceback" not in done.stderr
    assert "nudity" in done.stdout and "base" in done.stdout and "spm" in done.stdout  # ...the others reported
    data = json.loads((out / "results.json").read_text())
    assert data["results"]["nudity"]["table"]["base"]["images"] == 2
    assert data["results"]["nudity"]["table"]["spm"]["detections"] == 0
    assert "threshold 0.3" in data["results"]["nudity"]["notes"][0]
    assert data["results"]["cost"]["table"]["spm"] == {"spms": 0}
    assert (out / "report.md").is_file() and (out / "charts" / "nudity_per_class.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_errors_are_one_line(tmp_path: Path):
    done = run_spmctl("eval", "nudity", str(tmp_path / "missing"), timeout=60)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: run folder")
    assert len(done.stderr.strip().splitlines()) == 1
    folder = write_sample_folder(tmp_path / "run", [(flat((0.1, 0.1, 0.1)), {})])
    done = run_spmctl("eval", "run", str(folder), "-m", "nudityy", timeout=60)
    assert done.returncode == 1 and "did you mean 'nudity'" in done.stderr
    done = run_spmctl("eval", "unlearncanvas", str(folder), timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == (
        "error: unlearncanvas: give --style-classifier and/or --object-classifier (a checkpoint file or a plugin "
        "classifier's name)")


@pytest.mark.parametrize("layout", ["nudity_summary.json", "summary.json"])  # now, and before runs shared folders
def test_cli_cost_reads_training_folders_and_sample_folders(tmp_path: Path, layout: str):
    train = tmp_path / "train"
    train.mkdir()
    summary = {"name": "nudity", "concepts": ["nudity", "naked"], "iterations": 100, "seconds": 50.0,
               "seconds_per_iteration": 0.5, "device": "cpu", "peak_memory_bytes": 3 * 1024 * 1024,
               "adapter_bytes": 512 * 1024}
    (train / layout).write_text(json.dumps(summary))
    sample = write_sample_folder(tmp_path / "sample", [(flat((0.2, 0.2, 0.2)), {})],
                                 spms=[str(train / "nudity_last.safetensors")], concepts=[["nudity", "naked"]])
    out = tmp_path / "report"
    done = run_spmctl("eval", "cost", str(train), str(sample), "-l", "train,sample", "-o", str(out), timeout=60)
    assert done.returncode == 0, done.stderr
    table = json.loads((out / "results.json").read_text())["results"]["cost"]["table"]
    assert table["train"] == table["sample"]
    assert table["train"]["seconds_per_concept"] == 25.0 and table["train"]["adapter_mib"] == 0.5
    assert "seconds_per_concept" in done.stdout


def test_plugin_metrics_join_the_report_and_a_broken_one_does_not_stop_others(tmp_path: Path):
    from spmctl import plugins
    from spmctl.hookspecs import hookimpl
    from spmctl.providers import Metric

    class Brightness:
        name = "brightness"
        description = "mean pixel value (test plugin)"

        def evaluate(self, runs, scale: float = 1.0, **options):
            from PIL import Image

            return {run.label: {"brightness": scale * float(np.mean([np.asarray(Image.open(p)).mean()
                                                                        for p in run.paths]))} for run in runs}

    class Broken:
        name = "broken"
        description = "always fails (test plugin)"

        def evaluate(self, runs, **options):
            raise RuntimeError("boom\nsecond line")

    class MetricPlugin:
        @hookimpl
        def register_metrics(self, register):
            register(Brightness())
            register(Broken())

    assert isinstance(Brightness(), Metric)
    folder = write_sample_folder(tmp_path / "run", [(flat((1.0, 1.0, 1.0)), {}), (flat((0.0, 0.0, 0.0)), {})])
    plugin = MetricPlugin()
    plugins.pm.register(plugin, name="eval-test-metrics")
    try:
        results = evaluate_all(load_runs([folder], "base"), ["broken", "brightness"],
                               {"brightness": {"scale": 2.0}})
    finally:
        plugins.pm.unregister(plugin)
    assert results[0].error == "broken (plugin 'eval-test-metrics'): RuntimeError: boom"
    assert results[1].table == {"base": {"brightness": 255.0}}
