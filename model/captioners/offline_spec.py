"""The offline describer's names: which version, which parts. One grammar for the trainer's ``--captioner``,
the caption worker's setting, caches, post stamps and model configs (docs/describer.md).

    offline                  version 1: objects, text in image, scene (the models trained before faces)
    offline:no-ocr           version 1 without reading text
    offline@2                version 2: objects, faces, text in image, scene
    offline@2:no-faces       every part but one; "-faces" says the same, "-faces,-ocr" drops two
    offline@2:faces          only the parts listed ("faces-only" says the same)

A name is canonical when it is what ``describer_name`` gives: removals as ``no-<part>`` in description
order, "offline" for version 1 with every part. The version changes whenever a part's output or the
wording of a clause changes, so a cache or a model never mixes descriptions of two kinds under one name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PARTS = ("objects", "faces", "ocr", "scene")  # the order of the clauses in a description
# The parts each version has. Only versions the current code reproduces exactly are listed: a version whose
# parts changed since is retired (models trained on it need retraining, as their descriptions are gone).
VERSIONS: dict[int, tuple[str, ...]] = {1: ("objects", "ocr", "scene"), 2: PARTS}
LATEST = 2
_SPEC = re.compile(r"offline(?:@(\d+))?(?::(.*))?")


@dataclass(frozen=True)
class Selection:
    version: int
    parts: tuple[str, ...]  # in PARTS order, never empty


def parse_offline_spec(spec: str) -> Selection:
    """``offline[@version][:tokens]`` -> Selection; ValueError (saying why) for anything else."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"unknown captioner spec {spec!r}: not an offline describer name")
    version = int(match.group(1) or 1)
    if version not in VERSIONS:
        raise ValueError(f"unknown captioner spec {spec!r}: offline describer versions are "
                         f"{', '.join(map(str, VERSIONS))}")
    available = VERSIONS[version]
    if match.group(2) is None:
        return Selection(version, available)
    return Selection(version, _select(spec, match.group(2), available))


def _select(spec: str, tokens_text: str, available: tuple[str, ...]) -> tuple[str, ...]:
    drop, keep = set(), set()
    for token in (t.strip() for t in tokens_text.split(",")):
        removed = re.fullmatch(r"(?:no-|-)(\w+)", token)
        part = removed.group(1) if removed else re.sub(r"-only$", "", token)
        if part not in available:
            raise ValueError(f"unknown captioner spec {spec!r}: {part!r} is not a part of this version "
                             f"({', '.join(available)})")
        (drop if removed else keep).add(part)
    if drop and keep:
        raise ValueError(f"unknown captioner spec {spec!r}: list the parts to keep or those to drop, not both")
    parts = tuple(p for p in available if (p in keep if keep else p not in drop))
    if not parts:
        raise ValueError(f"unknown captioner spec {spec!r}: no part left (the text-only ablation is 'none')")
    return parts


def describer_name(selection: Selection) -> str:
    """The canonical name of a selection (see the module docstring)."""
    base = "offline" if selection.version == 1 else f"offline@{selection.version}"
    dropped = [p for p in VERSIONS[selection.version] if p not in selection.parts]
    return base + (":" + ",".join(f"no-{p}" for p in dropped) if dropped else "")
