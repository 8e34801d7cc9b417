"""Plugins as a third party ships them: installed packages with `spmctl` entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS, run_spmctl

from spmctl import plugins
from spmctl.hookspecs import hookimpl


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example and the broken plugin, pip-installed into a folder put on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    for name in ("spmctl-example-plugin", "spmctl-broken-plugin"):
        source = tmp_path_factory.mktemp("src") / name  # build outside the repo: no build/ left in tests/
        shutil.copytree(TESTS / "plugin_pkgs" / name, source)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(site), str(source)],
            check=True, capture_output=True, text=True,
        )
    return site


def test_builtin_providers_come_through_the_entry_point_group():
    infos = {i.name: i for i in plugins.plugin_infos()}
    for name in ("unlearncanvas", "i2p", "prompts", "templates"):
        assert infos[name].package == "spmctl" and infos[name].error is None
    assert {"unlearncanvas", "i2p", "prompts"} <= set(plugins.get_datasets())
    assert {"style", "object", "i2p", "concept"} <= set(plugins.get_templates())


def test_third_party_plugin_listed_and_usable(plugin_site: Path, tmp_path: Path):
    env = {"PYTHONPATH": str(plugin_site)}
    listing = run_spmctl("plugins", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "example-colors" in listing.stdout and "spmctl-example-plugin" in listing.stdout
    assert "0.1.0" in listing.stdout
    # usable: the third-party template drives a real config
    shown = run_spmctl("train", "--template", "example-color", "--template_name", "red",
                       "--dataset_type", "example-colors", "--print-config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "template: example-color  # command line" in shown.stdout


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
