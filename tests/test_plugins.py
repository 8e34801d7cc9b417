"""Plugins as a third party ships them: installed packages with `spmctl` entry points."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_spmctl

from spmctl import plugins
from spmctl.hookspecs import hookimpl


def test_builtin_providers_are_default_plugins():
    """spmctl's own datasets, templates and metrics come through the plugin manager, by their plugins."""
    infos = {i.name: i for i in plugins.plugin_infos()}
    for name in plugins.DEFAULT_PLUGINS:
        assert infos[name].package == "spmctl" and infos[name].builtin and infos[name].error is None
    assert {"unlearncanvas", "i2p", "prompts"} <= set(plugins.get_datasets())
    assert {"style", "object", "i2p", "concept"} <= set(plugins.get_templates())
    assert {"nudity", "unlearncanvas", "clip_score", "fid", "cost"} <= set(plugins.get_metrics())
    assert plugins.provider_owner("register_metrics", "nudity") == "eval-nudity"
    assert plugins.provider_owner("register_templates", "concept") == "templates"


def test_third_party_plugin_listed_and_usable(plugin_site: Path, tmp_path: Path):
    env = {"PYTHONPATH": str(plugin_site)}
    listing = run_spmctl("plugins", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "example-colors" in listing.stdout and "spmctl-example-plugin" in listing.stdout
    assert "0.1.0" in listing.stdout
    # usable: the third-party dataset gives `spmctl sample` its prompts (unknown without the plugin)
    out = tmp_path / "colors"
    made = run_spmctl("sample", "-m", "tiny", "--dataset", "example-colors", "--steps", "1", "-W", "64", "-H", "64",
                      "-o", str(out), "-q", env=env)
    assert made.returncode == 0, made.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["concept"]) for r in records] == [("a red square", "red")]
    assert (out / records[0]["file"]).is_file()


def test_broken_plugin_is_reported_and_cli_keeps_working(plugin_site: Path):
    env = {"PYTHONPATH": str(plugin_site)}
    listing = run_spmctl("plugins", "list", env=env)
    assert listing.returncode == 0
    assert "plugin 'broken' (spmctl-broken-plugin 0.0.1) failed to load" in listing.stderr
    assert "broken on purpose" in listing.stdout  # shown in the table as failed
    assert "unlearncanvas" in listing.stdout  # everything else still there
    assert run_spmctl("--help", env=env).returncode == 0


def test_allow_list_limits_third_party_plugins(plugin_site: Path):
    env = {"PYTHONPATH": str(plugin_site), "SPMCTL_PLUGINS": "example"}
    listing = run_spmctl("plugins", "list", env=env)
    assert "example-colors" in listing.stdout
    assert "failed to load" not in listing.stderr  # the broken one is not on the list
    assert "unlearncanvas" in listing.stdout  # built-ins always load


def test_inline_plugin_registers_and_unregisters():
    class Inline:
        name = "inline-set"
        description = "registered by a test"

        def rows(self, root=None, *, use_sample=True, **options):
            return []

    class InlinePlugin:
        @hookimpl
        def register_datasets(self, register):
            register(Inline())

    plugin = InlinePlugin()
    plugins.pm.register(plugin, name="inline-test")
    try:
        assert plugins.get_dataset("inline-set").description == "registered by a test"
    finally:
        plugins.pm.unregister(plugin)
    assert "inline-set" not in plugins.get_datasets()
