"""affectstream: streaming multimodal sentiment with top-K rationales.

One import namespace for the repository's folders (pyproject maps them in):

- ``affectstream.model``      (model/)      the method: aligned classifier, losses, rationales, captioners
- ``affectstream.training``   (training/)   offline: loaders, training loop, evaluation, export
- ``affectstream.streaming``  (streaming/)  ``worker`` (what production runs), ``monitor`` (the operators'
  view), ``tools`` (embedded servers, demo, producer, tail)
- ``affectstream.bench``      (bench/)      benchmarks and the reliability runner
- ``affectstream.cli``                      the ``affectstream`` command, on top of all of them
"""

__all__ = ["Analyzer"]


def __getattr__(name: str):
    # ``from affectstream import Analyzer``: loaded on first use, so ``import affectstream`` stays cheap
    # (no torch) and the namespace imports nothing of ours until asked (PEP 562)
    if name == "Analyzer":
        from affectstream.analyzer import Analyzer

        return Analyzer
    raise AttributeError(f"module 'affectstream' has no attribute {name!r}")
