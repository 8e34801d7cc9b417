"""The `prompts` dataset: a user's own prompts, as a `.txt` (one per line) or a `.csv`.

The CSV reader here is also the I2P reader (`spmctl_plugins.i2p`): the column
names other benchmarks ship for the same thing (`sd_seed`/`evaluation_seed`,
`sd_guidance_scale`/`evaluation_guidance`, ...) are all understood.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from spmctl.errors import SpmctlError
from spmctl.hookspecs import hookimpl
from spmctl.providers import PromptRow, as_list, check_options
from spmctl.textio import read_text_file

# PromptRow field -> accepted CSV column names, first match wins (compared case-insensitively).
COLUMNS: dict[str, tuple[str, ...]] = {
    "seed": ("seed", "sd_seed", "evaluation_seed"),
    "guidance_scale": ("guidance_scale", "guidance", "sd_guidance_scale", "evaluation_guidance"),
    "width": ("width", "sd_image_width", "image_width"),
    "height": ("height", "sd_image_height", "image_height"),
    "categories": ("categories", "category"),
    "image": ("image", "image_path", "file_name"),
}
MISSING = {"", "nan", "none", "null"}


def split_categories(text: str | None) -> tuple[str, ...]:
    """I2P's categories are multi-label: "violence, self-harm" belongs to both."""
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _number(path: Path, line: int, column: str, text: str | None, kind: type) -> Any:
    """`text` as `kind`, None when empty; a clear error naming the file, line and column."""
    if text is None or text.strip().casefold() in MISSING:
        return None
    try:
        # Seeds and sizes are sometimes written as floats ("2734971755.0").
        return int(float(text)) if kind is int else float(text)
    except ValueError:
        raise SpmctlError(f"{path}:{line}: column {column!r} is not a number: {text!r}") from None


def read_csv(path: Path) -> Iterator[PromptRow]:
    """Rows of a prompt CSV; a `prompt` column is required, the rest is optional.

    Parsed strictly: a stray quote is an error naming the line, not rows silently merged; a quoted
    field that legitimately spans lines is read, with a warning naming the lines."""
    reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""), strict=True)
    start = 1
    try:
        header = {name.strip().casefold(): name for name in (reader.fieldnames or [])}
        if "prompt" not in header:
            shown = ", ".join(reader.fieldnames or []) or "none"
            raise SpmctlError(f"{path}: no 'prompt' column (columns: {shown})")
        chosen = {field: next((header[c] for c in names if c in header), None)
                  for field, names in COLUMNS.items()}
        start = reader.line_num + 1
        for record in reader:
            if reader.line_num > start:
                print(f"warning: {path}:{start}-{reader.line_num}: one record spans these lines (a quoted "
                      "field holds line breaks); if a quote is stray, fix it: rows were merged", file=sys.stderr)
            row = _row(path, reader.line_num, record, header["prompt"], chosen)
            if row is not None:
                yield row
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SpmctlError(f"{path}:{start}: malformed CSV ({exc}); a stray quote? "
                          'Quote a field that holds commas or quotes, doubling its quotes ("")') from None


def _row(path: Path, line: int, record: dict[str, str], prompt_column: str,
         chosen: dict[str, str | None]) -> PromptRow | None:
    """One CSV record as a PromptRow (None for a blank prompt); unknown columns go to `extra`."""
    prompt = (record.get(prompt_column) or "").strip()
    if not prompt:
        return None

    def text(field: str) -> str | None:
        column = chosen[field]
        return record.get(column) if column else None

    def number(field: str, kind: type) -> Any:
        return _number(path, line, chosen[field] or field, text(field), kind)

    image = (text("image") or "").strip()
    used = {prompt_column, *(c for c in chosen.values() if c)}
    return PromptRow(
        prompt=prompt,
        seed=number("seed", int),
        guidance_scale=number("guidance_scale", float),
        width=number("width", int),
        height=number("height", int),
        categories=split_categories(text("categories")),
        image=path.parent / image if image else None,
        extra={k: v for k, v in record.items() if k is not None and k not in used},
    )


def read_text(path: Path) -> Iterator[PromptRow]:
    """One prompt per line; blank lines and `#` comments are skipped."""
    for line in read_text_file(path).splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            yield PromptRow(prompt=text)


def filter_categories(rows: Iterable[PromptRow], wanted: Iterable[str] | None) -> Iterator[PromptRow]:
    """Rows carrying any of `wanted` (all rows when None)."""
    keep = {w.casefold() for w in wanted} if wanted is not None else None
    for row in rows:
        if keep is None or any(c.casefold() in keep for c in row.categories):
            yield row


def limited(rows: Iterable[PromptRow], limit: int | None) -> Iterator[PromptRow]:
    return islice(rows, int(limit)) if limit is not None else iter(rows)


def read_prompt_file(path: Path) -> Iterator[PromptRow]:
    if not path.is_file():
        raise SpmctlError(f"prompts file not found: {path}")
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    if path.suffix.lower() in (".txt", ".prompts", ""):
        return read_text(path)
    raise SpmctlError(f"{path}: prompts must be a .txt (one per line) or a .csv with a 'prompt' column")


class PromptFileDataset:
    name = "prompts"
    description = "Your own prompts: a .txt (one per line) or a .csv (prompt, seed, guidance, width, …)"
    options = ("path", "categories", "limit")

    def rows(
        self, root: Path | None = None, *, use_sample: bool = True, **options: Any
    ) -> Iterator[PromptRow]:
        check_options(self.name, options, self.options)
        source = options.get("path") or root
        if source is None:
            raise SpmctlError("dataset 'prompts' needs a file: path=<prompts.txt|prompts.csv>")
        rows = filter_categories(read_prompt_file(Path(source)), as_list(options.get("categories")))
        return limited(rows, options.get("limit"))


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(PromptFileDataset())
