"""How faithful and how short the rationales are, in ERASER's terms (DeYoung et al., ACL 2020).

For a post x whose predicted class is ŷ and a rationale r (a set of its words):

    comprehensiveness = p(ŷ | x) − p(ŷ | x without r)     high: the prediction needed those words
    sufficiency       = p(ŷ | x) − p(ŷ | only r)          low:  those words alone keep the prediction

Words are the whitespace-delimited words of each side (post text and image description) as the model
reads them (after the model's text normalisation); removing or keeping words rebuilds each side from the
words left, joined by single spaces. The model's rationale is the words of the tokens it kept
(`AlignedOutput.selected_valid`: top-K, the post's own K and the weight-share threshold), exactly the
words the streamed result shows. It is compared with two rationales of the same number of words:
random-K (uniform draws among the post's words, averaged over draws) and attention (the words with the
highest last-layer attention from the first token, averaged over heads; a word scores its best token).
Only words holding a selectable token that a rationale can show (`display_word`: not punctuation only,
emoticons whole) are candidates, for every method.
"""
from __future__ import annotations

import bisect
import random
import re
import statistics
from dataclasses import dataclass

import torch

from affectstream.model.rationale import TokenSpan, display_word, merge_to_words
from affectstream.model.tokenization import SOURCE_NAMES, encode_pairs, encoding_options

WORD = re.compile(r"\S+")
Position = tuple[int, int]  # (side: 0 text | 1 description, word index on that side)
# function words, only to report how often a rationale shows one (nothing is filtered with it)
STOP_WORDS = frozenset("""a an the and or but if of to in on at for with from by as is are was were be been am
i me my you your he she it its we our they them their this that these those not no so do does did have has had
just all can will would there here what which who when how then than too very""".split())


@dataclass
class Explained:
    """One post as the model read it, with its prediction and the three rationales."""
    sides: tuple[str, str]          # (text, description), normalised
    predicted: int
    probability: float              # p(ŷ | x)
    candidates: list[Position]
    model: list[Position]
    attention: list[Position]
    shown: list[str]                # the streamed rationale's words (merge_to_words)


def word_spans(side: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(side)]


def perturb(sides: tuple[str, str], positions: set[Position], keep: bool) -> tuple[str, str]:
    """Each side rebuilt from its words that are (keep=True) or are not (keep=False) in `positions`."""
    return tuple(" ".join(w for i, w in enumerate(side.split()) if ((s, i) in positions) == keep)
                 for s, side in enumerate(sides))  # type: ignore[return-value]


def comprehensiveness(p_full: float, p_without: float) -> float:
    return p_full - p_without


def sufficiency(p_full: float, p_only: float) -> float:
    return p_full - p_only


def _encode(model, tokenizer, pairs: list[tuple[str, str]]):
    return encode_pairs(tokenizer, [t for t, _ in pairs], [d for _, d in pairs], model.config.max_length,
                        **encoding_options(model.config))


@torch.inference_mode()
def class_probabilities(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[list[float]]:
    out: list[list[float]] = []
    for start in range(0, len(pairs), batch_size):
        batch = _encode(model, tokenizer, pairs[start:start + batch_size])
        logits = model(**batch.model_inputs()).sentiment_logits
        out += torch.softmax(logits.float(), dim=-1).tolist()
    return out


@torch.inference_mode()
def explain(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[Explained]:
    """The prediction, the model's rationale and the attention rationale of every pair."""
    model.eval()
    explained: list[Explained] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = _encode(model, tokenizer, chunk)
        texts = getattr(batch, "texts", [t for t, _ in chunk])
        descriptions = getattr(batch, "descriptions", [d for _, d in chunk])
        out = model(**batch.model_inputs())
        probs = torch.softmax(out.sentiment_logits.float(), dim=-1)
        encoder_inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None and model.encoder_takes_token_types:
            encoder_inputs["token_type_ids"] = batch.token_type_ids
        attentions = _last_layer_attention(model.encoder, encoder_inputs)             # (B, heads, T, T)
        from_first = attentions[:, :, 0, :].float().mean(dim=1)                  # (B, T)
        for row, sides in enumerate(zip(texts, descriptions)):
            token_word = _token_words(batch, row, sides)                           # position -> word
            candidates = list(dict.fromkeys(p for p in token_word.values() if p is not None))
            kept = [int(i) for i, v in zip(out.selected_idx[row], out.selected_valid[row]) if v]
            rationale = list(dict.fromkeys(token_word[i] for i in kept if token_word.get(i) is not None))
            best: dict[Position, float] = {}
            for t, position in token_word.items():
                if position is not None:
                    best[position] = max(best.get(position, float("-inf")), float(from_first[row, t]))
            attention = sorted(candidates, key=lambda p: -best[p])[:len(rationale)]
            shown = merge_to_words([TokenSpan(SOURCE_NAMES[int(batch.source[row, i])], *batch.offsets[row, i].tolist(),
                                              float(out.selected_scores[row, j]))
                                    for j, i in enumerate(kept) if int(batch.source[row, i]) in SOURCE_NAMES],
                                   {"text": sides[0], "image": sides[1]})
            predicted = int(probs[row].argmax())
            explained.append(Explained(sides=tuple(sides), predicted=predicted, probability=float(probs[row, predicted]),
                                       candidates=candidates, model=rationale, attention=attention,
                                       shown=[w.text for w in shown]))
    return explained


def _last_layer_attention(encoder, inputs: dict) -> torch.Tensor:
    """The encoder's last-layer attention probabilities. Fused kernels (SDPA) do not return them, so the
    encoder runs once with the eager implementation, then gets its own back."""
    before = encoder.config._attn_implementation
    encoder.set_attn_implementation("eager")
    try:
        return encoder(**inputs, output_attentions=True).attentions[-1]
    finally:
        encoder.set_attn_implementation(before)


def _token_words(batch, row: int, sides: tuple[str, str]) -> dict[int, Position | None]:
    """Every selectable token position -> the (side, word index) it lies in, None for a word a rationale
    does not show (punctuation only)."""
    spans = [word_spans(side) for side in sides]
    starts = [[s for s, _ in side_spans] for side_spans in spans]
    out: dict[int, Position | None] = {}
    for t in torch.nonzero(batch.selectable[row]).flatten().tolist():
        side = int(batch.source[row, t])
        if side not in SOURCE_NAMES:
            continue
        index = bisect.bisect_right(starts[side], int(batch.offsets[row, t, 0])) - 1
        if index < 0:
            continue
        lo, hi = spans[side][index]
        out[t] = (side, index) if display_word(sides[side][lo:hi]) else None
    return out


def faithfulness(model, tokenizer, pairs: list[tuple[str, str]], draws: int = 5, seed: int = 0,
                 examples: int = 8) -> dict:
    """Mean rationale length and ERASER comprehensiveness / sufficiency of the model's rationale, random-K
    (`draws` draws per post) and attention, over `pairs` (post text, image description)."""
    rng = random.Random(seed)
    explained = explain(model, tokenizer, pairs)
    perturbed: list[tuple[str, str]] = []
    plan: list[tuple[int, str, int]] = []  # (post, method, index into perturbed of its "without"; "only" is +1)
    for n, e in enumerate(explained):
        rationales = {"model": e.model, "attention": e.attention}
        for d in range(draws):
            rationales[f"random-K#{d}"] = rng.sample(e.candidates, len(e.model))
        for method, positions in rationales.items():
            plan.append((n, method, len(perturbed)))
            perturbed += [perturb(e.sides, set(positions), keep=False), perturb(e.sides, set(positions), keep=True)]
    probs = class_probabilities(model, tokenizer, perturbed)
    scores: dict[str, dict[str, list[float]]] = {}
    per_post: dict[tuple[int, str], tuple[float, float]] = {}
    for n, method, i in plan:
        e = explained[n]
        per_post[(n, method)] = (comprehensiveness(e.probability, probs[i][e.predicted]),
                                 sufficiency(e.probability, probs[i + 1][e.predicted]))
    for (n, method), (comp, suff) in per_post.items():
        name = method.split("#")[0]
        scores.setdefault(name, {"comprehensiveness": [], "sufficiency": []})
        scores[name]["comprehensiveness"].append(comp)
        scores[name]["sufficiency"].append(suff)
    methods = {name: {metric: statistics.fmean(values) for metric, values in s.items()} for name, s in scores.items()}
    shown_words = [w for e in explained for w in e.shown]
    labels = model.config.sentiment_labels
    return {
        "n": len(explained), "random_draws": draws,
        "rationale_words_mean": statistics.fmean(len(e.shown) for e in explained) if explained else 0.0,
        "post_words_mean": statistics.fmean(len(e.candidates) for e in explained) if explained else 0.0,
        "stop_word_share": sum(w.lower() in STOP_WORDS for w in shown_words) / max(1, len(shown_words)),
        "methods": methods,
        "examples": [{"text": e.sides[0], "description": e.sides[1], "label": labels[e.predicted],
                      "rationale": e.shown} for e in explained[:examples]],
    }


def render(report: dict) -> str:
    """Plain text: the length line, then one row per method."""
    from affectstream.training.evaluate import format_table

    rows = [{"rationale": name, "comprehensiveness ↑": m["comprehensiveness"], "sufficiency ↓": m["sufficiency"]}
            for name, m in report["methods"].items()]
    head = (f"{report['n']} posts: rationale {report['rationale_words_mean']:.2f} words on average "
            f"(posts {report['post_words_mean']:.1f} words; stop-words {100 * report['stop_word_share']:.1f}% of "
            f"rationale words); random-K over {report['random_draws']} draws, same number of words\n\n")
    return head + format_table(rows, ["rationale", "comprehensiveness ↑", "sufficiency ↓"])
