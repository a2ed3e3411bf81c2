"""Social-text normalisation (`model.normalize`): what each rule does, the markers and marked targets it
keeps, properties (never raises, idempotent), and that training, serving and rationales all read the
normalised text."""
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.model.config import AlignedConfig
from affectstream.model.normalize import normalize_text
from affectstream.model.predictor import BatchPredictor
from affectstream.model.targets import TARGET_FORMAT, TargetInput, mark_target, marker_spans, normalise_spans
from affectstream.model.tokenization import SOURCE_TEXT, encode_pairs
from tests.tiny_models import bert_tokenizer, tiny_classifier


def test_emoji_become_their_names_as_separate_words():
    assert normalize_text("lol😂") == "lol face with tears of joy"
    assert normalize_text("great 👍🏽!") == "great thumbs up medium skin tone !"


def test_every_emoji_the_package_knows_becomes_words():
    import emoji

    left = [e for e in emoji.EMOJI_DATA if emoji.emoji_count(normalize_text(f"a{e}b"))]
    assert left == []


def test_handles_and_urls_become_placeholders_but_emails_stay():
    assert normalize_text("@acme_help fix it https://t.co/AbC?x=1 or www.acme.com") == "@user fix it http or http"
    assert normalize_text("write to help@acme.com") == "write to help@acme.com"


def test_letters_repeated_three_times_or_more_become_two():
    assert normalize_text("soooo goooood!!! Yesss 100000") == "soo good!!! Yess 100000"
    assert normalize_text("good") == "good"


def test_whitespace_is_collapsed_and_trimmed():
    assert normalize_text("  a \n\t b  ") == "a b"


def test_none_leaves_text_exactly_as_it_is():
    text = "  @bob soooo 😂 http://x  "
    assert normalize_text(text, "none") == text


def test_unknown_scheme_is_an_error():
    with pytest.raises(ValueError, match="social-v9"):
        normalize_text("x", "social-v9")


def test_a_marked_handle_is_kept_and_the_other_handles_replaced():
    marked = mark_target("@acme your app crashed again @bob 😡", "acme", [(0, 5)])
    assert normalize_text(marked, marked=TARGET_FORMAT) == "« @acme » your app crashed again @user enraged face"


def test_the_not_in_text_prefix_is_kept_verbatim():
    marked = mark_target("sooo slow http://x.co", "Acme  Corp 😀")
    assert normalize_text(marked, marked=TARGET_FORMAT) == "«=Acme Corp 😀» soo slow http"


def test_unmarked_scheme_does_not_protect_marker_characters():
    assert normalize_text("« @acme »") == "« @user »"


pieces = st.sampled_from(list("aoslx @:/.w_h«»=\n😂👍🏽💤 ") + ["http://", "www.", "@acme", "🇫🇷", "\u200d", "\ufe0f"])
texts = st.lists(pieces, max_size=30).map("".join) | st.text(max_size=60)


@given(texts)
def test_normalizing_never_raises_and_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    marked_once = normalize_text(text, marked=TARGET_FORMAT)
    assert normalize_text(marked_once, marked=TARGET_FORMAT) == marked_once


@given(texts, st.text(min_size=1, max_size=12), st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=3))
def test_markers_and_marked_mentions_survive_normalization(text, target, spans):
    marked = mark_target(text, target, spans)
    normalized = normalize_text(marked, marked=TARGET_FORMAT)
    before = [marked[s:e] for s, e in marker_spans(marked)]
    after = [normalized[s:e] for s, e in marker_spans(normalized)]
    assert after == before
    for start, end in normalise_spans(spans, len(text)):
        mention = text[start:end]
        if "«" not in mention and "»" not in mention:   # a mention holding a marker character is ambiguous
            assert f"« {mention} »" in normalized       # the mention exactly as the post wrote it


def test_encode_pairs_normalises_the_text_side_only():
    tokenizer = bert_tokenizer()
    description = 'objects: phone. text in image: "sooo @bob". scene: dark'
    batch = encode_pairs(tokenizer, ["sooo happy 😂 @bob"], [description], 64, normalization="social-v1")
    assert batch.texts == ["soo happy face with tears of joy @user"]
    assert batch.descriptions == [description]
    unk = tokenizer.unk_token_id
    assert unk not in batch.input_ids[0].tolist()
    assert unk in encode_pairs(tokenizer, ["sooo happy 😂"], [""], 64).input_ids[0].tolist()


@given(texts)
def test_every_text_token_offset_is_a_valid_span_of_the_normalised_text(text):
    tokenizer = bert_tokenizer()
    batch = encode_pairs(tokenizer, [text], ["a photo"], 64, normalization="social-v1")
    normalized = batch.texts[0]
    for col in range(batch.input_ids.shape[1]):
        if batch.source[0, col] == SOURCE_TEXT and batch.selectable[0, col]:
            start, end = batch.offsets[0, col].tolist()
            assert 0 <= start < end <= len(normalized)
            assert normalized[start:end].strip() == normalized[start:end]


def test_rationale_words_are_words_of_the_normalised_text():
    model, tokenizer = tiny_classifier(top_k=16, text_normalization="social-v1")
    predictor = BatchPredictor(model, tokenizer, model.config, device="cpu", dtype="fp32")
    text = "@acme sooo broken 😡😡 https://t.co/xyz"
    normalized = normalize_text(text)
    [prediction] = predictor.predict([(text, "")])
    words = [w.text for w in prediction.rationale if w.source == "text"]
    assert words and all(word in normalized.split() or word in normalized for word in words)
    assert not any(w in ("😡", "https", "@acme", "sooo") for w in words)
    [target] = predictor.predict_targets([TargetInput(text, "", "acme", ((0, 5),))])
    assert target.label in model.config.sentiment_labels


def test_a_model_directory_written_before_the_field_reads_text_unchanged(tmp_path):
    config = AlignedConfig(encoder="x", encoder_config={"model_type": "bert", "hidden_size": 32})
    data = config.to_dict()
    data.pop("text_normalization")
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert AlignedConfig.from_pretrained(tmp_path).text_normalization == "none"
    assert AlignedConfig(text_normalization="social-v1").text_normalization == "social-v1"
    with pytest.raises(ValueError, match="text_normalization"):
        AlignedConfig(text_normalization="lowercase")
