"""Plugins declared by the environment: imported once, a named function called once, failures named."""
import sys

import pytest

from impumae import plugins


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "impumae_test_plugin_calls.py").write_text(
        "CALLS = []\n"
        "def register():\n"
        "    CALLS.append('register')\n")
    (tmp_path / "impumae_test_plugin_broken.py").write_text("raise RuntimeError('no such library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("impumae_test_plugin_calls", "impumae_test_plugin_broken"):
        sys.modules.pop(name, None)
    plugins._loaded.difference_update({"impumae_test_plugin_calls:register", "impumae_test_plugin_broken"})


def test_a_function_named_by_the_environment_is_called_once(plugin_dir, monkeypatch):
    monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, " impumae_test_plugin_calls:register ,")
    assert "impumae_test_plugin_calls:register" in plugins.declared()
    assert plugins.load_plugins() == ["impumae_test_plugin_calls:register"]
    assert plugins.load_plugins() == []  # once per process
    assert sys.modules["impumae_test_plugin_calls"].CALLS == ["register"]
    assert plugins.environment() == {plugins.ENVIRONMENT_VARIABLE: " impumae_test_plugin_calls:register ,"}


def test_a_plugin_that_fails_to_import_is_named(plugin_dir, monkeypatch):
    monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, "impumae_test_plugin_broken")
    with pytest.raises(ImportError, match="impumae plugin 'impumae_test_plugin_broken' failed to load: no such library"):
        plugins.load_plugins()


def test_nothing_declared_means_nothing_passed_to_workers(monkeypatch):
    monkeypatch.delenv(plugins.ENVIRONMENT_VARIABLE, raising=False)
    assert plugins.environment() == {}
