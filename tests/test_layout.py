"""The library's layers: a module imports only from its own layer or the layers below it (every import, including
those inside functions, read with `ast`)."""

import ast

from helpers import ROOT

# Lowest first: the package itself (tli/__init__.py), the base modules, then the folders and the schema. A module's
# layer is the most specific entry that is the module itself or a folder holding it.
LAYERS = ["tli", "tli.errors", "tli.io", "tli.console", "tli.tiny", "tli.model", "tli.data", "tli.eval",
          "tli.intervention", "tli.training", "tli.config", "tli.jobs"]


def _layer(module: str) -> int:
    """The index in LAYERS of the most specific entry that is `module` or a package containing it."""
    best = None
    for i, name in enumerate(LAYERS):
        if module == name or (name != "tli" and module.startswith(name + ".")):
            if best is None or len(name) > len(LAYERS[best]):
                best = i
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layout.py"
    return best


def _modules() -> dict[str, tuple]:
    """{dotted name: (path, syntax tree)} of every module in tli/."""
    out = {}
    for path in sorted((ROOT / "tli").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


def _imports(name: str, path, tree: ast.Module, modules) -> set[str]:
    """The tli modules `name` imports anywhere in its file (`from tli.x import y`: tli.x.y when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            subs = {f"{module}.{a.name}" for a in node.names} & set(modules)
            found |= subs or {module}
    return {m for m in found if m == "tli" or m.startswith("tli.")}


def test_no_module_imports_from_a_layer_above_it():
    modules = _modules()
    assert len(modules) > 20 and "tli.jobs.train" in modules
    upward = sorted(f"{name} -> {imported}   ({LAYERS[_layer(name)]} imports {LAYERS[_layer(imported)]})"
                    for name, (path, tree) in modules.items() for imported in _imports(name, path, tree, modules)
                    if _layer(imported) > _layer(name))
    assert not upward, ("imports from a layer above (layers, lowest first: " + " < ".join(LAYERS) + "):\n"
                        + "\n".join(upward))


def test_the_check_sees_function_level_and_relative_imports():
    src = "def f():\n    from tli.jobs import train\n    from .. import config\n    import tli.eval.metrics\n"
    modules = {"tli.jobs.train": None, "tli.config": None}
    got = _imports("tli.model.lora", ROOT / "tli" / "model" / "lora.py", ast.parse(src), modules)
    assert got == {"tli.jobs.train", "tli.config", "tli.eval.metrics"}
    assert [_layer(m) > _layer("tli.model.lora") for m in sorted(got)] == [True, True, True]
