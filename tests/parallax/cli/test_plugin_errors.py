"""Third-party plugins that go wrong, seen through the CLI: one that raises on import, one that
registers a name already taken, and one whose options schema rejects the recipe. Each gives a
one-line message, and the other plugins keep working."""
from __future__ import annotations

import json
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
from pydantic import field_validator

import parallax
from parallax import registry as regmod
from parallax.cli.main import main
from parallax.registry import get_registry

PLUGINS = {
    "raises_on_import": """
        raise RuntimeError("this plugin needs CUDA 12")
    """,
    "takes_siren": """
        import parallax
        from parallax.registry import get_registry

        @parallax.hookimpl
        def register_experts(register):
            register("siren", get_registry().get("experts", "mlp_probe"))
            register("also_mine", get_registry().get("experts", "mlp_probe"))
    """,
}


class EvenSlots(parallax.Expert):
    """A working expert whose options schema accepts an even number of slots only."""

    clock = "h"

    class Config(parallax.Spec):
        type: str = "even_slots"
        slots: int = 2

        @field_validator("slots")
        @classmethod
        def _even(cls, v):
            if v % 2:
                raise ValueError("slots must be even (the expert pairs them)")
            return v

    def __init__(self, cfg, d_model, info):
        super().__init__()
        self.slots = cfg.slots
        self.net = parallax.RMSNorm(d_model)

    def propose(self, h_eff, ctx, positions):
        return self.net(h_eff)[:, :, None].expand(-1, -1, self.slots, -1)  # (B,T,S,d)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install the plugins above as entry points beside the built-ins, for the CLI's registry."""
    for name, source in PLUGINS.items():
        (tmp_path / f"{name}_mod.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    schema_mod = type(sys)("even_slots_mod")
    schema_mod.register_experts = parallax.hookimpl(lambda register: register("even_slots", EvenSlots))
    monkeypatch.setitem(sys.modules, "even_slots_mod", schema_mod)
    real = regmod.entry_points
    fakes = [EntryPoint(n, f"{n}_mod", "parallax") for n in [*PLUGINS, "even_slots"]]
    monkeypatch.setattr(regmod, "entry_points", lambda group: [*real(group=group), *fakes])
    get_registry(refresh=True)
    yield
    monkeypatch.undo()
    for name in PLUGINS:
        sys.modules.pop(f"{name}_mod", None)
    get_registry(refresh=True)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_plugins_json_reports_each_failure_and_the_rest_load(third_party, capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["raises_on_import"]["error"] == "import failed: RuntimeError: this plugin needs CUDA 12"
    assert rows["takes_siren"]["error"] == ("registers expert 'siren', which plugin 'builtin-experts' already "
                                            "registers; rename one of them")
    assert rows["takes_siren"]["provides"] == {}
    assert rows["even_slots"]["error"] is None and rows["even_slots"]["provides"] == {"experts": ["even_slots"]}
    assert all(r["error"] is None for r in rows.values() if r["builtin"])


def test_the_table_shows_the_broken_plugins_too(third_party, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "raises_on_import" in out and "takes_siren" in out and "broken" in out


def test_other_plugins_keep_working(third_party, make_tiny_recipe, capsys):
    recipe = make_tiny_recipe(experts=[{"type": "siren"}, {"type": "even_slots", "slots": 2}])
    assert main(["validate", str(recipe)]) == 0
    assert get_registry().entry("experts", "siren").plugin.name == "builtin-experts"


def test_a_name_from_a_plugin_that_failed_to_import_says_why(third_party, tiny_recipe, capsys):
    err = one_line_error(capsys, ["validate", str(tiny_recipe), "model.experts.0.type=cuda_only"])
    assert err.startswith("parallax: error: model.experts.0.type: unknown expert 'cuda_only'")
    assert "broken plugins: raises_on_import: import failed: RuntimeError: this plugin needs CUDA 12" in err


def test_a_name_lost_to_a_conflict_says_why(third_party, tiny_recipe, capsys):
    err = one_line_error(capsys, ["validate", str(tiny_recipe), "model.experts.0.type=also_mine"])
    assert "unknown expert 'also_mine'" in err and "takes_siren: registers expert 'siren'" in err


def test_a_schema_that_rejects_the_recipe_names_the_key_and_the_reason(third_party, make_tiny_recipe, capsys):
    recipe = make_tiny_recipe(experts=[{"type": "mamba_siso"}, {"type": "even_slots", "slots": 2}])
    err = one_line_error(capsys, ["validate", str(recipe), "model.experts.1.slots=3"])
    assert err == ("parallax: error: model.experts.1.slots: slots must be even (the expert pairs them) "
                   "(got 3)")
    err = one_line_error(capsys, ["run", str(recipe), "model.experts.1.slotz=2"])
    assert "model.experts.1.slotz: unknown key; did you mean 'slots'? (allowed: type, slots)" in err
    assert main(["validate", str(recipe)]) == 0
