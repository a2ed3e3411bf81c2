from hypothesis import given
from hypothesis import strategies as st

from affectstream.training.readability import is_content_word, rationale_readability


def test_a_hand_counted_example():
    r = rationale_readability([["refund", "the", "!"], ["is", "slow"], []])
    assert r["posts"] == 3 and r["words_per_post"] == 5 / 3
    assert r["stopword_share"] == 3 / 5              # "the", "!", "is"
    assert r["content_first"] == 1 / 2               # "refund" leads; "is" leads; the empty one is not counted


def test_content_words():
    assert is_content_word("#Refund") and is_content_word("outage!") and is_content_word("@acme")
    assert not is_content_word("The") and not is_content_word("...") and not is_content_word("")


@given(st.lists(st.lists(st.text(max_size=12), max_size=6), max_size=8))
def test_shares_are_shares(rationales):
    r = rationale_readability(rationales)
    assert 0.0 <= r["stopword_share"] <= 1.0 and 0.0 <= r["content_first"] <= 1.0


def test_an_emoticon_is_a_reason_and_a_function_word_is_not():
    assert is_content_word(":(") and is_content_word(":-D")
    assert not is_content_word("it's") and not is_content_word("!!!")


def test_a_lone_letter_left_by_a_marked_brand_is_not_a_reason():
    assert not is_content_word("»'s") and not is_content_word("s") and is_content_word("5g")
