"""What pyproject.toml declares: the releases of the libraries whose internals affectstream uses are the ones
their shims were tested with."""
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
