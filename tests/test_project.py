"""The project's own files agree with each other."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from server.config import ServerSettings
from toolkit.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_same_packages_as_pyproject() -> None:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["dev"]) | set(extras["lab"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if not p.startswith("-")} == wanted
    assert "-e ." in pip


def test_torch_is_pinned_for_the_cpu_build() -> None:
    assert "torch==2.13.0" in pyproject()["project"]["dependencies"]
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_0-9]+)=", text, re.M))
    assert {Settings.ENV[f.name] for f in fields(Settings)} <= documented
    assert {ServerSettings.ENV[f.name] for f in fields(ServerSettings)} <= documented


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    from dashboard.config import DashboardSettings
    from toolkit.client import ClientSettings

    names = [
        cls.ENV[f.name] for cls in (Settings, ServerSettings, DashboardSettings, ClientSettings) for f in fields(cls)
    ]
    for name in names:
        assert f"`{name}`" in readme, f"README does not document {name}"


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_no_torch_in_the_server_package() -> None:
    for path in (ROOT / "server").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path


def test_graphiql_comes_from_npm_with_a_lockfile_and_no_cdn() -> None:
    import json

    package = json.loads((ROOT / "server" / "package.json").read_text())
    assert package["dependencies"]["graphiql"].startswith("3.9") and package["dependencies"]["react"].startswith("18.3")
    assert (ROOT / "server" / "package-lock.json").is_file()
    for name in ("graphiql.html", "init.js"):
        text = (ROOT / "server" / "static" / name).read_text()
        assert "unpkg" not in text and "cdn" not in text.lower() and "https://" not in text


def test_readme_documents_every_make_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.+)$", makefile, re.M)
    assert phony is not None
    readme = (ROOT / "README.md").read_text()
    for target in phony.group(1).split():
        if target in ("help",):
            continue
        assert f"make {target}" in readme or f"`{target}`" in readme, f"README does not mention make {target}"


def test_every_exported_name_imports() -> None:
    import toolkit

    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name


def imports_of(path: Path) -> set[str]:
    """The modules a file imports (``from a import b`` gives ``a`` and ``a.b``)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_import_runs_back_up_the_layers() -> None:
    """Serving never imports the training module; no module imports the package's __init__ (the version
    has a module of its own)."""
    for path in [*(ROOT / "toolkit").rglob("*.py"), *(ROOT / "server").glob("*.py")]:
        if path.name == "__init__.py" and path.parent.name == "toolkit":
            continue
        imported = imports_of(path)
        assert not any(m.startswith("toolkit.__version__") or m == "toolkit" for m in imported), path
        if path.name not in ("lora.py", "magic.py"):
            assert "toolkit.lora" not in imported, f"{path} imports the training module"


def test_the_fallback_defaults_are_referenced_in_one_module() -> None:
    """Requests' parameters are resolved once (toolkit.params.resolve): no engine or front end fills its own."""
    users = {
        path.relative_to(ROOT).as_posix()
        for folder in ("toolkit", "server", "dashboard")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"\b(FALLBACK_DEFAULTS|DEFAULT_MAX_NEW_TOKENS)\b", path.read_text())
    }
    assert users == {"toolkit/params.py"}


def test_every_error_class_is_declared_in_toolkit_errors() -> None:
    """One vocabulary: a ``ToolkitError`` subclass declared anywhere else would join the wire table only once
    its module is imported (and ``from_wire`` would depend on import order)."""
    declared = {
        path.relative_to(ROOT).as_posix()
        for folder in ("toolkit", "server", "dashboard")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"^class \w+\((?:[\w.]*Error|ToolkitError|InvalidRequest|ConfigError)\b", path.read_text(), re.M)
        and path.name != "errors.py"
    }
    assert declared == set(), f"error classes outside toolkit/errors.py: {sorted(declared)}"


def test_the_circle_contract_sees_lazy_and_type_checking_imports(tmp_path: Path, monkeypatch: Any) -> None:
    """``make lint``'s own contract (lint/contracts.py) finds a circle closed by an import inside a function
    and one made only for type checking, and none in the project."""
    import grimp

    monkeypatch.syspath_prepend(str(ROOT))  # lint-imports runs from the project's root
    from lint.contracts import circles

    pkg = tmp_path / "house"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from house import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from house import a\n")
    (pkg / "c.py").write_text("from house import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert circles(grimp.build_graph("house", cache_dir=None), {"house"}) == [["house.a", "house.b", "house.a"]]
    project = grimp.build_graph("toolkit", "server", "dashboard", cache_dir=None)
    assert circles(project, {"toolkit", "server", "dashboard"}) == []
