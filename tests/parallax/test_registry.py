"""The plugin registry: entry-point loading, isolation of broken plugins, conflicts, allow/deny lists."""
from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

import parallax
from parallax import registry as regmod
from parallax.errors import PluginError
from parallax.registry import PluginInfo, Registry


def fake_module(name: str, expert_names=(), raises=None) -> types.ModuleType:
    mod = types.ModuleType(name)

    @parallax.hookimpl
    def register_experts(register):
        if raises:
            raise raises
        for n in expert_names:
            register(n, parallax.Expert)

    mod.register_experts = register_experts
    sys.modules[name] = mod
    return mod


@pytest.fixture
def fake_eps(monkeypatch):
    """Make entry_points() return the real built-ins plus the given fake third-party ones."""
    real = regmod.entry_points

    def install(*eps):
        monkeypatch.setattr(regmod, "entry_points", lambda group: [*real(group=group), *eps])

    return install


def test_builtins_load_through_entry_points():
    reg = Registry().load_entry_points()
    assert all(p.builtin and p.error is None for p in reg.plugins.values())
    assert {"mamba_siso", "attention_probe", "mlp_probe", "siren"} <= set(reg.names("experts"))
    assert sorted(reg.names("models")) == ["cws", "dualtrack", "transformer"] and "recall" in reg.names("data_sources")
    assert reg.entry("experts", "siren").plugin.dist == "parallax-cws"


def test_plugin_that_fails_to_import_is_reported_and_others_load(fake_eps):
    fake_module("good_plugin_mod", ["good_expert"])
    fake_eps(EntryPoint("broken", "no_such_module_xyz", "parallax"), EntryPoint("good", "good_plugin_mod", "parallax"))
    reg = Registry().load_entry_points()
    assert "ModuleNotFoundError" in reg.plugins["broken"].error
    assert "good_expert" in reg.names("experts") and "mamba_siso" in reg.names("experts")
    with pytest.raises(PluginError, match="broken plugins: broken: import failed"):
        reg.get("experts", "from_broken")


def test_name_conflict_names_both_plugins_and_keeps_the_first(fake_eps):
    fake_module("dup_plugin_mod", ["mamba_siso", "other_expert"])
    fake_eps(EntryPoint("dup", "dup_plugin_mod", "parallax"))
    reg = Registry().load_entry_points()
    err = reg.plugins["dup"].error
    assert ("mamba_siso" in err and "builtin-experts" in err
            and "dup" not in reg.entry("experts", "mamba_siso").plugin.name)
    assert "other_expert" not in reg.names("experts")  # a conflicting plugin registers nothing


def test_hook_that_raises_is_isolated(fake_eps):
    fake_module("raising_plugin_mod", raises=RuntimeError("boom"))
    fake_eps(EntryPoint("raiser", "raising_plugin_mod", "parallax"))
    reg = Registry().load_entry_points()
    assert reg.plugins["raiser"].error == "register_experts raised RuntimeError: boom"
    assert "mamba_siso" in reg.names("experts")


def test_allow_and_deny_lists(fake_eps, monkeypatch):
    fake_module("allow_a_mod", ["exp_a"])
    fake_module("allow_b_mod", ["exp_b"])
    fake_eps(EntryPoint("a", "allow_a_mod", "parallax"), EntryPoint("b", "allow_b_mod", "parallax"))
    monkeypatch.setenv("PARALLAX_LOAD_PLUGINS", "a")
    names = Registry().load_entry_points().names("experts")
    assert "exp_a" in names and "exp_b" not in names and "mamba_siso" in names
    monkeypatch.setenv("PARALLAX_LOAD_PLUGINS", "")
    names = Registry().load_entry_points().names("experts")
    assert "exp_a" not in names and "mamba_siso" in names
    monkeypatch.delenv("PARALLAX_LOAD_PLUGINS")
    monkeypatch.setenv("PARALLAX_DISABLE_PLUGINS", "b")
    names = Registry().load_entry_points().names("experts")
    assert "exp_a" in names and "exp_b" not in names


def test_a_kept_out_plugin_is_named_as_such(fake_eps, monkeypatch):
    fake_module("kept_out_mod", ["exp_kept"])
    fake_eps(EntryPoint("kept", "kept_out_mod", "parallax"))
    monkeypatch.setenv("PARALLAX_DISABLE_PLUGINS", "kept")
    reg = Registry().load_entry_points()
    with pytest.raises(PluginError, match="not loaded: plugin 'kept' is kept out by PARALLAX_DISABLE_PLUGINS"):
        reg.get("experts", "exp_kept")
    monkeypatch.delenv("PARALLAX_DISABLE_PLUGINS")
    monkeypatch.setenv("PARALLAX_LOAD_PLUGINS", "nosuch")
    reg = Registry().load_entry_points()
    assert "no installed package provides it" in reg.plugins["nosuch"].error


def test_unknown_name_suggests_and_lists():
    reg = Registry().load_entry_points()
    with pytest.raises(PluginError, match=r"did you mean 'siren'\?.*registered: attention_probe"):
        reg.get("experts", "sirem", where="model.experts.3.type")


def test_add_registers_an_in_process_plugin():
    reg = Registry().load_entry_points()
    reg.add(fake_module("inproc_mod", ["inproc_expert"]), PluginInfo("inproc", "inproc_mod", None, None, False))
    assert reg.entry("experts", "inproc_expert").plugin.name == "inproc"
    assert reg.plugins["inproc"].hooks == ["register_experts"]


def test_remove_undoes_add_and_frees_the_names():
    reg = Registry().load_entry_points()
    mod = fake_module("removable_mod", ["removable_expert"])
    reg.add(mod, PluginInfo("removable", "removable_mod", None, None, False))
    assert reg.remove("removable").provides == {"experts": ["removable_expert"]}
    assert "removable_expert" not in reg.names("experts") and "removable" not in reg.plugins
    assert not reg.pm.is_registered(mod)
    reg.add(mod, PluginInfo("removable", "removable_mod", None, None, False))  # the name is free again
    assert reg.entry("experts", "removable_expert").plugin.error is None
    with pytest.raises(PluginError, match="plugin 'nope' is not registered"):
        reg.remove("nope")


def test_two_distributions_with_one_entry_point_name(fake_eps):
    fake_module("first_dist_mod", ["first_expert"])
    fake_module("second_dist_mod", ["second_expert"])

    class Dist:
        def __init__(self, name):
            self.metadata, self.version = {"Name": name}, "1.0"

    a = EntryPoint("same", "first_dist_mod", "parallax")._for(Dist("pkg-a"))
    b = EntryPoint("same", "second_dist_mod", "parallax")._for(Dist("pkg-b"))
    fake_eps(a, b)
    reg = Registry().load_entry_points()
    assert "first_expert" in reg.names("experts") and "second_expert" not in reg.names("experts")
    assert reg.plugins["same (pkg-b)"].error == "entry-point name 'same' is already used by pkg-a; rename one of them"
