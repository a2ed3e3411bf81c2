"""affectstream: streaming multimodal sentiment with top-K rationales.

One import namespace for the repository's folders (pyproject maps them in):

- ``affectstream.model``      (model/)      the method: aligned classifier, losses, rationales, captioners
- ``affectstream.training``   (training/)   offline: loaders, training loop, evaluation, export
- ``affectstream.streaming``  (streaming/)  ``worker`` (what production runs), ``monitor`` (the operators'
  view), ``tools`` (embedded servers, demo, producer, tail)
- ``affectstream.bench``      (bench/)      benchmarks and the reliability runner
- ``affectstream.cli``                      the ``affectstream`` command, on top of all of them
"""

import importlib

__all__ = ["Analyzer"]


def __getattr__(name: str):
    # ``from affectstream import Analyzer``: loaded on first use (PEP 562), so ``import affectstream`` stays
    # cheap (no torch) and the namespace root imports nothing of ours: the CLI layer's analyzer sits above it
    if name == "Analyzer":
        return importlib.import_module("affectstream.analyzer").Analyzer
    raise AttributeError(f"module 'affectstream' has no attribute {name!r}")
