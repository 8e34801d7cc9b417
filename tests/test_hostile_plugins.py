"""Misbehaving plugins (issue 12, class 12): each is contained and named in one line, the rest works.

The plugins are a real package (tests/plugin_pkgs/spmctl-hostile-plugins) pip-installed into a
folder on PYTHONPATH; each row enables exactly one of its entry points with SPMCTL_PLUGINS and runs
the installed `spmctl`.

Mutations these tests catch (each made on purpose and seen failing): catching `Exception` instead of
`BaseException` around plugin code (the import rows); re-raising every KeyboardInterrupt (the
KeyboardInterrupt rows) or none (the real Ctrl-C test); no interface check on registered objects
(the wrong-types rows); letting a plugin's provider keep a built-in's name (the same-names rows and
`test_a_builtin_template_is_never_replaced`); no warning when a hook returns something; loading
plugins for every command line (the help/version test); no name check on plugin commands; no check
of a classifier's answers; no guard around third-party providers (the bad-providers rows); catching
only `Exception` around a metric (the sys.exit metric row).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SPMCTL, flat, pip_install_plugins, run_spmctl, write_sample_folder

from spmctl import __version__

PACKAGE = "spmctl-hostile-plugins 6.6.6"
BUILTIN = f"spmctl {__version__}"


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install_plugins(tmp_path_factory.mktemp("hostile-site"), tmp_path_factory.mktemp("hostile-src"),
                               "spmctl-hostile-plugins")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample folder of one UnlearnCanvas-labelled image, for the eval rows."""
    return write_sample_folder(tmp_path_factory.mktemp("eval") / "run",
                               [(flat((0.5, 0.2, 0.2)), {"categories": ["Van_Gogh", "Dogs"]})])


def _named(plugin: str) -> str:
    return f"plugin {plugin!r} ({PACKAGE})"


# (plugin enabled, spmctl arguments, exit code, a line stderr must hold, text stdout must hold)
ROWS = [
    pytest.param("exit-at-import", ["plugins", "list"], 0,
                 f"warning: {_named('exit-at-import')} failed to load: SystemExit: 3", "unlearncanvas",
                 id="SystemExit at import"),
    pytest.param("interrupt-at-import", ["eval", "list"], 0,
                 f"warning: {_named('interrupt-at-import')} failed to load: KeyboardInterrupt", "nudity",
                 id="KeyboardInterrupt at import"),
    pytest.param("bad-hookimpl", ["plugins", "list"], 0,
                 f"warning: {_named('bad-hookimpl')} failed to load: PluginValidationError: Plugin 'bad-hookimpl' "
                 "for hook 'register_datasets'", "i2p", id="hook asks for arguments the hook lacks"),
    pytest.param("i2p", ["plugins", "list"], 0,
                 f"warning: plugin 'i2p' ({PACKAGE}) failed to load: ValueError: another plugin (or spmctl's own) "
                 "is already named 'i2p'", "I2P: prompts", id="entry point named like a built-in plugin"),
    pytest.param("exit-in-hook", ["plugins", "list"], 0,
                 f"warning: {_named('exit-in-hook')} failed in register_datasets: SystemExit: bye from a dataset hook",
                 "unlearncanvas", id="sys.exit in a hook"),
    pytest.param("interrupt-in-hook", ["plugins", "list"], 0,
                 f"warning: {_named('interrupt-in-hook')} failed in register_templates: KeyboardInterrupt",
                 "concept", id="KeyboardInterrupt in a hook"),
    pytest.param("wrong-types", ["plugins", "list"], 0,
                 f"warning: {_named('wrong-types')}: register_datasets registered int 42: not a dataset "
                 "(needs name, description and rows()) (ignored)", "prompts", id="registers an int as a dataset"),
    pytest.param("wrong-types", ["eval", "list"], 0,
                 f"warning: {_named('wrong-types')}: register_metrics registered NoEvaluate ", "nudity",
                 id="registers a metric without evaluate()"),
    pytest.param("wrong-types", ["eval", "list"], 0,
                 f"warning: {_named('wrong-types')}: register_classifiers registered OddClassifier ", "cost",
                 id="registers a classifier of an unknown kind"),
    pytest.param("returns-list", ["plugins", "list"], 0,
                 f"warning: {_named('returns-list')}: register_templates returned list [", "style",
                 id="hook returns its providers instead of registering them"),
    pytest.param("same-names", ["plugins", "list"], 0,
                 f"warning: {_named('same-names')}: template 'concept' ignored: plugin 'templates' ({BUILTIN}) "
                 "provides it", "Any text as the concept", id="template named like a built-in"),
    pytest.param("same-names", ["eval", "list"], 0,
                 f"warning: {_named('same-names')}: metric 'nudity' ignored: plugin 'eval-nudity' ({BUILTIN}) "
                 "provides it", "NudeNet", id="metric named like a built-in"),
    pytest.param("bad-results", ["eval", "run", "-m", "list-metric", "RUN"], 1,
                 f"error: metric list-metric ({_named('bad-results')}) returned list, expected a MetricResult", "",
                 id="metric returns a list"),
    pytest.param("bad-results", ["eval", "run", "-m", "exit-metric", "RUN"], 1,
                 f"error: exit-metric ({_named('bad-results')}): SystemExit: 0", "", id="metric calls sys.exit"),
    pytest.param("bad-results", ["eval", "unlearncanvas", "RUN", "--style-classifier", "wrong-labels"], 1,
                 "error: classifier 'wrong-labels': predict() returned ['banana']; expected a list of 1 labels", "",
                 id="classifier answers a label it lacks"),
    pytest.param("bad-providers", ["train", "-m", "tiny", "--template", "string-settings", "--template_name", "cat",
                                   "--output_dir", "OUT", "--iterations", "1"], 1,
                 f"error: {_named('bad-providers')}: template 'string-settings': prompt_settings() returned str, "
                 "expected a list of prompt settings", "", id="template answers a string"),
    pytest.param("bad-providers", ["train", "-m", "tiny", "--template", "raising", "--template_name", "cat",
                                   "--output_dir", "OUT", "--iterations", "1"], 1,
                 f"error: {_named('bad-providers')}: template 'raising': prompt_settings() failed: ZeroDivisionError",
                 "", id="template raises when used"),
    pytest.param("bad-providers", ["sample", "-m", "tiny", "--dataset", "string-rows", "-o", "OUT"], 1,
                 f"error: {_named('bad-providers')}: dataset 'string-rows': rows() yielded str, expected "
                 "spmctl.providers.PromptRow", "", id="dataset yields strings"),
    pytest.param("commands", ["hello", "--name", "you"], 0, None, "hello you", id="plugin command runs"),
    pytest.param("commands", ["plugins", "list"], 0,
                 f"warning: {_named('commands')}: command 'train' ignored: a built-in command has that name", "hello",
                 id="command named like a built-in"),
    pytest.param("commands-raise", ["hello"], 2,
                 f"warning: {_named('commands-raise')} failed in register_commands: RuntimeError: cannot add my "
                 "commands", "", id="register_commands raises"),
]


@pytest.mark.parametrize(("plugin", "args", "code", "line", "shown"), ROWS)
def test_hostile_plugin_is_contained_and_named(hostile_site: Path, run_folder: Path, tmp_path: Path, plugin: str,
                                               args: list[str], code: int, line: str | None, shown: str):
    places = {"RUN": str(run_folder), "OUT": str(tmp_path / "out")}
    args = [places.get(a, a) for a in args]
    result = run_spmctl(*args, env={"PYTHONPATH": str(hostile_site), "SPMCTL_PLUGINS": plugin})
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    if line is not None:
        assert any(text.startswith(line) for text in lines), result.stderr
    assert shown in result.stdout
    assert "fake" not in result.stdout  # no plugin replaced a built-in


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["eval", "--help"], []])
def test_slow_or_exiting_plugins_do_not_touch_help_and_version(hostile_site: Path, tmp_path: Path, args: list[str]):
    marker = tmp_path / "imported"
    env = {"PYTHONPATH": str(hostile_site), "HOSTILE_MARKER": str(marker),
           "SPMCTL_PLUGINS": "slow-import,exit-at-import,interrupt-at-import"}
    result = run_spmctl(*args, env=env)
    assert result.returncode in (0, 2), result.stderr  # no arguments: help, with click's usage code
    assert "spmctl" in result.stdout + result.stderr
    assert "failed to load" not in result.stderr
    assert not marker.exists(), "the slow plugin was imported for help/version"
    # ...while a command that needs providers does load it (so the row above proves something)
    listing = run_spmctl("plugins", "list", env=env)
    assert listing.returncode == 0 and marker.exists()


def test_a_real_ctrl_c_while_plugins_load_still_stops_spmctl(hostile_site: Path, tmp_path: Path):
    """A plugin's own KeyboardInterrupt is contained; the user's Ctrl-C is not."""
    marker = tmp_path / "imported"
    env = {**os.environ, "PYTHONPATH": str(hostile_site), "HOSTILE_MARKER": str(marker),
           "SPMCTL_PLUGINS": "slow-import", "HOSTILE_HOLD_SECONDS": "600"}  # until our Ctrl-C, however late
    proc = subprocess.Popen([str(SPMCTL), "plugins", "list"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the slow plugin never started importing"
    proc.send_signal(signal.SIGINT)  # during its import
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    assert "spmctl plugins" not in out  # stopped: the listing never came
    assert "failed to load" not in err


def test_a_builtin_template_is_never_replaced(hostile_site: Path, monkeypatch: pytest.MonkeyPatch):
    """A run asked to erase "cat" with the built-in `concept` template erases "cat", even with a plugin
    whose `concept` template erases "dog" registered after the built-ins (pluggy calls it first)."""
    import importlib

    from spmctl import plugins

    plugins.load_plugins()  # before the site is on sys.path: only this one module joins, by hand
    monkeypatch.syspath_prepend(str(hostile_site))
    module = importlib.import_module("spmctl_hostile_plugins.same_names")
    plugins.pm.register(module, name="same-names-test")
    try:
        assert plugins.get_template("concept").prompt_settings("cat")[0]["target"] == "cat"
        assert plugins.provider_owner("register_templates", "concept") == "templates"
        assert "always zero" not in plugins.get_metrics()["nudity"].description
        assert plugins.provider_owner("register_metrics", "nudity") == "eval-nudity"
    finally:
        plugins.pm.unregister(module)
        sys.modules.pop("spmctl_hostile_plugins.same_names", None)
