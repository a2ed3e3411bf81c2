"""Rationale words from real tokenizer output (WordPiece, byte-level BPE, SentencePiece Unigram: every encoder
family of tests/tiny_models.FAMILIES), plus properties."""
import pytest
from hypothesis import given, strategies as st

from affectstream.model.rationale import RationaleWord, TokenSpan, merge_to_words, word_at
from affectstream.model.tokenization import SOURCE_NAMES, encode_pairs
from tests.tiny_models import FAMILIES, bert_tokenizer


@pytest.fixture(scope="module", params=list(FAMILIES))
def tokenizer(request, tmp_path_factory):
    make_tokenizer, _ = FAMILIES[request.param]
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def spans_for_all_tokens(tokenizer, text, description):
    batch = encode_pairs(tokenizer, [text], [description], 64)
    spans = []
    for col in range(batch.input_ids.shape[1]):
        if batch.selectable[0, col]:
            start, end = batch.offsets[0, col].tolist()
            spans.append(TokenSpan(SOURCE_NAMES[int(batch.source[0, col])], start, end, score=col / 100))
    return spans


def test_subword_tokens_merge_into_whole_words(tokenizer):
    text, description = "Unbelievably disappointing #acmefail", "objects: espresso. text in image: \"worst monday\""
    words = merge_to_words(spans_for_all_tokens(tokenizer, text, description), {"text": text, "image": description})
    text_words = {w.text for w in words if w.source == "text"}
    image_words = {w.text for w in words if w.source == "image"}
    assert text_words == {"Unbelievably", "disappointing", "#acmefail"}
    assert image_words == {"espresso", "worst", "monday"}  # the describer's field labels are never selected


def test_same_word_on_both_sides_keeps_both_sources(tokenizer):
    text, description = "sad day", "a sad face"
    words = merge_to_words(spans_for_all_tokens(tokenizer, text, description), {"text": text, "image": description})
    assert {(w.text, w.source) for w in words if w.text == "sad"} == {("sad", "text"), ("sad", "image")}


def test_duplicates_keep_best_score_and_order_by_score():
    text = "love love hate"
    spans = [TokenSpan("text", 0, 4, 0.2), TokenSpan("text", 5, 9, 0.9), TokenSpan("text", 10, 14, 0.5)]
    words = merge_to_words(spans, {"text": text, "image": ""})
    assert words == [RationaleWord("love", 0.9, "text"), RationaleWord("hate", 0.5, "text")]


def test_punctuation_only_tokens_are_dropped():
    words = merge_to_words([TokenSpan("text", 0, 3, 0.9)], {"text": "!!! ok", "image": ""})
    assert words == []


@pytest.mark.parametrize("emoticon", [":)", ":'(", ":-(", ";)", ":D", "<3", "^_^", "-_-", ":/"])
def test_an_emoticon_the_model_kept_is_shown_whole(emoticon):
    text = f"bad mood. {emoticon}"
    start = text.index(emoticon)
    words = merge_to_words([TokenSpan("text", start, start + 1, 0.9)], {"text": text, "image": ""})
    assert words == [RationaleWord(emoticon, 0.9, "text")]


def test_display_word_strips_punctuation_but_keeps_emoticons():
    from affectstream.model.rationale import display_word

    assert [display_word(w) for w in ("(yes)", "hi!", "#fail!", "!!!", "...", ":)", "</3")] == \
        ["yes", "hi", "#fail", "", "", ":)", "</3"]


@given(st.text(max_size=60), st.integers(-5, 80), st.integers(-5, 80))
def test_word_at_always_returns_a_valid_span_containing_the_token(text, start, end):
    lo, hi = word_at(text, start, end)
    assert 0 <= lo <= hi <= len(text)
    assert not any(ch.isspace() for ch in text[lo:hi])


@given(st.text(max_size=50), st.text(max_size=50),
       st.lists(st.tuples(st.sampled_from(["text", "image"]), st.integers(0, 60), st.integers(0, 60),
                          st.floats(0, 1)), max_size=20))
def test_merge_never_crashes_and_is_deduplicated_and_sorted(text, description, raw_spans):
    spans = [TokenSpan(src, min(a, b), max(a, b), score) for src, a, b, score in raw_spans]
    words = merge_to_words(spans, {"text": text, "image": description})
    keys = [(w.source, w.text.lower()) for w in words]
    assert len(keys) == len(set(keys))
    assert [w.score for w in words] == sorted((w.score for w in words), reverse=True)
    for w in words:
        assert w.text and w.text in (text if w.source == "text" else description)


@given(st.lists(st.tuples(st.text(max_size=80), st.text(max_size=80)), min_size=1, max_size=6))
def test_fast_pair_encoding_matches_the_transformers_call(pairs):
    from affectstream.model.tokenization import encode_pairs as fast

    tokenizer = bert_tokenizer_cached()
    texts, descriptions = [t for t, _ in pairs], [d for _, d in pairs]
    ours = fast(tokenizer, texts, descriptions, 32)
    ref = tokenizer(texts, descriptions, truncation="longest_first", max_length=32, padding=True,
                    return_offsets_mapping=True, return_tensors="pt")
    assert ours.input_ids.tolist() == ref["input_ids"].tolist()
    assert ours.attention_mask.tolist() == ref["attention_mask"].tolist()
    assert ours.token_type_ids.tolist() == ref["token_type_ids"].tolist()
    assert ours.offsets.tolist() == ref["offset_mapping"].tolist()
    for row in range(len(pairs)):
        expected = [-1 if s is None else s for s in ref.sequence_ids(row)]
        assert ours.source[row].tolist() == expected


_BERT = []


def bert_tokenizer_cached():
    if not _BERT:
        _BERT.append(bert_tokenizer())
    return _BERT[0]


def selected_words(tokenizer, text, description, selection):
    batch = encode_pairs(tokenizer, [text], [description], 64, selection=selection)
    spans = [TokenSpan(SOURCE_NAMES[int(batch.source[0, col])], *batch.offsets[0, col].tolist(), score=0.5)
             for col in range(batch.input_ids.shape[1]) if batch.selectable[0, col]]
    return {w.text for w in merge_to_words(spans, {"text": text, "image": description})}


def test_content_selection_leaves_only_content_words_selectable(tokenizer):
    text, description = "The refund is so slow!!! and it's not ok :(", "objects: a laptop. scene: the office"
    assert selected_words(tokenizer, text, description, "content") == {"refund", "slow", ":(", "laptop", "office"}
    assert {"The", "is", "so", "not"} <= selected_words(tokenizer, text, description, "all")


def test_a_post_of_function_words_only_keeps_every_token(tokenizer):
    assert selected_words(tokenizer, "it is what it is", "", "content") == {"it", "is", "what"}


def test_content_selection_is_per_row(tokenizer):
    batch = encode_pairs(tokenizer, ["it is what it is", "great refund"], ["", ""], 64, selection="content")
    plain = encode_pairs(tokenizer, ["it is what it is", "great refund"], ["", ""], 64)
    assert batch.selectable[0].tolist() == plain.selectable[0].tolist()
    assert batch.selectable[1].sum() <= plain.selectable[1].sum()


def test_an_unknown_selection_is_refused():
    with pytest.raises(ValueError, match="selection"):
        encode_pairs(bert_tokenizer_cached(), ["a"], [""], 16, selection="nouns")


@given(st.lists(st.tuples(st.text(max_size=60), st.text(max_size=60)), min_size=1, max_size=5))
def test_content_selection_is_a_subset_and_never_empties_a_post(pairs):
    tokenizer = bert_tokenizer_cached()
    texts, descriptions = [t for t, _ in pairs], [d for _, d in pairs]
    plain = encode_pairs(tokenizer, texts, descriptions, 32)
    content = encode_pairs(tokenizer, texts, descriptions, 32, selection="content")
    assert not (content.selectable & ~plain.selectable).any()
    assert content.selectable.any(dim=1).tolist() == plain.selectable.any(dim=1).tolist()
