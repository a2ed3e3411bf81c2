"""A worker process for the chaos run: ``affectstream worker`` as deployed, except that its captioner is a
:class:`SteeredCaptioner` that the harness makes slow or failing through a small control file.

    python -m affectstream.bench.chaos_worker --role caption     # settings from AFFECTSTREAM_* as usual

The captioner reads ``{"mode": "ok" | "slow" | "fail", "slow_s": [low, high]}`` from the file named by
``AFFECTSTREAM_CHAOS_CAPTIONER`` before each call (a missing or unreadable file means "ok"). Its
descriptions are cheap and deterministic (size and mean colour), so the run measures the pipeline, not a
vision model; the real captioners have their own benchmarks.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import orjson

CONTROL_ENV = "AFFECTSTREAM_CHAOS_CAPTIONER"
MODES = ("ok", "slow", "fail")


def write_control(path: str | Path, mode: str, slow_s: tuple[float, float] = (0.2, 2.0)) -> None:
    """Set the captioner's mode for every worker reading ``path`` (atomic: write, then rename)."""
    if mode not in MODES:
        raise ValueError(f"captioner mode must be one of {MODES}, got {mode!r}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"mode": mode, "slow_s": list(slow_s)}))
    os.replace(tmp, path)


class SteeredCaptioner:
    """Describes an image by its size and mean colour; slow or failing when the control file says so."""

    name = "chaos"

    def __init__(self, control_path: str | None):
        self.control_path = control_path
        self.rng = random.Random()

    def _control(self) -> dict:
        if not self.control_path:
            return {}
        try:
            return orjson.loads(Path(self.control_path).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def describe(self, images: list) -> list[str]:
        control = self._control()
        mode = control.get("mode", "ok")
        if mode == "fail":
            raise RuntimeError("chaos: the captioner is failing")
        if mode == "slow":
            low, high = control.get("slow_s", (0.2, 2.0))
            time.sleep(self.rng.uniform(low, high))
        out = []
        for img in images:
            r, g, b = img.convert("RGB").resize((1, 1)).getpixel((0, 0))
            out.append(f"objects: picture. scene: {img.width}x{img.height}, mean colour rgb({r}, {g}, {b}).")
        return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does, before torch is imported
    parser = argparse.ArgumentParser(prog="python -m affectstream.bench.chaos_worker")
    parser.add_argument("--role", choices=("caption", "classify", "all"), required=True)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)

    import faust

    import affectstream.model.captioners as captioners
    from affectstream.streaming.worker.app import create_app
    from affectstream.streaming.worker.settings import Settings

    control = os.environ.get(CONTROL_ENV)
    captioners.build_captioner = lambda *spec, **options: SteeredCaptioner(control)  # whatever the spec
    settings = Settings.load({"web_enabled": False})  # no worker of the chaos run serves the dashboard
    app = create_app(settings, args.role)
    print(f"chaos worker role={args.role} app={settings.kafka.app_id} captioner control={control}", file=sys.stderr)
    sys.argv = sys.argv[:1]  # faust's Worker reads argv: nothing of ours for it there
    faust.Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
