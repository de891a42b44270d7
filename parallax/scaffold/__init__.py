"""``parallax new-plugin``: write a plugin package that installs, passes its tests and trains as it is.

For ``NAME`` and a kind (expert, encoder, decoder or workspace) it writes, under DEST::

    pyproject.toml                    distribution parallax-NAME, entry point NAME in group "parallax"
    README.md                         install, test, use, publish
    src/parallax_NAME/__init__.py     the hook that registers NAME
    src/parallax_NAME/KIND.py         a small, correct component with the protocol in its docstring
    tests/conftest.py                 enables parallax.testing
    tests/test_NAME.py                entry point, conformance kit, a short training run
    recipes/NAME.yaml                 a tiny BIND/RECALL recipe that uses NAME

The templates are the ``*.tmpl`` files beside this module (``string.Template`` syntax).
"""
from __future__ import annotations

import re
from pathlib import Path
from string import Template

from .. import __version__
from ..errors import ConfigError, PluginError
from ..registry import Registry

#: kind -> (registry kind, hook, conformance check)
KINDS = {
    "expert": ("experts", "register_experts", "assert_expert_conforms"),
    "encoder": ("encoders", "register_encoders", "assert_encoder_conforms"),
    "decoder": ("decoders", "register_decoders", "assert_decoder_conforms"),
    "workspace": ("workspaces", "register_workspaces", "assert_workspace_conforms"),
}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TEMPLATES = Path(__file__).parent

#: the recipe's components when the new plugin does not take their place
DEFAULT_COMPONENTS = {
    "encoder": "{type: token, window: 3}",
    "experts": "    - {type: mamba_siso, slots: 2, d_state: 8}\n    - {type: attention_probe, slots: 1, heads: 4}",
    "workspace": "{type: cws, heads: 4}",
    "decoder": "{type: motor, layers: 2, context: 8, heads: 4}",
}


def files_for(name: str, kind: str) -> dict[str, str]:
    """Relative path -> text of every file of the package for plugin ``name`` of ``kind``."""
    kinds, hook, assert_fn = KINDS[kind]
    package = f"parallax_{name}"
    components = dict(DEFAULT_COMPONENTS)
    if kind == "expert":
        components["experts"] = f"    - {{type: {name}, slots: 2}}\n    - {{type: attention_probe, slots: 1, heads: 4}}"
        tiny = f'experts=[{{"type": "{name}"}}, {{"type": "mamba_siso", "slots": 2, "d_state": 4}}]'
    else:
        components[kind] = f"{{type: {name}}}"
        tiny = f'{kind}={{"type": "{name}"}}'
    values = {
        "name": name, "kind": kind, "kinds": kinds, "hook": hook, "assert_fn": assert_fn, "package": package,
        "dist": f"parallax-{name.replace('_', '-')}", "class_name": "".join(p.title() for p in name.split("_") if p),
        "parallax_version": __version__, "tiny_components": tiny, **components,
    }

    def render(template: str) -> str:
        return Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)

    return {
        "pyproject.toml": render("pyproject.toml.tmpl"),
        "README.md": render("README.md.tmpl"),
        f"src/{package}/__init__.py": render("init.py.tmpl"),
        f"src/{package}/{kind}.py": render(f"{kind}.py.tmpl"),
        "tests/conftest.py": render("conftest.py.tmpl"),
        f"tests/test_{name}.py": render("test_plugin.py.tmpl"),
        f"recipes/{name}.yaml": render("recipe.yaml.tmpl"),
    }


def new_plugin(name: str, kind: str, dest: str | Path, registry: Registry) -> list[Path]:
    """Write the package for plugin ``name`` into ``dest``; return the files written."""
    if not NAME.match(name):
        raise ConfigError(f"new-plugin: '{name}' is not a valid plugin name; use lowercase letters, digits and "
                          f"underscores, starting with a letter (for example my_expert)")
    kinds = KINDS[kind][0]
    taken = registry.entries[kinds].get(name)
    if taken is not None:
        raise PluginError(f"new-plugin: {kind} '{name}' is already registered by plugin '{taken.plugin.name}'; "
                          f"choose another name")
    if name in registry.plugins:
        raise PluginError(f"new-plugin: a plugin named '{name}' is already installed; choose another name")
    root = Path(dest)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root}: already exists and is not an empty directory; choose another --dest")
    written = []
    for rel, text in files_for(name, kind).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
