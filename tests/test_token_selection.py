"""AlignedConfig.token_selection = "content": the served rationale (per post and per target) holds content words
only, on every backend's shared encoding path; old directories keep choosing among every token."""
import json

import pytest

from affectstream.model.config import AlignedConfig
from affectstream.model.predictor import BatchPredictor
from affectstream.model.targets import TargetInput
from affectstream.training.readability import is_content_word
from tests.tiny_models import tiny_classifier

POSTS = ["the refund is so slow and it is not ok", "@acme support was great, thanks!!!", "i am at the airport with my kids"]


@pytest.fixture(scope="module")
def predictors():
    out = {}
    for selection in ("all", "content"):
        model, tokenizer = tiny_classifier(top_k=16, token_selection=selection, text_normalization="social-v1")
        out[selection] = BatchPredictor(model, tokenizer, model.config, device="cpu", dtype="fp32")
    return out


def test_served_rationales_hold_content_words_only(predictors):
    for prediction in predictors["content"].predict([(p, "") for p in POSTS]):
        assert prediction.rationale and all(is_content_word(w.text) for w in prediction.rationale)
    # the random tiny model with every token selectable shows function words: the test can fail
    shown = [w.text for p in predictors["all"].predict([(p, "") for p in POSTS]) for w in p.rationale]
    assert any(not is_content_word(w) for w in shown)


def test_target_rationales_hold_content_words_only(predictors):
    text = "switched from acme to nimbus, nimbus is so much better"
    targets = [TargetInput(text, "", "acme", ((14, 18),)), TargetInput(text, "", "nimbus", ((22, 28),))]
    for prediction in predictors["content"].predict_targets(targets):
        assert prediction.rationale and all(is_content_word(w.text) for w in prediction.rationale)


def test_the_setting_is_validated_and_old_directories_choose_among_every_token(tmp_path):
    with pytest.raises(ValueError, match="token_selection"):
        AlignedConfig(token_selection="nouns")
    data = AlignedConfig(encoder="x", encoder_config={"model_type": "bert", "hidden_size": 32}).to_dict()
    data.pop("token_selection")
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert AlignedConfig.from_pretrained(tmp_path).token_selection == "all"


def test_the_marked_target_is_never_its_own_reason():
    from affectstream.model.targets import TARGET_FORMAT

    model, tokenizer = tiny_classifier(top_k=16, token_selection="content", target_format=TARGET_FORMAT)
    predictor = BatchPredictor(model, tokenizer, model.config, device="cpu", dtype="fp32")
    text = "acme support was awful but nimbus fixed it"
    [acme, nimbus] = predictor.predict_targets(
        [TargetInput(text, "", "acme", ((0, 4),)), TargetInput(text, "", "nimbus", ((27, 33),))])
    assert "acme" not in {w.text for w in acme.rationale} and "nimbus" not in {w.text for w in nimbus.rationale}
    [alone] = predictor.predict_targets([TargetInput("acme", "", "acme", ((0, 4),))])
    assert alone.label in ("negative", "neutral", "positive")
