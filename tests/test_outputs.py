"""What train, sample and export leave on disk when the place is hostile, and with which permissions
(issue 12 class 7, issue 14 item 4).

Every writer gives one line naming the path and the problem, keeps the last good files and leaves
no empty folder behind. Full disks and read-only places are real: a small tmpfs mounted in a user
namespace (skipped where the kernel does not allow one), and RLIMIT_FSIZE.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import SPMCTL, write_train_config

from spmctl.training.checkpoint import load_state


@pytest.fixture(scope="module")
def spm(trained_cat: Path) -> Path:
    return trained_cat / "cat_last.safetensors"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SPMCTL_")} | {"PYTHONUNBUFFERED": "1"}


def _userns_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"], capture_output=True)
    return probe.returncode == 0


USERNS = _userns_ok()
# mount a small tmpfs on $1 (read-only when RO=1), run the command, copy what it left to $2
IN_TMPFS = ('mnt=$1; copy=$2; shift 2; mount -t tmpfs -o size=$SIZE tmpfs "$mnt" || exit 97; '
            'if [ "$RO" = 1 ]; then mount -o remount,ro "$mnt" || exit 97; fi; '
            '"$@"; rc=$?; cp -a "$mnt/." "$copy/"; exit $rc')


def spmctl_in(place: str, tmp: Path, *args: str, size: str = "64k") -> tuple[subprocess.CompletedProcess, Path]:
    """Run spmctl with `tmp/place` (`@` in `args`) as a full disk, a read-only place or (RLIMIT_FSIZE)
    under a 16 KiB file size limit; returns the result and a copy of what the place holds afterwards."""
    mnt, copy = tmp / "place", tmp / "after"
    mnt.mkdir(exist_ok=True)
    copy.mkdir(exist_ok=True)
    full = [str(SPMCTL), *(a.replace("@", str(mnt)) for a in args)]
    if place == "file-size-limit":
        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

        done = subprocess.run(full, capture_output=True, text=True, env=_env(), preexec_fn=limit, timeout=600)
        shutil.copytree(mnt, copy, dirs_exist_ok=True)
        return done, copy
    if not USERNS:
        pytest.skip("no user namespaces here to mount a small or read-only tmpfs")
    env = {**_env(), "SIZE": size, "RO": "1" if place == "read-only" else "0"}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", IN_TMPFS, "sh",
                           str(mnt), str(copy), *full], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode == 97:
        pytest.skip("cannot mount a tmpfs here")
    return done, copy


def one_line(done: subprocess.CompletedProcess, *parts: str) -> str:
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(part in lines[0] for part in parts), lines[0]
    return lines[0]


# --- class 7: a file in the way, a folder given for a file ------------------------------------------------

@pytest.mark.parametrize("command", ["train", "sample", "export-lora-folder", "export-model-file"])
def test_a_wrong_kind_of_thing_in_the_way_is_one_line(tmp_path: Path, spm: Path, command: str):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    folder = tmp_path / "a_folder"
    (folder / "inside").mkdir(parents=True)
    if command == "train":
        cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(blocker / "run"), train__iterations=2)
        args, named, problem = ["train", "-c", str(cfg), "-q"], blocker, "a file is in the way"
    elif command == "sample":
        args = ["sample", "-m", "tiny", "--spm", str(spm), "-p", "a cat", "--steps", "2", "-W", "64", "-H", "64", "-q",
                "-o", str(blocker)]
        named, problem = blocker, "a file is in the way"
    elif command == "export-lora-folder":
        args, named, problem = ["export", "lora", str(spm), "-o", str(folder)], folder, "is a folder"
    else:
        args = ["export", "model", str(spm), "-m", "tiny", "-f", "safetensors", "-o", str(folder)]
        named, problem = folder, "is a folder"
    done = subprocess.run([str(SPMCTL), *args], capture_output=True, text=True, env=_env(), timeout=600)
    assert one_line(done, f"{named}: cannot write: {problem}")
    assert blocker.read_text() == "keep me" and [p.name for p in folder.iterdir()] == ["inside"]


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export(tmp_path: Path, spm: Path):
    """A kill during `export model` leaves its staging folder beside the output; the next export of
    that folder removes it, but never the staging folder of an export still running."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has any more
    dead = tmp_path / f".merged.spmctl-{gone.pid}-k1ll3d"
    (dead / "unet").mkdir(parents=True)
    (dead / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half a model")
    live = tmp_path / f".merged.spmctl-{os.getpid()}-busy"  # this test process is alive
    live.mkdir()
    done = subprocess.run([str(SPMCTL), "export", "model", str(spm), "-m", "tiny", "-o", str(tmp_path / "merged")],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "merged" / "model_index.json").is_file()
    assert not dead.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["merged", live.name])


# --- class 7: full disks, read-only places -----------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_last_good_state(tmp_path: Path):
    # room for the step-1 membrane and state, not for writing step 2's state beside them
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "place" / "run"), train__iterations=4,
                             save__per_steps=1)
    done, after = spmctl_in("full-disk", tmp_path, "train", "-c", str(cfg), "-q", size="400k")
    line = one_line(done, "/run/cat_", "cannot write: No space left on device", "the last good state (step ")
    step = int(line.split("the last good state (step ")[1].split(")")[0])
    assert load_state(after / "run" / "cat_state.pt")["step"] == step >= 1
    assert not list((after / "run").glob(".*.tmp"))


@pytest.mark.parametrize(("place", "command"), [
    ("full-disk", "train"),  # the first save does not fit: nothing to resume, no folder left
    ("read-only", "train"),
    ("read-only", "sample"),
    ("full-disk", "export-model"),
    ("file-size-limit", "export-lora"),
])
def test_a_place_that_cannot_take_the_output_is_one_line_and_leaves_nothing(tmp_path: Path, spm: Path,
                                                                           place: str, command: str):
    problem = {"full-disk": "No space left on device", "read-only": "Read-only file system",
               "file-size-limit": "File too large"}[place]
    if command == "train":
        cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "place" / "run"),
                                 train__iterations=2)
        args = ["train", "-c", str(cfg), "-q"]
    elif command == "sample":
        args = ["sample", "-m", "tiny", "--spm", str(spm), "-p", "a cat", "--steps", "2", "-W", "64", "-H", "64", "-q",
                "-o", "@/images"]
    elif command == "export-model":
        args = ["export", "model", str(spm), "-m", "tiny", "-o", "@/merged"]
    else:
        args = ["export", "lora", str(spm), "-o", "@/lora/cat.safetensors"]
    done, after = spmctl_in(place, tmp_path, *args)
    one_line(done, "cannot write: " + problem)
    assert list(after.iterdir()) == []  # no empty folder, no temp file, no staging folder


# --- issue 14 item 4: the umask decides the permissions ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_honours_the_umask(tmp_path: Path, spm: Path, umask: int):
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "out" / "run"), train__iterations=2,
                             save__per_steps=1)
    out = tmp_path / "out"
    script = " && ".join([
        f"umask {umask:03o}",
        f'"{SPMCTL}" train -c "{cfg}" -q',
        f'"{SPMCTL}" sample -m tiny --spm "{out / "run"}" -p "a cat" --steps 2 -W 64 -H 64 -o "{out / "images"}" -q',
        f'"{SPMCTL}" export lora "{spm}" -o "{out / "lora" / "cat.safetensors"}" -q',
        f'"{SPMCTL}" export model "{spm}" -m tiny -o "{out / "merged"}" -q',
        f'"{SPMCTL}" export model "{spm}" -m tiny -f safetensors -o "{out / "merged.safetensors"}" -q',
    ])
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr
    seen = set()
    for path in out.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {mode:o}, expected {expected:o} under umask {umask:03o}"
        seen.add(path.suffix)
    assert {".safetensors", ".pt", ".png", ".yaml", ".json", ".jsonl"} <= seen


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_downloads_honour_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int):
    from helpers_archive import zip_bytes
    from helpers_download import invoke_tiny, isolate, write_manifest
    from helpers_http import serve

    isolate(tmp_path, monkeypatch)
    data = zip_bytes({"unet/weights.bin": b"w" * 100, "model_index.json": b"{}"})
    root = tmp_path / "root"
    with serve({"tiny.zip": data}) as server:
        manifest = write_manifest(tmp_path / "m.yaml", f"{server.url}/tiny.zip", data)
        previous = os.umask(umask)  # the process's own umask, as a shell's `umask` sets it
        try:
            result = invoke_tiny(root, server.url, manifest)
        finally:
            os.umask(previous)
    assert result.exit_code == 0, result.output
    paths = list(root.rglob("*"))
    assert {p.name for p in paths} >= {"models", "tiny", "unet", "weights.bin", ".spmctl-downloads.json"}
    for path in paths:
        mode, expected = stat.S_IMODE(path.stat().st_mode), (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {mode:o}, expected {expected:o} under umask {umask:03o}"
