"""UnlearnCanvas: unlearning accuracy (UA) and in-/cross-domain retain accuracy (IRA, CRA).

As the benchmark computes them (OPTML-Group/UnlearnCanvas, machine_unlearning/evaluation/
quantitative/accuracy.py and its README): a classifier's accuracy is taken per label over every
image carrying that label, whatever the other kind is (a style's accuracy over all its objects and
seeds; an object's over all styles, the erased one and `Seed_Images` included). For a run that
erased concept c of kind K (style or object), with the other kind K':
- UA  = 1 - accuracy of the K classifier on c (share of c's images not classified as c);
- IRA = mean over the other K labels of their K-classifier accuracy;
- CRA = mean over every K' label of its K'-classifier accuracy (c's own images count);
- CRA_without_erased (spmctl's earlier variant, an extra column): the K' classifier's accuracy over
  the images showing no erased concept.
Each image's true style and object come from its manifest record (`categories` = [style, object]);
the erased concepts from the SPMs' concepts. A run that erased several concepts: IRA leaves out every
erased label of kind K. The average over concepts is the mean of the per-concept scores.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from statistics import mean
from typing import Any

from ..errors import SpmctlError
from ..hookspecs import hookimpl
from .base import EvalRun, MetricResult, MetricUnavailable, split_list
from .classifiers import SEED_IMAGES, resolve_classifier, unlearncanvas_labels

BENCHMARK_SEEDS = (188, 288, 588, 688, 888)  # the seeds UnlearnCanvas generates its test images with
AVERAGE = "(average)"
SCORES = ("UA", "IRA", "CRA", "CRA_without_erased")


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def label_accuracy(truth: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Per true label: the share of its images predicted as it (accuracy.py's acc[label])."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for t, p in zip(truth, pred, strict=True):
        hits[t].append(t == p)
    return {label: sum(flags) / len(flags) for label, flags in hits.items()}


def concept_scores(
    truth: dict[str, Sequence[str]],
    pred: dict[str, Sequence[str] | None],
    concept: str,
    kind: str,
    erased: dict[str, set[str]],
) -> dict[str, Any]:
    """UA/IRA/CRA of one erased `concept` of `kind`; `truth`/`pred` map "style"/"object" to labels.

    `erased` holds every concept the run erased, per kind. A missing classifier (pred[kind] is None)
    leaves its scores None.
    """
    other = "object" if kind == "style" else "style"
    same, cross = pred[kind], pred[other]
    acc_same = label_accuracy(truth[kind], same) if same is not None else None
    acc_cross = label_accuracy(truth[other], cross) if cross is not None else None
    retain = [i for i in range(len(truth[kind])) if truth["style"][i] not in erased["style"]
              and truth["object"][i] not in erased["object"]]
    kept = [label for label in (acc_same or {}) if label not in erased[kind]]
    return {
        "kind": kind,
        "UA": 1 - acc_same[concept] if acc_same is not None and concept in acc_same else None,
        "IRA": mean(acc_same[label] for label in kept) if acc_same is not None and kept else None,
        "CRA": mean(acc_cross.values()) if acc_cross else None,
        "CRA_without_erased": _share([cross[i] == truth[other][i] for i in retain]) if cross is not None else None,
        "forget_images": sum(label == concept for label in truth[kind]),
        "retain_images": len(retain),
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def resolve_concept(name: str) -> tuple[str, str] | None:
    """("style"|"object", canonical name) for an SPM's concept text ("Van Gogh" -> Van_Gogh)."""
    from ..providers import resolve_name

    for kind in ("style", "object"):
        try:
            return kind, resolve_name(kind, name, unlearncanvas_labels(kind))
        except SpmctlError:
            continue
    return None


def erased_concepts(run: EvalRun, override: Sequence[str] | None) -> list[tuple[str, str]]:
    """The run's erased (kind, concept) pairs: given ones, else its SPMs' concepts from the manifest."""
    names = list(override) if override is not None else [
        c for spm in (run.records[0].get("concepts") or []) for c in (spm if isinstance(spm, list) else [spm])]
    found: list[tuple[str, str]] = []
    for name in names:
        resolved = resolve_concept(name)
        if resolved is None:
            print(f"unlearncanvas: {run.label}: {name!r} is no UnlearnCanvas style or object; ignored",
                  file=sys.stderr)
        elif resolved not in found:
            found.append(resolved)
    return found


def parse_erased(items: str | Sequence[str] | None) -> dict[str, list[str]]:
    """`LABEL=Concept[+Concept]` items (an empty right side: erased nothing, e.g. the base model)."""
    out: dict[str, list[str]] = {}
    for item in [items] if isinstance(items, str) else items or []:
        label, sep, concepts = str(item).partition("=")
        if not sep or not label.strip():
            raise SpmctlError(f"--erased {item!r}: expected LABEL=CONCEPT[+CONCEPT...]")
        out[label.strip()] = [c.strip() for c in concepts.split("+") if c.strip()]
    return out


def true_labels(records: Sequence[dict[str, Any]]) -> tuple[list[int], list[str], list[str]]:
    """Indices of records with an UnlearnCanvas (style, object), and those labels."""
    styles = set(unlearncanvas_labels("style")) | {SEED_IMAGES}
    objects = set(unlearncanvas_labels("object"))
    keep, style, obj = [], [], []
    for i, record in enumerate(records):
        cats = record.get("categories") or []
        if len(cats) >= 2 and cats[0] in styles and cats[1] in objects:
            keep.append(i)
            style.append(cats[0])
            obj.append(cats[1])
    return keep, style, obj


def classify(classifier: Any, paths: Sequence[Any], batch_size: int) -> list[str]:
    from PIL import Image

    labels: list[str] = []
    for start in range(0, len(paths), batch_size):  # batches bound memory over thousands of images
        images = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        predicted = classifier.predict(images)
        # a plugin's classifier: a wrong answer must be one line naming it, not a KeyError later
        if not isinstance(predicted, list | tuple) or len(predicted) != len(images) or not all(
                label in classifier.labels for label in predicted):
            raise SpmctlError(f"classifier {classifier.name!r}: predict() returned {str(predicted)[:80]}; expected "
                              f"a list of {len(images)} labels from its `labels`")
        labels.extend(predicted)
    return labels


class UnlearnCanvasMetric:
    name = "unlearncanvas"
    description = "UnlearnCanvas UA / IRA / CRA from a style and an object classifier"

    def evaluate(
        self,
        runs: Sequence[EvalRun],
        style_classifier: Any = None,
        object_classifier: Any = None,
        erased: str | Sequence[str] | None = None,
        seeds: str | Sequence[int] | None = None,
        batch_size: int = 16,
        device: str = "cpu",
        loader: str = "auto",
        **_: Any,
    ) -> MetricResult:
        if style_classifier is None and object_classifier is None:
            raise MetricUnavailable("unlearncanvas: give --style-classifier and/or --object-classifier "
                                    "(a checkpoint file or a plugin classifier's name)")
        classifiers = {"style": resolve_classifier(style_classifier, "style", device, loader),
                       "object": resolve_classifier(object_classifier, "object", device, loader)}
        given = seeds if seeds is None or isinstance(seeds, str) else [str(s) for s in seeds]
        try:
            wanted = {int(s) for s in split_list(given)}
        except ValueError:
            raise SpmctlError(f"--seeds {seeds!r}: expected comma-separated integers") from None
        overrides = parse_erased(erased)
        unknown = sorted(set(overrides) - {r.label for r in runs})
        if unknown:
            raise SpmctlError(f"--erased: no run labelled {unknown[0]!r}; labels: {', '.join(r.label for r in runs)}")
        result = MetricResult(metric=self.name, notes=[
            "UA: 1 - the erased concept's accuracy; IRA: mean accuracy of the other labels of its kind; CRA: mean "
            "accuracy of every label of the other kind, each over all its images (the benchmark's accuracy.py); "
            "CRA_without_erased: the other kind's accuracy over images showing no erased concept (spmctl's variant)"])
        result.details["pins"] = {f"{kind}_classifier": classifier_pin(c) for kind, c in classifiers.items()}
        result.details["pins"]["seeds"] = sorted(wanted) or "all"
        per_concept: list[dict[str, Any]] = []
        for run in runs:
            records = [r for r in run.records if not wanted or int(r.get("seed", -1)) in wanted]
            keep, style, obj = true_labels(records)
            if not keep:
                raise SpmctlError(f"unlearncanvas: {run.label}: no images with an UnlearnCanvas style and object "
                                  "(sample with --dataset unlearncanvas; check --seeds)")
            paths = [run.image_path(records[i]) for i in keep]
            truth = {"style": style, "object": obj}
            pred = {kind: classify(c, paths, batch_size) if c is not None else None
                    for kind, c in classifiers.items()}
            concepts = erased_concepts(run, overrides.get(run.label))
            erased_sets = {k: {c for kind, c in concepts if kind == k} for k in ("style", "object")}
            scores = {c: concept_scores(truth, pred, c, kind, erased_sets) for kind, c in concepts}
            row = {"images": len(keep), "erased": "+".join(c for _, c in concepts) or "-"}
            for key in SCORES:
                row[key] = _mean([s[key] for s in scores.values()])
            for kind in ("style", "object"):  # plain accuracies: the base model's reference numbers
                row[f"{kind}_acc"] = (_share([p == t for p, t in zip(pred[kind], truth[kind], strict=True)])
                                      if pred[kind] is not None else None)
            result.table[run.label] = row
            result.details[run.label] = {"per_concept": scores, "seeds": sorted(wanted) or "all"}
            per_concept.extend(scores.values())
        if len(per_concept) > 1:  # the benchmark reports the mean over erased concepts
            result.details[AVERAGE] = {k: _mean([s[k] for s in per_concept]) for k in SCORES}
            result.table[AVERAGE] = {"images": None, "erased": f"{len(per_concept)} concepts",
                                     **result.details[AVERAGE]}
        result.charts = {"unlearncanvas": {
            label: {k: float(v) for k, v in row.items() if k in ("UA", "IRA", "CRA") and v is not None}
            for label, row in result.table.items()}}
        return result


def classifier_pin(classifier: Any) -> dict[str, Any] | None:
    """What identifies a classifier's verdicts: its name, file hash, loader, labels and input transform."""
    if classifier is None:
        return None
    pin = {"name": str(classifier.name), "labels": len(classifier.labels)}
    for key in ("sha256", "loader", "size"):
        if getattr(classifier, key, None) is not None:
            pin[key] = getattr(classifier, key)
    if getattr(classifier, "size", None) is not None:
        pin["transform"] = f"resize {classifier.size}x{classifier.size} bilinear, [0,1] -> [-1,1]"
    return pin


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register(UnlearnCanvasMetric())
