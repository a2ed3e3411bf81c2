"""The bundled demo sample: ``POSTS`` (``posts.jsonl``, written by ``make_sample``)."""
from pathlib import Path

POSTS = Path(__file__).resolve().parent / "posts.jsonl"
