"""Tracked brands: the brands file, loaded and validated into a ``BrandCatalog``.

The file is JSON (``.json``) or YAML (``.yaml`` / ``.yml``; any other name is read as JSON, then YAML)::

    brands:                      # or the list alone, at the top level
      - id: acme                 # required: lowercase [a-z0-9][a-z0-9_.-]*, at most 64 chars, not "_all"
        name: Acme               # display name, what the model is told the target is (default: the id)
        aliases: [acme, acme corp, {alias: ACM, case_sensitive: true}]
        handles: ["@acme", "@acme_support"]     # the sigil may be left out: "acme" means "@acme"
        hashtags: ["#acme"]
        cashtags: ["$ACME"]
        case_sensitive: false    # the default for this brand's terms (default false)
        exclude: ["acme pie"]    # phrases in which this brand's terms do not count

Rules (what ``affectstream brands check FILE`` enforces; every error is listed, with the brand it is in):

- ids are unique; a brand has at least one term (alias, handle, hashtag or cashtag); unknown keys are errors
  (a typo such as ``alias:`` is not silently ignored).
- Unicode: every term, exclusion and every text searched is NFKC-normalised and casefolded (``Ａｃｍｅ``,
  ``ACME`` and ``acme`` are one alias); a ``case_sensitive`` term is NFKC-normalised only (use it for short
  acronyms: ``GE`` must not match "ge"). Zero-width and other invisible format characters (U+200B…U+200F,
  U+2060…U+2064, U+FEFF, U+00AD, U+034F, U+180E) are removed from texts before matching (``ac\u200bme``
  is a mention), and are an error inside a term.
- Look-alike letters from other scripts are NOT folded: Cyrillic ``асме`` is not Latin ``acme`` (folding
  confusables would turn ordinary words of other languages into mentions, and a spoofed name is not a
  mention of the brand). A term mixing letters of two scripts (``аcme`` with a Cyrillic ``а``) is an
  error: it is almost always a look-alike typed by mistake. Terms in one other script (``ソニー``) are fine.
- Words are matched whole: a term matches only where the characters just before and after it are not word
  characters (``str.isalnum`` or ``_``): ``acme's`` and ``#acme`` contain a mention of the alias ``acme``;
  ``acmes``, ``acmecorp`` and ``my_acme`` do not (list plurals as aliases when they should count). Runs of
  white space inside a term match any run of white space in the text.
- A term is at most ``MAX_TERM_CHARS`` characters and must hold a letter or a digit; regex-special
  characters are literal (``c++``, ``a.b``, ``(x)`` match exactly those characters). Control characters and
  line breaks are errors. Handles are ``@`` + letters, digits, ``_`` or ``.``; hashtags ``#`` + letters,
  digits or ``_``; cashtags ``$`` + letters, digits, ``.`` or ``_``.
- Clashes: a term (compared casefolded) belongs to one brand only; the same term twice in one brand is an
  error too.
- Exclusions: a mention lying inside an occurrence of one of its brand's exclusion phrases (matched with
  the same rules, case-insensitively) does not count. Each exclusion must contain one of its brand's terms.
- Caps: at most ``MAX_BRANDS`` (10,000) brands, ``MAX_TERMS_PER_BRAND`` (64) terms and
  ``MAX_EXCLUSIONS_PER_BRAND`` (64) exclusions per brand; more is an error.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from affectstream.streaming.worker.redis_keys import ALL_BRANDS

MAX_BRANDS = 10_000
MAX_TERMS_PER_BRAND = 64
MAX_EXCLUSIONS_PER_BRAND = 64
MAX_TERM_CHARS = 100
MAX_NAME_CHARS = 128
MAX_FILE_BYTES = 64 * 1024 * 1024
ID_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
KINDS = {"aliases": "alias", "handles": "handle", "hashtags": "hashtag", "cashtags": "cashtag"}
SIGILS = {"handle": "@", "hashtag": "#", "cashtag": "$"}
_BODY = {"handle": re.compile(r"[\w.]+"), "hashtag": re.compile(r"\w+"), "cashtag": re.compile(r"[\w.]+")}
BRAND_KEYS = {"id", "name", "case_sensitive", "exclude", *KINDS}
# invisible characters removed from texts before matching (and refused inside terms)
ZERO_WIDTH = frozenset("\u00ad\u034f\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff")


class BrandsFileError(ValueError):
    """The brands file cannot be used; ``errors`` lists every problem found, one line each."""

    def __init__(self, path: str, errors: list[str]):
        self.path = path
        self.errors = errors
        super().__init__(f"{path}: {len(errors)} error(s): " + "; ".join(errors[:5]))


@dataclass(frozen=True)
class Term:
    """One thing that names a brand in a text."""
    text: str              # as written in the file (``@acme`` for a handle given as ``acme``)
    kind: str              # alias | handle | hashtag | cashtag
    case_sensitive: bool
    key: str               # what is searched for: NFKC (+ casefold unless case_sensitive), white space collapsed


@dataclass(frozen=True)
class Brand:
    id: str
    name: str
    terms: tuple[Term, ...]
    exclusions: tuple[str, ...] = ()  # normalised (``fold``) phrases


@dataclass(frozen=True)
class BrandCatalog:
    brands: tuple[Brand, ...]
    source: str = ""
    by_id: dict[str, Brand] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id.update({b.id: b for b in self.brands})

    @property
    def n_terms(self) -> int:
        return sum(len(b.terms) for b in self.brands)

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for b in self.brands:
            for t in b.terms:
                kinds[t.kind] = kinds.get(t.kind, 0) + 1
        parts = ", ".join(f"{kinds.get(k, 0)} {k}{'es' if k == 'alias' else 's'}"
                          for k in ("alias", "handle", "hashtag", "cashtag"))
        n_excl = sum(len(b.exclusions) for b in self.brands)
        return f"{len(self.brands)} brands, {self.n_terms} terms ({parts}), {n_excl} exclusions"


def strip_invisible(text: str) -> str:
    return "".join(c for c in text if c not in ZERO_WIDTH) if not text.isascii() else text


def fold(text: str, case_sensitive: bool = False) -> str:
    """The normal form terms and texts are compared in: NFKC, casefolded unless ``case_sensitive``."""
    text = unicodedata.normalize("NFKC", strip_invisible(text))
    return text if case_sensitive else unicodedata.normalize("NFKC", text.casefold())


def file_signature(path: str) -> tuple | None:
    """What identifies the file's content on disk (resolved path, mtime, size); None when unreadable."""
    try:
        real = Path(path).resolve()
        st = os.stat(real)
        return str(real), st.st_mtime_ns, st.st_size
    except OSError:
        return None


def load_catalog(path: str) -> BrandCatalog:
    """Read and validate a brands file; raises BrandsFileError listing every problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BrandsFileError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise BrandsFileError(path, [f"file is {len(data)} bytes, more than {MAX_FILE_BYTES}"])
    try:
        obj = _decode(path, data)
    except ValueError as e:
        raise BrandsFileError(path, [str(e)]) from None
    return parse_catalog(obj, source=path)


def _decode(path: str, data: bytes) -> Any:
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from None
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"not valid {'YAML' if suffix in ('.yaml', '.yml') else 'JSON or YAML'}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def parse_catalog(obj: Any, source: str = "<brands>") -> BrandCatalog:
    """A decoded brands document -> BrandCatalog; raises BrandsFileError listing every problem."""
    errors: list[str] = []
    if isinstance(obj, dict):
        extra = set(obj) - {"brands", "version"}
        if extra:
            errors.append(f"unknown top-level keys: {', '.join(sorted(map(str, extra)))}")
        obj = obj.get("brands")
    if not isinstance(obj, list):
        raise BrandsFileError(source, errors + ["expected a list of brands (or a mapping with a 'brands' list)"])
    if not obj:
        raise BrandsFileError(source, errors + ["no brands"])
    if len(obj) > MAX_BRANDS:
        raise BrandsFileError(source, errors + [f"{len(obj)} brands, more than the cap of {MAX_BRANDS}"])
    brands: list[Brand] = []
    owners: dict[str, tuple[str, str]] = {}  # casefolded key -> (brand id, term as written)
    seen_ids: dict[str, int] = {}
    for i, raw in enumerate(obj):
        bid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(bid, str) and bid in seen_ids:
            errors.append(f"brand #{i + 1} ({bid}): duplicate id (also brand #{seen_ids[bid] + 1})")
            continue
        if isinstance(bid, str):
            seen_ids[bid] = i
        brand = _parse_brand(i, raw, errors)
        if brand is None:
            continue
        for term in brand.terms:
            clash = fold(term.key)
            owner = owners.get(clash)
            if owner is None:
                owners[clash] = (brand.id, term.text)
            elif owner[0] == brand.id:
                errors.append(f"brand {brand.id}: {term.kind} {term.text!r} listed twice (as {owner[1]!r})")
            else:
                errors.append(f"brand {brand.id}: {term.kind} {term.text!r} clashes with {owner[1]!r} "
                              f"of brand {owner[0]} (a term names one brand only)")
        brands.append(brand)
    if errors:
        raise BrandsFileError(source, errors)
    catalog = BrandCatalog(tuple(brands), source=source)
    _check_exclusions(catalog, errors)
    if errors:
        raise BrandsFileError(source, errors)
    return catalog


def _parse_brand(i: int, raw: Any, errors: list[str]) -> Brand | None:
    where = f"brand #{i + 1}"
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return None
    bid = raw.get("id")
    if not isinstance(bid, str) or not ID_RE.fullmatch(bid) or bid == ALL_BRANDS:
        errors.append(f"{where}: id must be lowercase letters, digits, '_', '.', '-' (1-64 chars, not "
                      f"{ALL_BRANDS!r}), got {bid!r}")
        return None
    where = f"brand {bid}"
    n_errors = len(errors)
    extra = set(raw) - BRAND_KEYS
    if extra:
        errors.append(f"{where}: unknown keys {', '.join(sorted(map(str, extra)))} "
                      f"(allowed: {', '.join(sorted(BRAND_KEYS))})")
    name = raw.get("name", bid)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or _bad_chars(name):
        errors.append(f"{where}: name must be a printable string of 1-{MAX_NAME_CHARS} chars, got {name!r}")
    default_cs = raw.get("case_sensitive", False)
    if not isinstance(default_cs, bool):
        errors.append(f"{where}: case_sensitive must be true or false")
        default_cs = False
    terms: list[Term] = []
    for key, kind in KINDS.items():
        items = raw.get(key, [])
        if not isinstance(items, list):
            errors.append(f"{where}: {key} must be a list")
            continue
        for item in items:
            term = _parse_term(where, kind, item, default_cs, errors)
            if term is not None:
                terms.append(term)
    if not terms and len(errors) == n_errors:
        errors.append(f"{where}: no aliases, handles, hashtags or cashtags")
    if len(terms) > MAX_TERMS_PER_BRAND:
        errors.append(f"{where}: {len(terms)} terms, more than the cap of {MAX_TERMS_PER_BRAND}")
    exclusions = raw.get("exclude", [])
    if not isinstance(exclusions, list) or len(exclusions) > MAX_EXCLUSIONS_PER_BRAND:
        errors.append(f"{where}: exclude must be a list of at most {MAX_EXCLUSIONS_PER_BRAND} phrases")
        exclusions = []
    folded: list[str] = []
    for phrase in exclusions:
        problem = _term_problem(phrase, "alias")
        if problem:
            errors.append(f"{where}: exclusion {phrase!r}: {problem}")
        else:
            folded.append(_collapse(fold(phrase)))
    if len(errors) > n_errors:
        return None
    return Brand(id=bid, name=name.strip(), terms=tuple(terms), exclusions=tuple(folded))


def _parse_term(where: str, kind: str, item: Any, default_cs: bool, errors: list[str]) -> Term | None:
    case_sensitive = default_cs
    if isinstance(item, dict) and kind == "alias":
        extra = set(item) - {"alias", "case_sensitive"}
        case_sensitive = item.get("case_sensitive", default_cs)
        item = item.get("alias")
        if extra or not isinstance(case_sensitive, bool):
            errors.append(f"{where}: an alias mapping is {{alias: TEXT, case_sensitive: true|false}}")
            return None
    if not isinstance(item, str):
        errors.append(f"{where}: {kind} must be a string, got {type(item).__name__}")
        return None
    text = item.strip()
    sigil = SIGILS.get(kind)
    if sigil and not text.startswith(sigil):
        text = sigil + text
    problem = _term_problem(text, kind)
    if problem:
        errors.append(f"{where}: {kind} {item!r}: {problem}")
        return None
    return Term(text=text, kind=kind, case_sensitive=case_sensitive, key=_collapse(fold(text, case_sensitive)))


def _term_problem(text: Any, kind: str) -> str:
    """Why ``text`` cannot be a term of this kind ("" when it can)."""
    if not isinstance(text, str):
        return f"must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty"
    if len(text) > MAX_TERM_CHARS:
        return f"longer than {MAX_TERM_CHARS} chars"
    if any(c in ZERO_WIDTH for c in text):
        return "contains an invisible (zero-width or format) character"
    if _bad_chars(text) or any(c in "\n\r\t\v\f" for c in text):
        return "contains a control character or a line break"
    folded = fold(text)
    if not any(c.isalnum() for c in folded):
        return "must contain a letter or a digit"
    sigil = SIGILS.get(kind)
    if sigil and not _BODY[kind].fullmatch(folded[1:]):
        return f"a {kind} is {sigil} followed by letters, digits or _{' or .' if kind != 'hashtag' else ''}"
    scripts = {_script(c) for c in folded if c.isalpha()} - {"COMMON"}
    if len(scripts) > 1:
        return f"mixes letters of several scripts ({', '.join(sorted(scripts))}): a look-alike?"
    return ""


def _bad_chars(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") for c in text)


def _script(c: str) -> str:
    """A letter's script, from its Unicode name (the stdlib has no script property): LATIN, CYRILLIC …"""
    name = unicodedata.name(c, "")
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA")):
        return "CJK"  # Japanese mixes these scripts on purpose
    return name.split(" ", 1)[0] if name else "COMMON"


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _check_exclusions(catalog: BrandCatalog, errors: list[str]) -> None:
    """Each exclusion phrase must contain one of its brand's terms, or it can never exclude anything."""
    for brand in catalog.brands:
        keys = [fold(t.key) for t in brand.terms]
        for phrase in brand.exclusions:
            if not any(key in phrase for key in keys):
                errors.append(f"brand {brand.id}: exclusion {phrase!r} contains none of the brand's terms")
