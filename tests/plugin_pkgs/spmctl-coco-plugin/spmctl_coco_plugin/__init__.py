"""The `mini-coco` dataset: captions and images in MS-COCO's own layout, as a third party would ship it.

`ROOT/annotations/captions_val2014.json` (COCO's `images` and `annotations` lists) and the images
under `ROOT/val2014/`; one row per image (its first caption, by annotation id), in image-id order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spmctl.hookspecs import hookimpl
from spmctl.providers import PromptRow, check_options

ANNOTATIONS = Path("annotations") / "captions_val2014.json"


class MiniCoco:
    name = "mini-coco"
    description = "COCO captions and images (annotations/captions_val2014.json, val2014/)"

    def rows(self, root: Path | None = None, *, use_sample: bool = True, **options: Any) -> Iterator[PromptRow]:
        check_options(self.name, options, ("limit",))
        if root is None:
            raise ValueError("mini-coco needs --data-root")
        data = json.loads((root / ANNOTATIONS).read_text(encoding="utf-8"))
        captions: dict[int, str] = {}
        for note in sorted(data["annotations"], key=lambda a: a["id"]):
            captions.setdefault(note["image_id"], note["caption"].strip())
        limit = options.get("limit")
        for count, image in enumerate(sorted(data["images"], key=lambda i: i["id"])):
            if limit is not None and count >= int(limit):
                return
            yield PromptRow(prompt=captions[image["id"]], image=root / "val2014" / image["file_name"])


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(MiniCoco())
