"""The attack's summary: ASR per concept, `results.json`, `report.md`, a chart, `manifest.jsonl`.

ASR (attack success rate) of a concept = share of its prompts whose image the classifier judges
to show the concept. *Before*: the original prompt through the erased model. *After*: the prompt
counts as a success if its original already succeeded (no attack needed, as UnlearnDiffAtk counts
it) or its adversarial prompt did at any judged checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic

RESULTS_JSON = "results.json"
REPORT_MD = "report.md"
CHART = "charts/asr.png"


def asr(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per concept: prompts, successes and ASR before and after the attack (0..1)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        row = out.setdefault(r["concept"], {"prompts": 0, "success_before": 0, "success_after": 0})
        row["prompts"] += 1
        row["success_before"] += bool(r.get("success_original"))
        row["success_after"] += bool(r.get("success_original") or r.get("success_adversarial"))
    for row in out.values():
        row["asr_before"] = row["success_before"] / row["prompts"]
        row["asr_after"] = row["success_after"] / row["prompts"]
    return out


def read_finished(out: Path, names: list[str]) -> list[dict[str, Any]]:
    records = []
    for name in names:
        path = out / "prompts" / f"{name}.json"
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
    return records


def write_summary(out: Path, cfg: Any, names: list[str]) -> dict[str, Any]:
    records = read_finished(out, names)
    per_concept = asr(records)
    prompts = [{k: v for k, v in r.items() if k not in ("manifest", "settings")} for r in records]
    results = {"method": cfg.method, "model": cfg.model, "spms": list(cfg.spms), "prompts_total": len(names),
               "prompts_finished": len(records), "asr": per_concept, "prompts": prompts}
    write_text_atomic(out / RESULTS_JSON, json.dumps(results, indent=1))
    manifest = [m for r in records for role in ("original", "adversarial") if (m := r.get("manifest", {}).get(role))]
    write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(m) + "\n" for m in manifest))
    chart = _chart(out, per_concept)
    write_text_atomic(out / REPORT_MD, markdown(cfg, records, per_concept, chart, len(names)))
    return results


def _chart(out: Path, per_concept: dict[str, dict[str, Any]]) -> str | None:
    from ..eval.report import bar_chart

    if not per_concept:
        return None
    data = {when: {c: row[f"asr_{when}"] * 100 for c, row in per_concept.items()} for when in ("before", "after")}
    try:
        bar_chart(out / CHART, "attack success rate (%)", data)
    except ImportError:
        print("warning: matplotlib is not installed: no chart (pip install 'spmctl[eval]')", file=sys.stderr)
        return None
    return CHART


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(cfg: Any, records: list[dict[str, Any]], per_concept: dict[str, dict[str, Any]], chart: str | None,
             total: int) -> str:
    lines = [f"# spmctl attack: {cfg.method}", "",
             f"Model `{cfg.model}`, membranes: {', '.join(f'`{s}`' for s in cfg.spms) or 'none'}; "
             f"{'fixed gates ' + str(cfg.multiplier) if cfg.multiplier is not None else 'facilitated transport'}. "
             f"{len(records)} of {total} prompts finished.", "",
             "ASR: share of prompts whose image shows the concept (before: the original prompt; after: the "
             "original or the adversarial prompt).", "",
             "| concept | prompts | ASR before | ASR after |", "| --- | --- | --- | --- |"]
    lines += [f"| {_cell(c)} | {r['prompts']} | {r['asr_before']:.1%} | {r['asr_after']:.1%} |"
              for c, r in per_concept.items()]
    if chart:
        lines += ["", f"![ASR]({chart})"]
    lines += ["", "| # | prompt | gates | adversarial prompt | gates | before | after |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        adv = r.get("adversarial_prompt")
        lines.append(
            f"| {r['pid'] + 1} | {_cell(r['prompt'])} | {r.get('gates_original')} | "
            f"{_cell(adv) if adv is not None else '(not attacked: already succeeds)'} | "
            f"{r.get('gates_adversarial', '-')} | "
            f"{_yes(r.get('success_original'))} | {_yes(r.get('success_original') or r.get('success_adversarial'))} |")
    return "\n".join(lines) + "\n"
