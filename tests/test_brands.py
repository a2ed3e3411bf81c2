"""The brands file: loading, validation (every error listed), caps, Unicode rules, and `affectstream brands check`."""
from __future__ import annotations

import orjson
import pytest
import yaml
from click.testing import CliRunner

from affectstream.cli import main
from affectstream.streaming.tools.sample import BRANDS_FILE
from affectstream.streaming.worker.brands import (
    MAX_BRANDS, MAX_TERMS_PER_BRAND, BrandsFileError, load_catalog, parse_catalog,
)


def errors_of(doc) -> list[str]:
    with pytest.raises(BrandsFileError) as info:
        parse_catalog(doc)
    return info.value.errors


def test_the_samples_brands_file_loads_with_every_kind_of_term():
    catalog = load_catalog(str(BRANDS_FILE))
    assert [b.id for b in catalog.brands] == ["acme", "nimbus", "voltcar", "skyline"]
    acme = catalog.by_id["acme"]
    assert acme.name == "Acme"
    assert {t.kind for t in acme.terms} == {"alias", "handle", "hashtag", "cashtag"}
    assert "$ACME" in {t.text for t in acme.terms}
    assert catalog.by_id["nimbus"].exclusions == ("nimbus cloud", "nimbus clouds")


def test_json_and_yaml_files_load_the_same_catalog(tmp_path):
    doc = {"brands": [{"id": "acme", "name": "Acme", "aliases": ["acme", {"alias": "ACM", "case_sensitive": True}],
                       "handles": ["acme"], "hashtags": ["#acme"], "cashtags": ["ACME"]}]}
    (tmp_path / "b.json").write_bytes(orjson.dumps(doc))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    a, b = load_catalog(str(tmp_path / "b.json")), load_catalog(str(tmp_path / "b.yaml"))
    assert a.brands == b.brands
    # sigils are added when left out; the case rule is kept per alias
    assert [(t.text, t.case_sensitive) for t in a.brands[0].terms] == [
        ("acme", False), ("ACM", True), ("@acme", False), ("#acme", False), ("$ACME", False)]


def test_ten_thousand_brands_load_and_one_more_is_a_clear_error():
    brands = [{"id": f"b{i}", "aliases": [f"brand{i}", f"brand{i} co"]} for i in range(MAX_BRANDS)]
    assert len(parse_catalog({"brands": brands}).brands) == MAX_BRANDS
    errors = errors_of({"brands": brands + [{"id": "extra", "aliases": ["extra"]}]})
    assert errors == [f"{MAX_BRANDS + 1} brands, more than the cap of {MAX_BRANDS}"]


def test_every_error_is_listed_at_once_with_its_brand():
    errors = errors_of({"brands": [
        {"id": "acme", "aliases": ["acme"]},
        {"id": "acme", "aliases": ["acme two"]},                       # duplicate id
        {"id": "empty", "aliases": ["", "   "]},                       # empty aliases
        {"id": "clash", "aliases": ["ACME"]},                          # same alias as brand acme
        {"id": "twice", "aliases": ["twice", "Twice"]},                # same alias twice in one brand
        {"id": "typo", "alias": ["x"]},                                # unknown key
        {"id": "Bad Id", "aliases": ["y"]},
        {"id": "_all", "aliases": ["z"]},                              # the reserved aggregate bucket
        {"id": "none"},                                                # no terms
    ]})
    text = "\n".join(errors)
    assert "brand #2 (acme): duplicate id" in text
    assert "brand empty: alias '': empty" in text and "brand empty: alias '   ': empty" in text
    assert "brand clash: alias 'ACME' clashes with 'acme' of brand acme" in text
    assert "brand twice: alias 'Twice' listed twice" in text
    assert "brand typo: unknown keys alias" in text
    assert "brand #7: id must be lowercase" in text and "brand #8: id must be lowercase" in text
    assert "brand none: no aliases, handles, hashtags or cashtags" in text
    assert len(errors) == 9


@pytest.mark.parametrize("term, problem", [
    ("++", "must contain a letter or a digit"),
    ("ac\u200bme", "invisible"),
    ("ac\u00adme", "invisible"),
    ("line\nbreak", "control character or a line break"),
    ("nul\x00", "control character"),
    ("\u0430cme", "mixes letters of several scripts"),   # Cyrillic а + Latin cme: a look-alike
    ("x" * 101, "longer than 100"),
])
def test_terms_that_would_break_matching_are_errors(term, problem):
    (error,) = errors_of({"brands": [{"id": "b", "aliases": [term]}]})
    assert problem in error


@pytest.mark.parametrize("kind, term", [("handles", "@two words"), ("hashtags", "#a.b"), ("cashtags", "$a b")])
def test_handles_hashtags_and_cashtags_must_be_one_word(kind, term):
    (error,) = errors_of({"brands": [{"id": "b", kind: [term]}]})
    assert "followed by letters, digits" in error


def test_regex_special_characters_and_one_other_script_are_valid_terms():
    catalog = parse_catalog({"brands": [{"id": "cpp", "aliases": ["c++", "a.b", "(x)", "[y]*", "a|b"]},
                                        {"id": "sony", "aliases": ["ソニー", "Сбербанк"]}]})
    assert catalog.n_terms == 7


def test_too_many_terms_and_a_useless_exclusion_are_errors():
    (error,) = errors_of({"brands": [{"id": "b", "aliases": [f"a{i}" for i in range(MAX_TERMS_PER_BRAND + 1)]}]})
    assert "more than the cap" in error
    (error,) = errors_of({"brands": [{"id": "apple", "aliases": ["apple"], "exclude": ["pear tart"]}]})
    assert "exclusion 'pear tart' contains none of the brand's terms" in error


def test_unreadable_and_malformed_files_are_errors(tmp_path):
    for name, data in [("a.json", b"{not json"), ("a.yaml", b"brands: [\n"), ("a.yml", b"\xff\xfe"),
                       ("a.json", b"[]"), ("a.json", b'{"brandz": []}')]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BrandsFileError):
            load_catalog(str(tmp_path / name))
    with pytest.raises(BrandsFileError, match="cannot read"):
        load_catalog(str(tmp_path / "missing.json"))


def test_brands_check_exits_0_with_a_summary():
    result = CliRunner().invoke(main, ["brands", "check", str(BRANDS_FILE)])
    assert result.exit_code == 0, result.output
    assert "ok, 4 brands, 24 terms (12 aliases, 5 handles, 5 hashtags, 2 cashtags), 4 exclusions" in result.output


def test_brands_check_exits_2_listing_every_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("brands:\n  - {id: acme, aliases: [acme]}\n  - {id: acme, aliases: ['']}\n"
                    "  - {id: other, aliases: [ACME]}\n")
    result = CliRunner().invoke(main, ["brands", "check", str(path)])
    assert result.exit_code == 2
    assert "2 error(s)" in result.output
    assert "duplicate id" in result.output and "clashes with 'acme' of brand acme" in result.output
