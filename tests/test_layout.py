"""The package's layout rules that no single stage's tests see: one name per stage, imports flow one way
(no cycles), no configuration through the environment, a wheel that installs, the seed's commands as shims.

    pytest tests/test_layout.py
"""

from __future__ import annotations

import ast

import pytest
from pathlib import Path

PACKAGE = "ech0"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_module(name: str, modules: set[str]) -> str | None:
    """``name`` or its closest enclosing module that exists (``ech0.eval.cases.load_baseline`` -> ``ech0.eval.cases``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may bring in (for ``from X import y``: ``X.y``, which may be a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}".rstrip(".")
    return [f"{base}.{a.name}" for a in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, counting imports inside functions too."""
    files = {_module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, module, is_package):
                target = _known_module(name, modules) if name.split(".")[0] == PACKAGE else None
                # a package importing its own submodules (re-exports) is no cycle; the root package is a namespace
                if target and target != module and target != PACKAGE and not target.startswith(module + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One example cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_within(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete cycle a -> b -> ... -> a inside one strongly connected component (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def test_no_import_cycles(repo_root):
    found = cycles(import_graph(repo_root))
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / PACKAGE / "eval"
    pkg.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from ech0.eval import a\n")  # a package re-exporting: not a cycle
    (pkg / "a.py").write_text("from ech0.eval.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    assert cycles(import_graph(tmp_path)) == [["ech0.eval.a", "ech0.eval.b", "ech0.eval.a"]]


# ---------------------------------------------------------------------------------------- one name per stage


def test_one_name_per_stage(repo_root):
    """``ech0 <name>`` = module ``ech0.<name>`` = MLproject entry ``<name>`` = ``tests/test_<name>*.py``."""
    import importlib
    import re

    import yaml

    from ech0.cli import SUBCOMMANDS, module_of

    project = yaml.safe_load((repo_root / "MLproject").read_text())["entry_points"]
    assert set(project) == set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        module = importlib.import_module(module_of(name))
        assert callable(module.main), name
        assert f"ech0.cli {name}" in project[name]["command"], name
        assert list(repo_root.glob(f"tests/test_{name.replace('-', '_')}*.py")), f"no tests/test_{name}*.py"
        used = set(re.findall(r"{(\w+)}", project[name]["command"]))
        assert used == set(project[name].get("parameters", {})), f"{name}: placeholders vs parameters"


def test_the_wheel_lists_every_package_on_disk(repo_root):
    import tomllib

    listed = set(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(repo_root).parts) for p in (repo_root / PACKAGE).rglob("__init__.py")}
    assert listed == on_disk | {"ech0.conf"}


def test_importing_changes_no_process_state(repo_root, run_cli):
    """No module sets the umask, the environment or MLflow's URI when it is imported."""
    code = """
import os, pkgutil, importlib, ech0
before_env, mask = dict(os.environ), os.umask(0o027)
for m in pkgutil.walk_packages(ech0.__path__, "ech0."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
assert os.umask(mask) == 0o027, "the umask changed"
changed = {k for k in set(before_env) | set(os.environ) if before_env.get(k) != os.environ.get(k)}
assert not changed, changed
print("ok")
"""
    out = run_cli("ech0.cli", "--help")  # the dispatcher itself starts
    assert out.returncode == 0 and "base-model" in out.stdout
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_only_the_context_reads_ech0s_environment(repo_root):
    """ech0's own variables are read in ech0/context.py alone (at the CLI edge), and nothing writes os.environ."""
    import re

    offenders = []
    for path in sorted((repo_root / PACKAGE).rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(repo_root).as_posix()
        if rel != "ech0/context.py" and re.search(r"""environ(?:\.get)?\(?\[?["']ECH0_|getenv\(["']ECH0_""", text):
            offenders.append(f"{rel}: reads an ECH0_ variable")
        if rel != "ech0/cli_common.py" and re.search(r"os\.environ\[[^]]+\]\s*=|os\.environ\.(setdefault|update)\(", text):
            offenders.append(f"{rel}: writes os.environ")
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------- the package installs


@pytest.mark.slow
def test_the_wheel_installs_and_composes_from_an_empty_folder(repo_root, tmp_path, tiny_model_dir):
    """`pip wheel .`, installed where the repository is not on the path: train and data validate work."""
    import json
    import os
    import subprocess
    import sys
    import zipfile

    wheels, target, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(wheels), str(repo_root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(wheels.glob("ech0-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ech0/conf/train.yaml" in names and "ech0/conf/preset/lora.yaml" in names
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target), "ECH0_HOME": str(empty / "home")}
    ech0 = [sys.executable, str(target / "bin" / "ech0")]

    where = subprocess.run([sys.executable, "-c", "import ech0, ech0.config as c; print(ech0.__file__); print(c.CONF_DIR)"],
                           capture_output=True, text=True, env=env, cwd=empty)
    assert where.stdout.split() == [str(target / "ech0" / "__init__.py"), str(target / "ech0" / "conf")], where

    train = subprocess.run([*ech0, "train", "+preset=lora", "trainer.max_steps=2", "trainer.progress=false",
                            "tracking.log_system_metrics=false", "tracking.log_model=false"],
                           capture_output=True, text=True, env=env, cwd=empty, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert "loss" in train.stdout and (empty / "home" / "mlflow.db").is_file()

    rows = empty / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "completion": str(2 * i)}) + "\n"
                            for i in range(20)))
    data = subprocess.run([*ech0, "data", "validate", "--input", str(rows), "--stage", "clean", "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=empty, timeout=600)
    assert data.returncode == 0, data.stdout[-2000:] + data.stderr[-3000:]
    assert (empty / "home" / "data" / "clean" / "rows.jsonl").is_file()


# ---------------------------------------------------------------------------------------- the seed's commands


@pytest.mark.parametrize("command, target", [
    (["scripts/import_legacy_data.py", "--help"], "ech0 data import"),
    (["scripts/validate_dataset.py", "--help"], "ech0 data validate"),
    (["scripts/model_registry.py", "--help"], "ech0 registry"),
    (["-m", "ech0.eval.runner", "--help"], "ech0 eval"),
    (["-m", "ech0.scheduler", "--help"], "ech0"),
    (["ech0_hub_enhanced.py", "--help"], "ech0 pipeline"),
])
def test_the_seeds_commands_still_work(repo_root, command, target):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert target in out.stdout, out.stdout[:600]


def test_hub_shim_user_error_is_one_line(ech0_home, repo_root):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(repo_root / "ech0_hub_enhanced.py"), "--mode", "eval"],
                         capture_output=True, text=True, cwd=ech0_home, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "error: --mode eval needs --model-dir"


def test_hub_shim_eval_mode_forwards_to_the_eval_stage(ech0_home, repo_root):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(repo_root / "ech0_hub_enhanced.py"), "--mode", "eval", "--model-dir",
                          str(ech0_home / "nope")], capture_output=True, text=True, cwd=ech0_home, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith(f"error: {ech0_home / 'nope'}: no such model folder")
