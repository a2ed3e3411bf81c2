import os

import pytest
from hypothesis import settings as hypothesis_settings

# The machines running this suite are shared: a per-example time limit measures the neighbours, not the code
hypothesis_settings.register_profile("shared-machine", deadline=None)
hypothesis_settings.load_profile("shared-machine")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

import importlib.util

pytest_plugins = ["tests.servers"] if importlib.util.find_spec("tests.servers") else []


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random aligned model (BERT-shaped, real MiniLM tokenizer), as a deployed directory."""
    from tests.tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny", kind="bert", top_k=4)
