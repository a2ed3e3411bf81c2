"""What pyproject.toml declares: the releases of the libraries whose internals affectstream uses are the ones
their shims were tested with; every package of the source tree goes into the wheel; the type checker's mirror
of the folder-to-package mapping is whole."""
from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared_requirement(dist: str) -> Requirement:
    """The [project] dependency on ``dist``."""
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(dist):
            return requirement
    raise AssertionError(f"pyproject.toml does not depend on {dist}")


def test_the_pinned_torch_is_a_release_the_packed_linears_were_tested_with():
    from affectstream.model.torch_compat import TESTED_TORCH

    [pin] = declared_requirement("torch").specifier
    assert pin.operator == "==" and Version(pin.version) in TESTED_TORCH


def package_dirs() -> dict[str, Path]:
    """``[tool.setuptools.package-dir]``: package name -> folder (``affectstream.model`` -> ``model/``)."""
    return {name: ROOT / folder for name, folder in pyproject()["tool"]["setuptools"]["package-dir"].items()}


def source_packages() -> set[str]:
    """Every folder of the mapped trees that holds Python code, named as the mapping names it."""
    found = set()
    for package, folder in package_dirs().items():
        for module in folder.rglob("*.py"):
            rel = module.parent.relative_to(folder)
            if "__pycache__" not in rel.parts:
                found.add(".".join((package, *rel.parts)))
    return found


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    assert source_packages() - listed == set(), "add the new package to [tool.setuptools] packages"
    dirs = package_dirs()
    for package in listed:  # and every listed one exists (data folders hold no code, so are not found above)
        top = max((name for name in dirs if package == name or package.startswith(name + ".")), key=len)
        assert (dirs[top] / Path(*package[len(top):].split(".")[1:])).is_dir(), package


def test_the_type_checkers_mirror_of_the_package_is_whole():
    """.pyright/affectstream: what pyright resolves ``affectstream.*`` against ([tool.pyright] stubPath)."""
    mirror = ROOT / ".pyright" / "affectstream"
    expected = {path.name: path for path in (ROOT / "affectstream").glob("*.py")}
    expected |= {name.split(".")[1]: folder for name, folder in package_dirs().items() if name.count(".") == 1}
    assert {p.name: p.resolve() for p in mirror.iterdir()} == {k: v.resolve() for k, v in expected.items()}
    assert all(p.is_symlink() for p in mirror.iterdir())
