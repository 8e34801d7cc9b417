"""Hostile text files (issue 12, class 11): encodings and malformed CSV in prompt files, sweep
files and configs. Bad ones are one stderr line naming the file and where (byte offset or line),
with nothing written; text with a byte-order mark is read as its BOM says."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_spmctl

FILES: dict[str, bytes] = {
    "latin1.txt": "a cat\ncaf\xe9 au lait\n".encode("latin-1"),
    "latin1.csv": "prompt,seed\na cat,1\ncaf\xe9,2\n".encode("latin-1"),
    "open_quote.csv": b'prompt,seed\n"a cat,1\nb dog,2\nc,3\n',
    "junk_after_quote.csv": b'prompt,seed\na cat,1\n"b" dog,2\n',
    "sweep.txt": "cat\ndo\xe9g\n".encode("latin-1"),
    "config.yaml": "template_name: caf\xe9\n".encode("latin-1"),
    "utf16.txt": "café au lait\nthé vert\n".encode("utf-16"),  # with its BOM, as Windows editors save it
    "bom.csv": "prompt,seed\ncafé au lait,1\n".encode("utf-8-sig"),
    "utf16.yaml": "template_name: café\n".encode("utf-16"),
    "big_seed.csv": b"prompt,seed\na cat,1\nb dog,1e30\n",
    "multiline.csv": b'prompt,seed\n"a cat\non a mat",1\nb dog,2\n',
}

SAMPLE = ["sample", "-m", "tiny", "--steps", "1", "-W", "64", "-H", "64", "-o", "out"]

# (arguments, exit code, what the one line must contain)
CASES = [
    pytest.param([*SAMPLE, "--prompts-file", "latin1.txt"], 1, ["latin1.txt", "not UTF-8", "0xe9", "offset 9"],
                 id="txt-latin1"),
    pytest.param([*SAMPLE, "--prompts-file", "latin1.csv"], 1, ["latin1.csv", "not UTF-8", "0xe9", "offset 23"],
                 id="csv-latin1"),
    pytest.param([*SAMPLE, "--prompts-file", "open_quote.csv"], 1, ["open_quote.csv:2:", "malformed CSV"],
                 id="csv-unclosed-quote"),
    pytest.param([*SAMPLE, "--prompts-file", "junk_after_quote.csv"], 1,
                 ["junk_after_quote.csv:3:", "malformed CSV"], id="csv-text-after-quote"),
    pytest.param([*SAMPLE, "--prompts-file", "big_seed.csv"], 1, ["prompt 2 ('b dog')", "seed", "2^64"],
                 id="csv-seed-2**64"),
    # the optimizer is named so that bitsandbytes' absence adds no note line to this row
    pytest.param(["train", "--sweep", "sweep.txt", "--devices", "cpu", "-m", "tiny", "--output_dir", "out",
                  "--set", "train.optimizer_type=AdamW"], 2,
                 ["--sweep sweep.txt", "not UTF-8", "offset 6"], id="sweep-latin1"),
    pytest.param(["train", "-c", "config.yaml", "--print-config"], 2, ["config.yaml", "not UTF-8", "offset 18"],
                 id="config-latin1"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(("args", "code", "expected"), CASES)
def test_bad_text_is_one_line(folder: Path, args: list[str], code: int, expected: list[str]):
    before = set(folder.rglob("*"))
    result = run_spmctl(*args, cwd=folder, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert set(folder.rglob("*")) == before, "nothing may be written"


def test_text_with_a_bom_is_read_as_written(folder: Path):
    for name, prompts in (("utf16.txt", ["café au lait", "thé vert"]), ("bom.csv", ["café au lait"])):
        shown = run_spmctl("sample", "-m", "tiny", "--prompts-file", name, "--show-gates", cwd=folder)
        assert shown.returncode == 0, shown.stderr
        assert all(p in shown.stdout for p in prompts) and "\ufeff" not in shown.stdout, shown.stdout
    config = run_spmctl("train", "-c", "utf16.yaml", "--print-config", cwd=folder)
    assert config.returncode == 0, config.stderr
    assert 'template_name: "caf\\xE9"  # utf16.yaml' in config.stdout  # print-config escapes non-ASCII


def test_a_record_spanning_lines_is_said(folder: Path):
    shown = run_spmctl("sample", "-m", "tiny", "--prompts-file", "multiline.csv", "--show-gates", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    assert "multiline.csv:2-3: one record spans these lines" in shown.stderr
    assert "b dog" in shown.stdout
