"""The pytest plugin: one conftest line enables the fixtures; registered() and train() do what they say."""
from __future__ import annotations

import types

import pytest
import yaml

import parallax
from parallax.errors import PluginError
from parallax.registry import get_registry
from parallax.testing import registered, train

AUTHOR_TESTS = '''
import types

import yaml

import parallax
from parallax.registry import get_registry

MLP = get_registry().get("experts", "mlp_probe")


def test_tiny_recipe_is_a_path_to_a_valid_recipe(tiny_recipe):
    from parallax.recipe import load_recipe

    assert load_recipe(str(tiny_recipe)).model.d_model == 16


def test_make_tiny_recipe_swaps_components_in(make_tiny_recipe):
    first = make_tiny_recipe(experts=[{"type": "mlp_probe", "slots": 2}])
    second = make_tiny_recipe(decoder={"type": "motor", "context": 2, "heads": 2})
    assert yaml.safe_load(first.read_text())["model"]["experts"] == [{"type": "mlp_probe", "slots": 2}]
    assert yaml.safe_load(second.read_text())["model"]["decoder"]["context"] == 2
    assert first != second


def test_register_plugin_registers_for_this_test(register_plugin):
    plugin = types.SimpleNamespace(register_experts=parallax.hookimpl(lambda register: register("authored", MLP)))
    info = register_plugin(plugin, "author-plugin")
    assert info.provides == {"experts": ["authored"]}
    assert "authored" in get_registry().names("experts")


def test_and_unregisters_afterwards():
    assert "authored" not in get_registry().names("experts")
    assert "author-plugin" not in get_registry().plugins
'''


def test_one_conftest_line_enables_the_fixtures(pytester):
    pytester.makeconftest('pytest_plugins = ["parallax.testing"]\n')
    pytester.makepyfile(test_author=AUTHOR_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def _plugin(**experts):
    def register_experts(register):
        for name, cls in experts.items():
            register(name, cls)

    return types.SimpleNamespace(register_experts=parallax.hookimpl(register_experts))


def test_registered_unregisters_even_when_the_block_raises():
    mlp = get_registry().get("experts", "mlp_probe")
    with pytest.raises(RuntimeError), registered(_plugin(temporary=mlp), "temp"):
        assert get_registry().entry("experts", "temporary").plugin.name == "temp"
        raise RuntimeError
    assert "temporary" not in get_registry().names("experts") and "temp" not in get_registry().plugins


def test_registered_raises_the_reason_a_plugin_cannot_register():
    mlp = get_registry().get("experts", "mlp_probe")
    with pytest.raises(PluginError, match="registers expert 'siren', which plugin 'builtin-experts' already registers"):
        with registered(_plugin(siren=mlp), "clash"):
            pass
    assert "clash" not in get_registry().plugins
    assert get_registry().entry("experts", "siren").plugin.name == "builtin-experts"


def test_registered_refuses_a_name_in_use():
    with pytest.raises(PluginError, match="'builtin-experts' is already registered"):
        with registered(_plugin(), "builtin-experts"):
            pass


def test_train_runs_a_recipe_for_the_given_steps(make_tiny_recipe, tmp_path):
    recipe = make_tiny_recipe(experts=[{"type": "mlp_probe", "slots": 1, "hidden": 8}])
    summary = train(recipe, tmp_path / "out", steps=2)
    assert summary["step"] == 2 and summary["val_loss"] > 0
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["model"]["experts"][0]["type"] == "mlp_probe"


def test_with_built_ins_disabled_the_tiny_recipe_names_what_it_needs_in_one_line(pytester, monkeypatch):
    from parallax.registry import get_registry

    monkeypatch.setenv("PARALLAX_DISABLE_PLUGINS", "builtin-experts")
    get_registry(refresh=True)
    try:
        pytester.makeconftest('pytest_plugins = ["parallax.testing"]\n')
        pytester.makepyfile(test_author="def test_uses_it(tiny_recipe):\n    pass\n")
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(errors=1)  # the fixture fails at setup, before the test runs
        result.stdout.fnmatch_lines(["*parallax.testing: the tiny recipe needs expert 'mamba_siso'*"
                                     "PARALLAX_DISABLE_PLUGINS*enable them*"])
        assert "Traceback" not in result.stdout.str()
    finally:
        monkeypatch.delenv("PARALLAX_DISABLE_PLUGINS")
        get_registry(refresh=True)
