"""Ray's private names are used in one module only, msdn/study/ray_private.py, which says why and for which Ray.

A static check over every module under msdn/ (the adapter excepted), helped by importing the Ray classes
ours derive from: no import of a private Ray module (`ray._private`, any `_` part), no private attribute
of another object (`tuner._local_tuner`, `grid._experiment_analysis`; a few of other libraries are allowed
below, each with its reason), and in a class derived from a Ray class no use (`self._x`, `super()._x`) or
override (`def _x`) of a private name that Ray's classes define.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "msdn"
ADAPTER = PACKAGE_DIR / "study" / "ray_private.py"
# Private attributes of other libraries' objects, allowed where they are used: (file, attribute) -> why.
OTHER_LIBRARIES = {
    ("msdn/study/searcher.py", "_storage"): "optuna.Study's storage: a trial as stored now, the journal's FAIL marks",
    ("msdn/study/searcher.py", "_trial_id"): "an Optuna trial's id in its storage (Trial and FrozenTrial)",
}


def ray_private_names(cls: type) -> set[str]:
    """The private names Ray's classes in `cls`'s MRO define: their attributes and what they set on `self`."""
    names: set[str] = set()
    for base in cls.__mro__:
        if not base.__module__.startswith("ray."):
            continue
        names.update(n for n in vars(base) if n.startswith("_") and not n.startswith("__"))
        try:
            names.update(re.findall(r"self\.(_[A-Za-z]\w*)", inspect.getsource(base)))
        except (OSError, TypeError):
            pass
    return names


def _ray_imports(tree: ast.AST) -> dict[str, type]:
    """Names the module imports from Ray anywhere (lazily too), resolved to the class when they are one."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray" and not node.level:
            for alias in node.names:
                try:
                    value = getattr(importlib.import_module(node.module), alias.name)
                except (ImportError, AttributeError):
                    continue
                if isinstance(value, type):
                    out[alias.asname or alias.name] = value
    return out


def _class_of(module, node: ast.ClassDef, ray_names: dict[str, type]) -> type | None:
    """The class a ClassDef defines (the module's attribute), or for a nested one, its Ray base."""
    cls = getattr(module, node.name, None) if module is not None else None
    if isinstance(cls, type) and cls.__module__ == getattr(module, "__name__", None):
        return cls
    bases = [ray_names.get(b.id) for b in node.bases if isinstance(b, ast.Name)]
    return next((b for b in bases if b is not None), None)


def private_ray_uses(path: Path, module, relative: str) -> list[str]:
    """`relative:line: what` for every use of a private Ray name in the file at `path` (module: it, imported)."""
    tree = ast.parse(path.read_text(), str(path))
    ray_names = _ray_imports(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in modules:
                parts = name.split(".")
                if parts[0] == "ray" and any(p.startswith("_") for p in parts):
                    found.append(f"{relative}:{node.lineno}: imports {name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _on_self(node.value):
            if (relative, node.attr) not in OTHER_LIBRARIES:
                found.append(f"{relative}:{node.lineno}: {ast.unparse(node)} (another object's private attribute)")
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        cls = _class_of(module, node, ray_names)
        names = ray_private_names(cls) if cls is not None else set()
        if not names:
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Attribute) and _on_self(inner.value) and inner.attr in names:
                found.append(f"{relative}:{inner.lineno}: {ast.unparse(inner)} (Ray's, in {node.name})")
            elif isinstance(inner, ast.FunctionDef) and inner.name in names:
                found.append(f"{relative}:{inner.lineno}: def {inner.name} overrides Ray's, in {node.name}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _on_self(value: ast.AST) -> bool:
    """self.x, cls.x or super().x."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_outside_the_adapter_uses_a_private_ray_name():
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path == ADAPTER:
            continue
        module = importlib.import_module(module_name(path)) if "study" in path.parts else None
        found += private_ray_uses(path, module, str(path.relative_to(PACKAGE_DIR.parent)))
    assert not found, ("private Ray names outside msdn/study/ray_private.py (move each there, saying why and for "
                       "which Ray):\n" + "\n".join(found))


def test_the_adapter_names_the_ray_it_was_checked_against():
    import ray

    from msdn.study import ray_private

    assert ray.__version__ in ray_private.CHECKED_RAY_VERSIONS
    pyproject = (PACKAGE_DIR.parent / "pyproject.toml").read_text()
    assert re.search(r'"ray\[default,tune\]>=2\.60,<2\.61"', pyproject), "ray's bound in pyproject.toml"


def test_the_checker_finds_each_kind_of_private_use(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "from ray._private.worker import filter_autoscaler_events\n"
        "from ray.tune import Callback\n"
        "from ray.tune.search.optuna import OptunaSearch\n"
        "def restore(tuner):\n"
        "    return tuner._local_tuner\n"
        "class Searcher(OptunaSearch):\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def _setup_study(self, mode):\n"
        "        return self._ot_study, self._mine\n"
        "def factory():\n"
        "    class Local(Callback):\n"
        "        def on_step_end(self, iteration, trials, **info):\n"
        "            return self._trial_ids\n"
        "    return Local\n")
    spec = importlib.util.spec_from_file_location("sample_private_ray", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        found = private_ray_uses(source, module, "sample.py")
    finally:
        del sys.modules[spec.name]
    assert sorted(line.split(": ", 1)[0] for line in found) == [
        "sample.py:1", "sample.py:10", "sample.py:14", "sample.py:5", "sample.py:9"], found
    assert "_mine" not in "\n".join(found)
