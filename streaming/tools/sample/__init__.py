"""The bundled demo sample: ``POSTS`` (``posts.jsonl``, written by ``make_sample``) and ``BRANDS_FILE``
(``brands.yaml``: the sample's tracked brands, for mention detection)."""
from pathlib import Path

POSTS = Path(__file__).resolve().parent / "posts.jsonl"
BRANDS_FILE = Path(__file__).resolve().parent / "brands.yaml"
