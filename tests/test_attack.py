"""`spmctl attack`: the three methods on the tiny model, through the FT gates of `spmctl sample`.

In-process tests drive the methods' engines directly (objective, real-text prompts); end-to-end
tests run the installed `spmctl` with a third-party classifier plugin whose verdicts are known
from the images alone (tests/plugin_pkgs/spmctl-verdict-plugin).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SPMCTL, TESTS, pip_install_plugins, run_spmctl
from test_sample import make_spm

from spmctl.attack.config import load_attack_config

PROMPTS = ["a photo of a cat", "a cat in a garden", "an old painting of a cat"]
TINY = ["-m", "tiny", "-W", "64", "-H", "64", "--steps", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_spm(tmp_path_factory.mktemp("spm") / "cat.safetensors", ["cat"], seed=1)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The verdict plugin pip-installed into a folder put on PYTHONPATH, as a third party ships it."""
    return pip_install_plugins(tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src"),
                               "spmctl-verdict-plugin")


def parity(path: Path) -> str:
    """The plugin's verdict, recomputed here from the PNG."""
    sys.path.insert(0, str(TESTS / "plugin_pkgs" / "spmctl-verdict-plugin"))
    try:
        from PIL import Image
        from spmctl_verdict_plugin import parity_label
    finally:
        sys.path.pop(0)
    with Image.open(path) as im:
        return parity_label(im)


# -- the methods, in process ------------------------------------------------------------------

METHODS = {
    "unlearndiffatk": {"lr": 0.05},
    "p4d-n": {"method": "p4d", "lr": 0.05, "tokens": 6},
    "p4d-k": {"method": "p4d", "lr": 0.05, "p4d_variant": "k"},
    "ring-a-bell": {"method": "ring-a-bell", "population": 24, "tokens": 6},
}
STEPS = 12


@pytest.fixture(scope="module")
def tiny():
    from spmctl.families import load_model

    return load_model("tiny")


@pytest.fixture(scope="module", params=list(METHODS))
def searched(request, tiny, spm: Path, tmp_path_factory: pytest.TempPathFactory):
    """Each method run for STEPS steps on PROMPTS, batched: (ctx, items, engine, start objectives)."""
    from spmctl.attack.run import Attack, build_context, method_module, plan_items
    from spmctl.sampling.stack import MembraneStack, load_spms

    values = {"method": request.param, **METHODS[request.param]}
    values.update(model="tiny", spms=[str(spm)], prompts=PROMPTS, concept="nudity", width=64, height=64,
                  steps=3, attack_steps=STEPS, seeds=[7], device="cpu")
    cfg, _ = load_attack_config(None, values)
    spms = load_spms(cfg.spms)
    stack = MembraneStack(tiny, spms)
    try:
        ctx = build_context(cfg, tiny, spms, stack)
        items = plan_items(cfg, spms)
        attack = Attack(ctx, tmp_path_factory.mktemp("attack"), None, quiet=True)  # type: ignore[arg-type]
        module = method_module(cfg.method)
        if module.NEEDS_TARGET:
            attack.targets(items)
        attack.hidden(items)
        engine = module.engine(ctx, items)
        start = engine.objective(items)
        for _ in range(STEPS):
            engine.step(items)
        yield ctx, items, engine, start
    finally:
        stack.close()


def test_objective_falls_over_the_steps(searched):
    ctx, items, engine, start = searched
    end = engine.objective(items)
    for it, before, after in zip(items, start, end, strict=True):
        assert it.step == STEPS and len(it.state.losses) == STEPS
        assert after < before, (it.job.prompt, before, after)


def test_adversarial_prompt_is_text_that_tokenises_to_the_tokens_found(searched):
    from spmctl.models.text import tokenize

    ctx, items, engine, _ = searched
    texts, ids = engine.current(items)
    tokenizer = ctx.model.tokenizer
    for it, text, row in zip(items, texts, ids, strict=True):
        assert isinstance(text, str) and text != it.job.prompt
        assert tokenize(tokenizer, [text])[0].tolist() == row  # the text *is* those tokens
        words = text.split()
        if ctx.cfg.method == "unlearndiffatk":  # k words before the untouched prompt
            assert " ".join(words[ctx.cfg.budget("tokens"):]) == it.job.prompt
        if ctx.cfg.p4d_variant == "k" and ctx.cfg.method == "p4d":  # one word before every 3 of the prompt
            assert [w for i, w in enumerate(words) if i % 4] == it.job.prompt.split()


def test_state_resumes_exactly(searched, tmp_path: Path):
    """A saved search state, reloaded, takes the very step the live one takes."""
    from spmctl.attack.engine import load_state, save_state

    ctx, items, engine, _ = searched
    it = items[0]
    save_state(tmp_path / "s.pt", it)
    copy = type(it)(**{**it.__dict__, "state": load_state(tmp_path / "s.pt")})
    other = type(engine)(ctx, [copy]) if ctx.cfg.method == "ring-a-bell" else type(engine)(
        ctx, [copy], reference=engine.reference)
    engine.step([it])
    other.step([copy])
    assert engine.current([it]) == other.current([copy])
    assert it.state.losses == copy.state.losses


# -- end to end, with a plugin classifier ----------------------------------------------------


# Prompts with their own seeds, chosen so the known verdicts mix: one prompt already shows the
# concept (not attacked), the attack succeeds on some and fails on others (asserted below).
MIXED = [("a cat in a garden", 0), ("a photo of a cat", 1), ("an old painting of a cat", 1),
         ("a small cat on a table", 0), ("a cat by the sea", 1)]


@pytest.fixture(scope="module")
def attack_run(spm: Path, plugin_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    (folder / "prompts.csv").write_text("prompt,seed\n" + "".join(f"{p},{s}\n" for p, s in MIXED))
    out = folder / "out"
    done = run_spmctl("attack", "unlearndiffatk", *TINY, "--spm", str(spm),
                      "--prompts-file", str(folder / "prompts.csv"), "--concept", "cat",
                      "--attack-steps", "4", "--eval-every", "2", "--lr", "0.05",
                      "--batch-size", "2", "--set", "ft_metric=clipcos", "-o", str(out),
                      env={"PYTHONPATH": str(plugin_site)})
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_asr_from_plugin_verdicts(attack_run: Path):
    results = json.loads((attack_run / "results.json").read_text())
    before = after = attacked = 0
    for p in results["prompts"]:
        orig = parity(attack_run / p["image_original"]) == "cat"
        assert p["success_original"] == orig and p["judge"] == "parity"
        adv = "image_adversarial" in p and parity(attack_run / p["image_adversarial"]) == "cat"
        assert ("adversarial_prompt" in p) == (not orig)  # a prompt already succeeding is not attacked
        before += orig
        after += orig or adv
        attacked += not orig
    assert 0 < before < after < len(MIXED) and attacked > after - before  # every kind of outcome occurs
    asr = results["asr"]["cat"]
    assert asr["prompts"] == len(MIXED)
    assert asr["asr_before"] == pytest.approx(before / len(MIXED))
    assert asr["asr_after"] == pytest.approx(after / len(MIXED))
    # spmctl eval reads the folder like a sample folder
    lines = [json.loads(x) for x in (attack_run / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["attack"]["role"] for r in lines) == ["adversarial"] * attacked + ["original"] * len(MIXED)
    assert all((attack_run / r["file"]).is_file() for r in lines)
    assert "ASR" in (attack_run / "report.md").read_text() and (attack_run / "charts" / "asr.png").is_file()


def show_gates(spm: Path, prompts: list[str]) -> dict[str, float]:
    args = sum((["-p", p] for p in prompts), [])
    done = run_spmctl("sample", "-m", "tiny", "--spm", str(spm), *args, "--show-gates", "--device", "cpu",
                      "--ft-metric", "clipcos")
    assert done.returncode == 0, done.stderr
    gates = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^\s*(.+?)\s+(\d+\.\d{4})\s*$", line)
        if match:
            gates[match.group(1)] = float(match.group(2))
    return gates


@pytest.mark.slow
def test_reported_gates_equal_sample_show_gates(attack_run: Path, spm: Path):
    results = json.loads((attack_run / "results.json").read_text())
    pairs = [(p["prompt"], p["gates_original"][0]) for p in results["prompts"]]
    pairs += [(p["adversarial_prompt"], p["gates_adversarial"][0]) for p in results["prompts"]
              if "adversarial_prompt" in p]
    assert len(pairs) > len(MIXED) and len({g for _, g in pairs}) > 1  # clipcos alone: gates differ
    shown = show_gates(spm, [p for p, _ in pairs])
    for prompt, gate in pairs:
        assert shown[prompt] == pytest.approx(gate, abs=5e-5), prompt


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_results(spm: Path, plugin_site: Path, tmp_path: Path):
    args = ["attack", "p4d", *TINY, "--spm", str(spm), *sum((["-p", p] for p in PROMPTS[:2]), []),
            "--concept", "bird", "--tokens", "4", "--attack-steps", "16", "--set", "checkpoint_every=2",
            "--batch-size", "1", "--lr", "0.05"]
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    whole = run_spmctl(*args, "-o", str(tmp_path / "whole"), env={"PYTHONPATH": str(plugin_site)})
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    # A folder where prompt 2's last image goes: should the kill below come too late (a loaded machine),
    # the run stops there by itself, with prompt 2's checkpoint from step 14 on disk, never finished.
    blocker = out / "images" / next((tmp_path / "whole" / "images").glob("0001_*_adversarial.png")).name
    blocker.mkdir(parents=True)
    log = tmp_path / "cut.stderr"
    with log.open("w") as stderr:  # a file, not a pipe: a pipe nobody reads while polling can fill up
        proc = subprocess.Popen([str(SPMCTL), *args, "-o", str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # cut once prompt 1 is done and prompt 2 half done
        if list(out.glob("prompts/0000_*.json")) and list(out.glob("state/0001_*.pt")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    err = log.read_text()
    assert proc.returncode == -signal.SIGKILL or (proc.returncode == 1 and "is a folder" in err), err
    assert not list(out.glob("prompts/0001_*.json"))  # prompt 2 was cut short either way
    blocker.rmdir()
    first = next(out.glob("prompts/0000_*.json"))
    stamp = first.stat().st_mtime_ns
    again = run_spmctl(*args, "-o", str(out), env={"PYTHONPATH": str(plugin_site)})
    assert again.returncode == 0, again.stderr
    assert "1 of 2 prompts already attacked: skipped" in again.stderr
    assert re.search(r"prompt 2 .*: continuing from step [1-9]", again.stderr), again.stderr
    assert first.stat().st_mtime_ns == stamp  # the finished prompt was not redone
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "whole", out))
    assert a["asr"] == b["asr"]
    keys = ("adversarial_prompt", "adversarial_token_ids", "gates_adversarial", "loss_trace", "objective_end")
    assert [[p[k] for k in keys] for p in a["prompts"]] == [[p[k] for k in keys] for p in b["prompts"]]


@pytest.mark.slow
def test_bad_input_is_one_line(spm: Path, plugin_site: Path, tmp_path: Path):
    env = {"PYTHONPATH": str(plugin_site)}
    small = tmp_path / "small"
    small.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(small / "a.png")
    (small / "manifest.jsonl").write_text(json.dumps({"file": "a.png", "prompt": "a cat"}) + "\n")
    cases = {
        "unknown method": (["attack", "nope", *TINY, "-p", "a cat"], "method"),
        "no classifier": (["attack", "p4d", *TINY, "--spm", str(spm), "-p", "a cat", "--concept", "horse"],
                          "no classifier for concept 'horse'"),
        "token limit": (["attack", "p4d", *TINY, "--spm", str(spm), "-p", " ".join(["cat"] * 70),
                         "--concept", "cat", "--variant", "k"], "over the text encoder's limit of 77"),
        "target size": (["attack", "unlearndiffatk", *TINY, "--spm", str(spm), "-p", "a cat", "--concept", "bird",
                         "--target-images", str(small)], "32x32, expected 64x64"),
    }
    for name, (args, expected) in cases.items():
        done = run_spmctl(*args, "--attack-steps", "2", "-o", str(tmp_path / name.replace(" ", "_")), env=env)
        assert done.returncode == 2, (name, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (name, done.stderr)
