"""Reading the user's text files (prompts, sweeps, configs): UTF-8, or whatever a BOM says.

Editors on Windows save UTF-16 with a byte-order mark, and spreadsheets add a UTF-8 BOM; both are
read as written. Anything else that is not UTF-8 is one line naming the file and the first bad
byte's offset, never a UnicodeDecodeError traceback or silently replaced characters.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from .errors import SpmctlError

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, path: str | Path) -> str:
    """`data` as text: by its BOM if it has one, else strict UTF-8."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        shown = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        raise SpmctlError(f"{path}: not {shown} text: byte 0x{data[exc.start:exc.start + 1].hex()} at offset "
                          f"{exc.start} (save it as UTF-8)") from None


def read_text_file(path: str | Path) -> str:
    """The file's text; unreadable or undecodable is one SpmctlError line naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SpmctlError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_text(data, path)
