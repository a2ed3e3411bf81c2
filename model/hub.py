"""Whether this process may reach the Hugging Face Hub.

A production command downloads what it names into the Hub's cache (a caption worker with
``vlm:Salesforce/blip-image-captioning-large``, ``train --preset mvsa-roberta``), so importing affectstream
never turns the Hub off. The commands that run only the models shipped as Python packages (``demo``,
``bench``) call ``packaged_models_only()`` first: nothing they load comes from the Hub, and on a host
without internet no library waits on the Hub's timeouts. The user's own ``HF_HUB_OFFLINE`` (0 or 1) wins.
"""
from __future__ import annotations

import os
import sys

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of its boolean variables


def packaged_models_only() -> bool:
    """Hub off for this process and every process it starts, unless ``HF_HUB_OFFLINE`` is set already.
    Returns whether the Hub is off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    offline = os.environ["HF_HUB_OFFLINE"].strip().upper() in TRUE_VALUES
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported already: it read the variable then, and its readers ask it at call time
        constants.HF_HUB_OFFLINE = offline
    return offline
