"""The versioned model registry on disk: every trained version in its own directory, the deployed one a
symlink that is swapped in one atomic step, the rollout plan (shadow / canary) in one small JSON file.

    <root>/versions/<version>/   a deployed model directory (model.deploy) + lineage.json + metrics.json
    <root>/current               symlink -> versions/<version>   (os.replace of a fresh link: atomic)
    <root>/rollout.json          Rollout, written to a temporary file then os.replace'd (never half-written)
    <root>/history.jsonl         append-only: one line per add / promote / rollback / rollout change

Why a symlink: the classify worker already reloads when the *resolved* path of its model directory
changes, so serving ``<root>/current`` makes promotion and rollback one rename that every worker picks up
on its next check, with no post lost (a batch finishes on the model it started with).

Version ids are ``v1``, ``v2``, … in the order they were added; ``add`` writes the id into the copy's
``config.json`` (``version``) so every result a version serves carries the registry's id. Mutations hold an
advisory lock (``<root>/.lock``) so two operators (or the rollback watchdog and an operator) cannot
interleave a read-modify-write of the pointer, the plan or the history.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

MODES = ("off", "shadow", "canary")
VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
LINEAGE_FILE = "lineage.json"


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back to …)."""


@dataclass(frozen=True)
class Rollout:
    current: str                 # deployed version id ("" while nothing is deployed)
    candidate: str | None        # version under test, or None
    mode: str                    # "off" | "shadow" | "canary"
    share: float                 # shadow: share of posts scored by the candidate too; canary: share of partitions served by it
    updated_ms: int
    reason: str = ""

    @classmethod
    def from_dict(cls, raw: dict) -> "Rollout":
        return cls(current=str(raw.get("current") or ""), candidate=raw.get("candidate"),
                   mode=str(raw.get("mode") or "off"), share=float(raw.get("share") or 0.0),
                   updated_ms=int(raw.get("updated_ms") or 0), reason=str(raw.get("reason") or ""))


def now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- paths and reads ---------------------------------------------------------------------------

    def current_dir(self) -> Path:
        return self.root / "current"

    def version_dir(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise RegistryError(f"not a version id: {version!r} (expected v1, v2, …)")
        return self.root / "versions" / version

    def versions(self) -> list[str]:
        """Every added version, oldest first."""
        folder = self.root / "versions"
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def current(self) -> str:
        """The deployed version id, read from the symlink ("" when none)."""
        link = self.current_dir()
        if not link.is_symlink():
            return ""
        return Path(os.readlink(link)).name

    def lineage(self, version: str) -> dict:
        path = self.version_dir(version) / LINEAGE_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def metrics(self, version: str) -> dict:
        path = self.version_dir(version) / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def rollout(self) -> Rollout:
        path = self.root / "rollout.json"
        if path.is_file():
            return Rollout.from_dict(json.loads(path.read_text()))
        return Rollout(current=self.current(), candidate=None, mode="off", share=0.0, updated_ms=0)

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --- changes -------------------------------------------------------------------------------------

    def add(self, model_dir: str | Path, lineage: dict) -> str:
        """Copy a trained model directory in as the next version; returns its id. The copy is built in a
        temporary folder and renamed into place, so a reader never sees half a version."""
        source = Path(model_dir)
        if not (source / "config.json").is_file():
            raise RegistryError(f"{source} is not a model directory (no config.json)")
        with self._locked():
            versions = self.root / "versions"
            versions.mkdir(parents=True, exist_ok=True)
            staging = versions / f".adding-{os.getpid()}-{now_ms()}"
            shutil.copytree(source, staging, symlinks=False)
            number = int(self.versions()[-1][1:]) + 1 if self.versions() else 1
            version = f"v{number}"
            config = json.loads((staging / "config.json").read_text())
            lineage = {**lineage, "version": version, "source_dir": str(source),
                       "source_version": config.get("version", ""), "added_ms": now_ms()}
            config["version"] = version
            _write_atomic(staging / "config.json", json.dumps(config, indent=2))
            _write_atomic(staging / LINEAGE_FILE, json.dumps(lineage, indent=2, default=str))
            os.rename(staging, versions / version)
            self._log({"event": "add", "version": version, "base": lineage.get("base_version"),
                       "reason": str(lineage.get("reason", ""))})
        return version

    def set_rollout(self, candidate: str | None, mode: str, share: float, reason: str = "") -> Rollout:
        if mode not in MODES:
            raise RegistryError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= share <= 1.0:
            raise RegistryError(f"share must be in [0, 1], got {share}")
        with self._locked():
            current = self.current()
            if mode == "off":
                candidate, share = None, 0.0
            else:
                if candidate is None or candidate not in self.versions():
                    raise RegistryError(f"{mode} needs a registered candidate version, got {candidate!r}")
                if candidate == current:
                    raise RegistryError(f"{candidate} is already the deployed version")
                if not current:
                    raise RegistryError("nothing is deployed yet: promote a version first")
            rollout = Rollout(current=current, candidate=candidate, mode=mode, share=float(share),
                              updated_ms=now_ms(), reason=reason)
            self._write_rollout(rollout)
            self._log({"event": "rollout", "version": candidate, "mode": mode, "share": share, "reason": reason})
        return rollout

    def promote(self, version: str, reason: str = "") -> None:
        """Point ``current`` at ``version`` (one atomic rename) and end any rollout."""
        with self._locked():
            self._swap(version, "promote", reason)

    def rollback(self, reason: str = "") -> str:
        """Point ``current`` back at the version deployed before the current one was promoted; returns it.
        Promotions form a stack (replayed from the history): promote pushes, rollback pops."""
        with self._locked():
            stack = self._deploy_stack()
            if len(stack) < 2:
                raise RegistryError("nothing to roll back to: fewer than two versions were ever deployed")
            previous = stack[-2]
            self._swap(previous, "rollback", reason)
            return previous

    # --- internals -----------------------------------------------------------------------------------

    def _swap(self, version: str, event: str, reason: str) -> None:
        target = self.version_dir(version)
        if not target.is_dir():
            raise RegistryError(f"unknown version {version!r}; registered: {self.versions()}")
        before = self.current()
        link = self.current_dir()
        tmp = self.root / f".current-{os.getpid()}-{now_ms()}"
        os.symlink(Path("versions") / version, tmp)   # relative: the root can be moved or mounted elsewhere
        os.replace(tmp, link)                          # rename(2) over the old link: atomic
        self._write_rollout(Rollout(current=version, candidate=None, mode="off", share=0.0,
                                    updated_ms=now_ms(), reason=f"{event}: {reason}".strip(": ")))
        self._log({"event": event, "version": version, "from": before or None, "reason": reason})

    def _deploy_stack(self) -> list[str]:
        stack: list[str] = []
        for entry in self.history():
            if entry.get("event") == "promote":
                stack.append(entry["version"])
            elif entry.get("event") == "rollback" and stack:
                stack.pop()
        return stack

    def _write_rollout(self, rollout: Rollout) -> None:
        _write_atomic(self.root / "rollout.json", json.dumps(asdict(rollout), indent=2))

    def _log(self, entry: dict) -> None:
        line = json.dumps({"ms": now_ms(), **entry}, default=str)
        with open(self.root / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a sibling temporary file, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
