import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

import importlib.util

pytest_plugins = ["tests.servers"] if importlib.util.find_spec("tests.servers") else []


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random aligned model (BERT-shaped, real MiniLM tokenizer), as a deployed directory."""
    from tests.tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny", kind="bert", top_k=4)
