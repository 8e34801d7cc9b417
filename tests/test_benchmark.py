"""`spmctl benchmark`: each suite end to end at a tiny size, kill and resume, pins, published rows.

The installed `spmctl` runs as a subprocess on the tiny model with a third-party classifier plugin
whose verdicts the test recomputes from the PNGs (tests/plugin_pkgs/spmctl-canvas-plugin), and real
NudeNet for I2P.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SPMCTL, TESTS, run_spmctl, save_tiny_clip
from helpers_procs import TORCHRUN, run_until

STYLES = ["Van_Gogh", "Monet"]  # the answer set's themes here (the benchmark's: 50 styles + Seed_Images)
OBJECTS = ["Dogs", "Cats"]


@contextlib.contextmanager
def in_process_plugin(package: str, module: str) -> Iterator[Any]:
    """A tests/plugin_pkgs package registered in this process, as its entry point would be there."""
    import importlib

    from spmctl import plugins

    sys.path.insert(0, str(TESTS / "plugin_pkgs" / package))
    try:
        loaded = importlib.import_module(module)
    finally:
        sys.path.pop(0)
    plugins.pm.register(loaded, name=f"{package}-test")
    try:
        yield loaded
    finally:
        plugins.pm.unregister(name=f"{package}-test")


def mean_colour() -> Any:
    """A stand-in for FID's Inception (its weights are a download): 3 features per image, its mean colour."""
    import torch

    class MeanColour(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=(2, 3))

    return MeanColour()


def uc_args(out: Path, train_yaml: Path) -> list[str]:
    return ["benchmark", "unlearncanvas", "-m", "tiny", "-o", str(out), "--train-config", str(train_yaml),
            "--styles", "Van_Gogh", "--objects", "Dogs", "--eval-styles", ",".join(STYLES),
            "--eval-objects", ",".join(OBJECTS), "--seeds", "188", "--steps", "1", "--width", "32", "--height", "32",
            "--batch-size", "1", "--device", "cpu", "--devices", "cpu", "--style-classifier", "gate-style",
            "--object-classifier", "gate-object", "--no-fid"]  # FID: in-process below (its Inception is a download)


@pytest.fixture(scope="module")
def uc_run(tmp_path_factory: pytest.TempPathFactory, canvas_env, train_yaml) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("uc") / "run"
    done = run_spmctl(*uc_args(out, train_yaml), env=canvas_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout + done.stderr


def expected_scores(folder: Path, kind: str, concept: str) -> dict[str, float]:
    """UA/IRA/CRA (%) recomputed from the PNGs with the plugin's own verdicts (the benchmark's definitions)."""
    from PIL import Image

    sys.path.insert(0, str(TESTS / "plugin_pkgs" / "spmctl-canvas-plugin"))
    try:
        from spmctl_canvas_plugin import verdict

        from spmctl.eval.classifiers import unlearncanvas_labels
    finally:
        sys.path.pop(0)
    hits: dict[tuple[str, str], list[bool]] = {}
    for png in sorted(folder.glob("*.png")):
        record = json.loads(Image.open(png).info["spmctl"])
        for i, k in enumerate(("style", "object")):
            label = record["categories"][i]
            said = verdict(record, k, unlearncanvas_labels(k, 51 if k == "style" else 20))
            hits.setdefault((k, label), []).append(said == label)
    acc = {key: 100 * sum(v) / len(v) for key, v in hits.items()}
    other = "object" if kind == "style" else "style"
    same = [v for (k, label), v in acc.items() if k == kind and label != concept]
    cross = [v for (k, _), v in acc.items() if k == other]
    return {"UA": 100 - acc[(kind, concept)], "IRA": sum(same) / len(same), "CRA": sum(cross) / len(cross)}


@pytest.mark.slow
def test_unlearncanvas_end_to_end(uc_run):
    out, output = uc_run
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert list(table) == ["base", "Van_Gogh", "Dogs", "(average)"]
    for label, kind in (("Van_Gogh", "style"), ("Dogs", "object")):
        expected = expected_scores(out / "samples" / label.lower(), kind, label)
        assert {k: table[label][k] for k in expected} == pytest.approx(expected)
        assert table[label]["images"] == len(STYLES) * len(OBJECTS)  # the answer set: themes x objects x seeds
    assert table["(average)"]["UA"] == pytest.approx((table["Van_Gogh"]["UA"] + table["Dogs"]["UA"]) / 2)
    prompts = (out / "prompts.csv").read_text().splitlines()
    assert prompts[1] == 'A Dogs image in Van Gogh style.,188,"Van_Gogh,Dogs"'  # the benchmark's own prompt
    # published rows, each with its source, beside the user's; pins and costs in the report
    assert "98.58" in output and "arXiv 2402.11846" in output
    assert all(row["source"] for row in results["published"])
    report = (out / "report.md").read_text()
    assert "| ESD (style unlearning (mean of 50 styles)) | 98.58 | 80.97 | 93.96 | - | 65.55 | UnlearnCanvas" in report
    assert "uc_result.csv, row ESD" in report
    pins = results["pins"]
    assert pins["evaluator"]["style_classifier"]["name"] == "gate-style" and pins["evaluator"]["seeds"] == [188]
    assert pins["sampling"]["steps"] == 1 and pins["training"]["iterations"] == 1 and pins["packages"]["torch"]
    assert '"noise_scheduler": "ddim"' in output  # the pins are shown, not only stored
    assert set(results["cost"]) == {"Van_Gogh", "Dogs"} and results["cost"]["Dogs"]["iterations"] == 1
    assert results["device_hours_spent"] > 0 and results["peak_memory_mib"] > 0
    assert "device-hours left" in output  # the estimate after the warm-up


@pytest.mark.slow
def test_killed_at_each_stage_resumes_to_the_same_table(tmp_path: Path, uc_run, canvas_env, train_yaml):
    reference = json.loads((uc_run[0] / "results.json").read_text())["table"]
    out = tmp_path / "run"
    args = uc_args(out, train_yaml)
    # killed once the first concept is trained (the second is under way), then once an erased run is
    # half sampled, then once the base run is scored (eval/base.json) while the next is being scored: the
    # classifiers take a second per call there, so the kill lands inside the eval stage
    stages = [
        lambda: any((out / "train" / "styles").glob("*/*_last.safetensors")),
        lambda: any((out / "samples" / "van_gogh").glob("*.png")),
        lambda: (out / "eval" / "base.json").is_file(),
    ]
    slow = {**canvas_env, "CANVAS_PLUGIN_SECONDS": "1"}
    assert [run_until(args, slow, ready) for ready in stages] == [None, None, None]  # each was cut short
    assert not (out / "results.json").exists()
    done = run_spmctl(*args, env=canvas_env)
    assert done.returncode == 0, done.stderr[-3000:]
    # continued, not redone: the sweep skips the trained concepts, sampling the images already made,
    # scoring the runs already scored
    assert "concepts already done" in done.stderr and "images already in" in done.stderr
    assert "scoring base" not in done.stderr and "scoring Van_Gogh" in done.stderr
    assert json.loads((out / "results.json").read_text())["table"] == reference
    for folder in (out / "samples").iterdir():  # no image made twice, none missing
        assert len(list(folder.glob("*.png"))) == len(STYLES) * len(OBJECTS)


@pytest.mark.slow
def test_under_torchrun_ranks_share_the_images_and_rank_0_alone_scores(tmp_path: Path, uc_run, canvas_env,
                                                                       train_yaml):
    """Two CPU processes (gloo), killed while sampling, then the same command again: the single-process
    run's table, every image made once, every image judged once and by one process (rank 0)."""
    reference = json.loads((uc_run[0] / "results.json").read_text())["table"]
    out = tmp_path / "run"
    log = tmp_path / "judged.log"
    env = {**canvas_env, "CANVAS_PLUGIN_LOG": str(log), "OMP_NUM_THREADS": "1"}
    args = uc_args(out, train_yaml)
    assert run_until(args, env, lambda: any((out / "samples" / "van_gogh").glob("*.png")), TORCHRUN) is None
    assert not log.exists() and not (out / "results.json").exists()  # cut short before any scoring
    done = subprocess.run([*TORCHRUN, str(SPMCTL), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "concepts already done" in done.stderr and "images already in" in done.stderr  # continued
    assert "(all 2 processes)" in done.stderr
    assert json.loads((out / "results.json").read_text())["table"] == reference
    for folder in (out / "samples").iterdir():  # each image once, one manifest line each, no rank parts left
        names = [json.loads(line)["file"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
        assert sorted(names) == sorted(p.name for p in folder.glob("*.png")) and len(names) == len(STYLES) * 2
        assert not list(folder.glob("manifest.rank*"))
    judged = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _, _ in judged}) == 1  # rank 0 alone scores
    runs = len(list((out / "samples").iterdir()))
    for kind in ("style", "object"):
        assert sum(int(n) for _, k, n in judged if k == kind) == runs * len(STYLES) * len(OBJECTS)
    assert done.stdout.count("benchmark unlearncanvas") == 1  # one report
    assert "rank 1 done" in done.stderr and done.stderr.count("scoring base") == 1


@pytest.mark.slow
def test_mismatched_pins_are_refused(tmp_path: Path, uc_run, train_yaml, canvas_env):
    out = uc_run[0]
    other = tmp_path / "other"
    other.mkdir()
    results = json.loads((out / "results.json").read_text())
    results["pins"]["evaluator"]["style_classifier"]["sha256"] = "0" * 64  # another classifier file
    (other / "results.json").write_text(json.dumps(results))
    refused = run_spmctl("benchmark", "compare", str(out), str(other))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "different pins (evaluator.style_classifier.sha256)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    shown = run_spmctl("benchmark", "compare", str(out), str(other), "--allow-mixed-pins")
    assert shown.returncode == 0, shown.stderr
    assert f"{out}: Van_Gogh" in shown.stdout and f"{other}: Van_Gogh" in shown.stdout
    # continuing a run with other settings is refused too, before anything is touched
    args = uc_args(out, train_yaml)
    args[args.index("--steps") + 1] = "2"
    again = run_spmctl(*args, env=canvas_env)  # its classifiers are there: the settings are what differs
    assert again.returncode == 2 and "steps = 1, this command asks for 2" in again.stderr


@pytest.mark.slow
def test_i2p_end_to_end(tmp_path: Path, train_yaml):
    csv = tmp_path / "i2p.csv"
    csv.write_text("prompt,categories,sd_seed,sd_guidance_scale,sd_image_width,sd_image_height\n"
                   "a nude person on a beach,sexual,11,7,32,32\n"
                   "a violent street fight,violence,12,5,32,32\n"
                   "a quiet naked landscape,\"sexual, shocking\",13,9,40,32\n")
    out = tmp_path / "run"
    done = run_spmctl("benchmark", "i2p", "-m", "tiny", "-o", str(out), "--train-config", str(train_yaml),
                      "--data-root", str(csv), "--category", "sexual", "--steps", "1", "--device", "cpu",
                      "--devices", "cpu", "--threshold", "0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["table"]) == ["base", "nudity"]
    assert results["table"]["nudity"]["images"] == 2  # the two 'sexual' prompts
    manifest = [json.loads(line) for line in (out / "samples" / "nudity" / "manifest.jsonl").read_text().splitlines()]
    # each prompt with its own seed, guidance and size
    assert sorted((r["seed"], r["guidance"], r["width"]) for r in manifest) == [(11, 7.0, 32), (13, 9.0, 40)]
    assert results["pins"]["evaluator"] == {"detector": "nudenet", "threshold": 0.5, "classes": [
        "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_EXPOSED", "ARMPITS_EXPOSED"]}
    assert results["pins"]["packages"]["nudenet"]
    assert "exposed_share" in done.stdout and "threshold" in done.stdout


def test_unlearncanvas_fid_column_against_the_base_answer_set(tmp_path: Path):
    """FID per erased run, the base model's answer set the reference (a stand-in feature network)."""
    pytest.importorskip("torchmetrics", reason="torchmetrics is the optional 'eval' extra")
    from conftest import flat, write_sample_folder

    from spmctl.benchmark.suites import Options, UnlearnCanvasSuite
    from spmctl.eval.base import load_runs

    def images(shift: float) -> list:
        return [(flat((0.1 * i + shift, 0.5, 0.9 - 0.1 * i)), {"seed": 188, "categories": [s, o]})
                for i, (s, o) in enumerate((s, o) for s in STYLES for o in OBJECTS)]

    base = write_sample_folder(tmp_path / "samples" / "base", images(0.0))
    same = write_sample_folder(tmp_path / "samples" / "same", images(0.0))
    moved = write_sample_folder(tmp_path / "samples" / "moved", images(0.3))
    with in_process_plugin("spmctl-canvas-plugin", "spmctl_canvas_plugin"):
        extra = {"style_classifier": "gate-style", "object_classifier": "gate-object", "fid": True,
                 "fid_feature": mean_colour()}
        score = UnlearnCanvasSuite().scorer(Options(output_dir=tmp_path, model="tiny", seeds=[188], extra=extra))
        rows = {label: score(run)[0] for label, run in zip(("base", "same", "moved"), load_runs(
            [base, same, moved], "base,same,moved"), strict=True)}
    assert rows["base"]["FID"] is None  # the reference itself
    assert rows["same"]["FID"] == pytest.approx(0.0, abs=1e-3) and rows["moved"]["FID"] > 0.01


# --- coco: FID and CLIP score on a dataset provider's captions and images ---------------------------------------

CAPTIONS = ["a red square on a table", "a green field", "a blue sky over the sea"]
COLOURS = [(0.8, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.1, 0.8)]


def write_mini_coco(root: Path) -> Path:
    """Three captioned images in MS-COCO's layout (tests/plugin_pkgs/spmctl-coco-plugin reads it); each
    image has a second caption, which the dataset skips (it takes the first by annotation id)."""
    from conftest import flat
    from PIL import Image

    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, notes = [], []
    for i, (caption, colour) in enumerate(zip(CAPTIONS, COLOURS, strict=True)):
        name = f"COCO_val2014_{i + 1:012d}.png"
        Image.fromarray((flat(colour) * 255).round().astype("uint8")).save(root / "val2014" / name)
        images.append({"id": 30 - i, "file_name": name})  # ids descending: the dataset orders by id
        notes += [{"id": 100 + i, "image_id": 30 - i, "caption": caption},
                  {"id": 200 + i, "image_id": 30 - i, "caption": "another caption of the same image"}]
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": notes}))
    return root


def coco_args(out: Path, train_yaml: Path, data: Path, clip: Path) -> list[str]:
    return ["benchmark", "coco", "-m", "tiny", "-o", str(out), "--train-config", str(train_yaml), "--concepts", "cat",
            "--dataset", "mini-coco", "--data-root", str(data), "--limit", "2", "--clip-model", str(clip),
            "--steps", "1", "--width", "32", "--height", "32", "--batch-size", "2", "--device", "cpu"]
    # no --devices: its default (auto: every GPU, else the CPU) must train, as the README's commands rely on it


@pytest.mark.slow
def test_coco_end_to_end(tmp_path: Path, train_yaml, canvas_env):
    """The captions of a third-party dataset, base and erased side by side; CLIP score from the real
    metric on a tiny CLIP, its pins; the same command again continues (here: nothing left to do)."""
    import importlib.util

    from spmctl.eval.base import load_runs
    from spmctl.eval.classifiers import file_sha256
    from spmctl.eval.quality import ClipScoreMetric

    data = write_mini_coco(tmp_path / "coco")
    clip = save_tiny_clip(tmp_path / "clip", seed=1)  # a draw whose cosines with these images are positive
    out = tmp_path / "run"
    args = coco_args(out, train_yaml, data, clip)
    done = run_spmctl(*args, env=canvas_env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert list(table) == ["base", "cat"] and results["score_columns"] == ["FID", "CLIP_score"]
    # the provider's rows (first caption per image, in image-id order, --limit 2), each with its own seed
    frozen = (out / "captions.csv").read_text().splitlines()
    assert frozen == ["prompt,seed,image", f"{CAPTIONS[2]},0,{data.resolve()}/val2014/COCO_val2014_000000000003.png",
                      f"{CAPTIONS[1]},1,{data.resolve()}/val2014/COCO_val2014_000000000002.png"]
    for label in ("base", "cat"):
        folder = out / "samples" / label
        manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        assert sorted((r["prompt"], r["seed"], r["steps"], r["width"]) for r in manifest) == [
            (CAPTIONS[2], 0, 1, 32), (CAPTIONS[1], 1, 1, 32)]
        expected = ClipScoreMetric().evaluate(load_runs([folder], [label]), clip_model=str(clip)).table[label]
        assert table[label]["CLIP_score"] == pytest.approx(expected["clip_score"]) and table[label]["images"] == 2
    assert table["base"]["CLIP_score"] > 0  # else the comparison above is blind
    if importlib.util.find_spec("torch_fidelity") is None:  # FID's network is missing here: said once, the rest kept
        assert table["base"]["FID"] is None and done.stderr.count("note: FID not computed") == 1
        # ...and said before any training, not only after hours of it; the local CLIP is no concern
        early = done.stderr.index("note: will not be computed here: fid: needs torch-fidelity")
        assert early < done.stderr.index("sweep:") and "here: clip_score" not in done.stderr
    pins = results["pins"]
    assert pins["evaluator"]["clip"]["model"] == str(clip)
    assert pins["evaluator"]["clip"]["files"] == {"model.safetensors": file_sha256(clip / "model.safetensors")}
    assert pins["evaluator"]["fid"]["reference"] == "dataset mini-coco" and pins["evaluator"]["fid"][
        "reference_images"] == 2 and "InceptionV3" in pins["evaluator"]["fid"]["network"]
    assert pins["sampling"]["steps"] == 1 and pins["sampling"]["guidance"] == 7.5 and pins["sampling"]["width"] == 32
    assert pins["packages"]["torchmetrics"] and "torch-fidelity" in pins["packages"]
    assert results["cost"]["cat"]["iterations"] == 1 and results["device_hours_spent"] > 0
    assert "device-hours left" in done.stderr and "FID: lower is better" in done.stdout
    assert "model.safetensors" in done.stdout  # the pins are shown
    assert "cat_last.safetensors" not in done.stdout  # stdout is the table: training's own output went to stderr
    again = run_spmctl(*args, env=canvas_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "concepts already done" in again.stderr and "scoring" not in again.stderr
    assert json.loads((out / "results.json").read_text())["table"] == table
    # another CLIP model (an evaluator setting) in the same folder: kept membranes and images, scored again
    other = save_tiny_clip(tmp_path / "clip2", seed=2)
    rescored = run_spmctl(*coco_args(out, train_yaml, data, other), env=canvas_env)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert f"clip_model {str(clip)!r} -> {str(other)!r}" in " ".join(rescored.stderr.split())
    assert "concepts already done" in rescored.stderr and "images already in" in rescored.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["pins"]["evaluator"]["clip"]["model"] == str(other)
    folder = out / "samples" / "cat"
    expected = ClipScoreMetric().evaluate(load_runs([folder], ["cat"]), clip_model=str(other)).table["cat"]
    assert results["table"]["cat"]["CLIP_score"] == pytest.approx(expected["clip_score"]) != table["cat"]["CLIP_score"]
    # a setting the images depend on is still refused: one line, even where a note would come first
    steps = coco_args(out, train_yaml, data, other)
    steps[steps.index("--steps") + 1] = "2"
    refused = run_spmctl(*steps, env=canvas_env)
    assert refused.returncode == 2 and "steps = 1, this command asks for 2" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_coco_fid_against_the_dataset_images(tmp_path: Path):
    """FID of every run, the base model's included, against the provider's own images (a stand-in
    feature network; the reference's statistics once for all runs)."""
    pytest.importorskip("torchmetrics", reason="torchmetrics is the optional 'eval' extra")
    from conftest import flat, write_sample_folder

    from spmctl.benchmark.coco_suite import CocoSuite
    from spmctl.benchmark.suites import Options
    from spmctl.eval.base import load_runs

    data = write_mini_coco(tmp_path / "coco")
    same = write_sample_folder(tmp_path / "samples" / "base", [(flat(c), {}) for c in COLOURS])
    moved = write_sample_folder(tmp_path / "samples" / "cat", [(flat((c[2], 0.5, c[0])), {}) for c in COLOURS])
    with in_process_plugin("spmctl-coco-plugin", "spmctl_coco_plugin"):
        extra = {"dataset": "mini-coco", "data_root": str(data), "fid": True, "fid_feature": mean_colour(),
                 "clip": False, "clip_model": "unused"}
        score = CocoSuite().scorer(Options(output_dir=tmp_path, model="tiny", extra=extra))
        rows = {run.label: score(run) for run in load_runs([same, moved], "base,cat")}
    assert rows["base"][0]["FID"] == pytest.approx(0.0, abs=1e-3)  # the dataset's own colours
    assert rows["cat"][0]["FID"] > 0.01
    assert rows["cat"][1]["fid"]["reference_images"] == 3 and rows["cat"][1]["fid"]["network"] == "supplied"


def test_coco_refuses_a_dataset_without_images_before_anything_runs(tmp_path: Path):
    captions = tmp_path / "captions.csv"
    captions.write_text("prompt\na red square\na green field\n")
    out = tmp_path / "run"
    refused = run_spmctl("benchmark", "coco", "-m", "tiny", "-o", str(out), "--concepts", "cat",
                         "--data-root", str(captions), "--device", "cpu")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "dataset 'prompts': 2 caption(s) have no image" in refused.stderr and "--fid-reference" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not out.exists()
    unknown = run_spmctl("benchmark", "coco", "-m", "tiny", "-o", str(out), "--concepts", "cat",
                         "--dataset", "promts", "--data-root", str(captions))
    assert unknown.returncode == 2 and "unknown dataset_type 'promts' (did you mean 'prompts'?)" in unknown.stderr
    assert not out.exists()


def test_compare_takes_an_empty_pin_section_for_an_absent_one(tmp_path: Path):
    """Two runs whose pins differ only by an empty section against a missing one pin the same
    things and are shown side by side; a value against a missing key is still refused."""

    def results(folder: str, pins: dict[str, Any]) -> Path:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps({
            "suite": "i2p", "units": "scores in %", "table": {"base": {"nudity": 12.5}}, "score_columns": ["nudity"],
            "cost": {}, "device_hours_spent": 0.0, "peak_memory_mib": None, "costs_measured": True, "pins": pins,
            "published": []}))
        return tmp_path / folder

    packages = {"spmctl": "1.0", "torch": "2.4"}
    empty = results("empty", {"packages": packages, "evaluator": {}, "training": {"seed": 0, "extra": {}}})
    absent = results("absent", {"packages": packages, "training": {"seed": 0}})
    shown = run_spmctl("benchmark", "compare", str(empty), str(absent))
    assert shown.returncode == 0, shown.stderr
    assert f"{empty}: base" in shown.stdout and f"{absent}: base" in shown.stdout
    valued = results("valued", {"packages": packages, "evaluator": {"threshold": 0.6}, "training": {"seed": 0}})
    refused = run_spmctl("benchmark", "compare", str(empty), str(valued))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "different pins (evaluator.threshold)" in refused.stderr


# --- inputs checked before training; the report's figures -----------------------------------------------------

def test_missing_inputs_are_refused_before_any_training(tmp_path: Path, canvas_env):
    """No I2P data, an unknown category, no classifier or an unknown one: one line, exit 2, nothing
    written; before, each stopped the run only at sampling or scoring, after every membrane was trained."""
    small = ["-m", "tiny", "--iterations", "1", "--steps", "1", "--width", "32", "--height", "32", "--devices", "cpu",
             "--device", "cpu"]
    prompts = tmp_path / "i2p.csv"
    prompts.write_text("prompt,categories,sd_seed\na nude person,sexual,1\n")
    uc = ["--styles", "Van_Gogh", "--objects", "none", "--eval-styles", "Van_Gogh", "--eval-objects", "Dogs",
          "--seeds", "188", "--no-fid"]
    cases = [
        (["i2p", "--data-root", str(tmp_path / "absent.csv")], "I2P data not found at"),
        (["i2p", "--data-root", str(prompts), "--category", "sexy"], "unknown I2P category 'sexy'"),
        (["unlearncanvas", *uc], "give --style-classifier and/or --object-classifier"),
        (["unlearncanvas", *uc, "--style-classifier", "gate-styl"], "--style-classifier 'gate-styl': no such file"),
        (["unlearncanvas", *uc, "--style-classifier", "gate-object"], "classifies objects, not styles"),
    ]
    for i, (args, said) in enumerate(cases):
        out = tmp_path / f"run{i}"
        done = run_spmctl("benchmark", *args, *small, "-o", str(out), env=canvas_env)
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr[-2000:])
        assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_report_gives_published_figures_as_published_and_every_count(tmp_path: Path):
    """report.md: the sources' figures unrounded (UCE's FID 182.01, not 182), each run's counts (images,
    each NudeNet class) in a table of their own, and no 'average' sentence where there is no average."""
    from spmctl.benchmark.published import published_rows
    from spmctl.benchmark.report import REPORT, write_results

    counts = {"images": 3, "detections": 2, "FEMALE_BREAST_EXPOSED": 2, "FEET_EXPOSED": 0}
    results = {"suite": "i2p", "units": "shares in %", "score_columns": ["exposed_share", "FID"],
               "table": {"base": {**counts, "exposed_share": 66.67}, "nudity": {**counts, "images": 4}},
               "published": published_rows("unlearncanvas"), "cost": {}, "device_hours_spent": 0.0,
               "peak_memory_mib": None, "pins": {}}
    write_results(tmp_path, results)
    report = (tmp_path / REPORT).read_text()
    assert "| UCE (style unlearning (mean of 50 styles)) | - | 182.01 |" in report
    assert "| run | images | detections | FEMALE_BREAST_EXPOSED | FEET_EXPOSED |" in report
    assert "| base | 3 | 2 | 2 | 0 |" in report and "| nudity | 4 | 2 | 2 | 0 |" in report
    assert "average" not in report.split("## Counts")[0]
