"""The `coco` suite: what erasing costs the rest of the model, as FID and CLIP score on captioned images.

The captions and their images come from a dataset provider (the `register_datasets` hook: the
built-in `prompts` reads a CSV with `prompt` and `image` columns; a plugin may read COCO's own
annotation files). The suite freezes the rows it uses into `captions.csv` (caption, seed, image), so
every run (the base model's and each membrane's) samples the same captions with the same seeds,
and a resumed run sees the same list. Each run's images are then scored: FID against the dataset's
own images (their statistics computed once) and the CLIP score of each image against its caption.
"""

from __future__ import annotations

import csv
import hashlib
import io
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import config_error
from .suites import FID_OPTIONS, Options, _eval_device, fid_note, inputs_checked

CAPTIONS = "captions.csv"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class CocoSuite:
    name = "coco"
    rescore = FID_OPTIONS | {"clip_model", "clip"}
    score_columns = ("FID", "CLIP_score")
    units = "FID: lower is better; CLIP score: higher"

    def check(self, opts: Options) -> None:
        """Read the dataset now: an unknown provider, no rows or no images fail before any training."""
        with inputs_checked():  # an unknown provider, an unknown option, a missing file
            captions = self.captions(opts)
        if not captions:
            raise config_error(f"dataset {opts.extra['dataset']!r} gave no captions (check --data-root, "
                               "--dataset-option and --limit)")
        if opts.extra.get("fid") and not opts.extra.get("fid_reference"):
            missing = [prompt for prompt, _seed, image in captions if not image]
            if missing:
                raise config_error(f"dataset {opts.extra['dataset']!r}: {len(missing)} caption(s) have no image "
                                   f"(first: {missing[0][:60]!r}); FID needs the dataset's images: give "
                                   "--fid-reference DIR or --no-fid")
            absent = [image for _p, _s, image in captions if image and not Path(image).is_file()]
            if absent:
                raise config_error(f"dataset {opts.extra['dataset']!r}: image {absent[0]} not found "
                                   f"({len(absent)} missing)")

    def unavailable(self, opts: Options) -> list[str]:
        """The metrics this machine cannot compute, said before training (the run still goes on)."""
        from ..eval.quality import clip_unavailable

        reasons = fid_note(opts)
        why = clip_unavailable(opts.extra["clip_model"]) if opts.extra.get("clip") else None
        return reasons + ([f"{why} (--no-clip-score to leave it out)"] if why else [])

    def train_groups(self, opts: Options) -> list[tuple[str, list[str], str]]:
        concepts = [c for c in opts.extra["concepts"] if c.strip()]
        if not concepts:
            raise config_error("--concepts names nothing to erase")
        return [(opts.extra.get("template") or "concept", concepts, "concepts")]

    def captions(self, opts: Options) -> list[tuple[str, int, str]]:
        """(caption, seed, image path or "") per image to generate: every row once per --seeds offset.

        A row's own seed wins; else row i gets seed i, so captions do not share their starting noise."""
        from ..plugins import get_dataset

        options = dict(opts.extra.get("dataset_options") or {})
        if opts.extra.get("limit") is not None:
            options["limit"] = opts.extra["limit"]
        root = opts.extra.get("data_root")
        rows = list(get_dataset(opts.extra["dataset"]).rows(Path(root) if root else None, use_sample=False,
                                                               **options))
        return [(row.prompt, (row.seed if row.seed is not None else i) + offset,
                 str(Path(row.image).resolve()) if row.image else "")
                for offset in opts.seeds or [0] for i, row in enumerate(rows)]

    def sample_overrides(self, opts: Options, root: Path) -> dict[str, Any]:
        from ..fileio import write_text_atomic

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["prompt", "seed", "image"])
        writer.writerows(self.captions(opts))
        path = root / CAPTIONS
        write_text_atomic(path, buffer.getvalue())
        return {"prompts_file": str(path), "row_settings": True}  # every caption with its own seed

    def reference(self, opts: Options) -> Any:
        """FID's reference: the given folder, else the dataset's images (each once)."""
        from ..eval.base import EvalRun, load_runs

        if opts.extra.get("fid_reference"):
            return load_runs([opts.extra["fid_reference"]], ["reference"])[0]
        images = list(dict.fromkeys(image for _p, _s, image in self.captions(opts) if image))
        return EvalRun("reference", opts.output_dir, [{"file": image} for image in images])

    def scorer(self, opts: Options) -> Any:
        import sys

        from ..eval.base import MetricUnavailable
        from ..eval.quality import ClipScoreMetric, FidReference

        device = _eval_device(opts)
        clip_model = opts.extra["clip_model"]
        reference = self.reference(opts) if opts.extra.get("fid") else None
        against = FidReference(reference, opts.extra.get("fid_feature") or 2048, device=device) if reference else None
        pins = {"fid": fid_pins(opts, reference), "clip": clip_pins(clip_model) if opts.extra.get("clip") else None,
                "captions": f"dataset {opts.extra['dataset']}, {len(self.captions(opts))} images to generate",
                "seeds": f"row i: its own seed, else i; plus each of {opts.seeds or [0]}"}
        unavailable: dict[str, str] = {}

        def attempt(metric: str, compute: Any) -> Any:
            if metric in unavailable:
                return None
            try:
                return compute()
            except MetricUnavailable as exc:  # said once; the other score still comes
                unavailable[metric] = str(exc)
                print(f"note: {metric} not computed: {exc}", file=sys.stderr)
                return None

        def score(run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            row: dict[str, Any] = {"FID": None, "CLIP_score": None, "images": len(run.records)}
            if against is not None:
                row["FID"] = attempt("FID", lambda: against.score(run))
            if opts.extra.get("clip"):
                row["CLIP_score"] = attempt("CLIP score", lambda: ClipScoreMetric().evaluate(
                    [run], clip_model=clip_model, device=device).table[run.label]["clip_score"])
            return row, pins

        return score

    def evaluator_digests(self, opts: Options) -> dict[str, str]:
        """A CLIP folder whose weights change in place: the runs are scored again."""
        pins = clip_pins(opts.extra["clip_model"]) if opts.extra.get("clip") else {}
        return {"clip_model": str(pins.get("sha256"))}

    def package_pins(self) -> tuple[str, ...]:
        return ("torchmetrics", "torch-fidelity")


@lru_cache(maxsize=4)  # hashing CLIP-L's weights takes seconds; asked for by the cache key and the pins
def clip_pins(model: str) -> dict[str, Any]:
    """The CLIP model's id and its weights' SHA-256 (a local folder's, or the hub cache's copy)."""
    from ..eval.classifiers import file_sha256

    files: list[Path] = []
    if Path(model).is_dir():
        files = sorted(p for p in Path(model).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(model, name)
                if isinstance(found, str):
                    files = [Path(found)]
                    break
        except Exception:  # not cached (or no hub client): the id alone is pinned
            files = []
    digests = {p.name: file_sha256(p) for p in files}
    joined = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(digests.items())).encode()).hexdigest()
    return {"model": model, "files": digests, "sha256": joined if digests else None,
            "score": "torchmetrics CLIPScore: max(mean over the run of 100 x cosine(image, caption), 0)"}


def fid_pins(opts: Options, reference: Any) -> dict[str, Any] | None:
    if reference is None:
        return None
    # names and sizes, not contents (30,000 images) nor places (the same dataset moved is the same)
    paths = [Path(reference.folder) / r["file"] for r in reference.records]
    listing = "\n".join(f"{p.name}:{p.stat().st_size}" for p in paths)
    feature = opts.extra.get("fid_feature")
    return {"reference": opts.extra.get("fid_reference") or f"dataset {opts.extra['dataset']}",
            "reference_images": len(reference.records),
            "reference_list_sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "network": "supplied" if feature else "torchmetrics FrechetInceptionDistance: torch-fidelity InceptionV3 "
            "(pt_inception-2015-12-05), 2048 features",
            "resize": "299x299 bicubic (PIL), [0, 1]"}
