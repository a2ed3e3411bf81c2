"""Every encoder family docs/model-and-training.md promises, on tiny random checkpoints built here (no download): each loads
the way training loads a checkpoint, trains two steps, exports, reloads, serves a batch and tags every
rationale word with the side (post text or image description) it came from."""
import json

import pytest
import torch

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.config import SENTIMENT_LABELS, AlignedConfig
from affectstream.model.deploy import save_deployed
from affectstream.model.encoders import load_encoder
from affectstream.model.losses import aligned_objective
from affectstream.model.predictor import BatchPredictor
from affectstream.training.samples import Sample
from affectstream.training.batches import encode_batch
from tests.tiny_models import FAMILIES, tiny_family_encoder

# (post text, image description, the words a rationale over every token must show from each side)
POSTS = [
    ("love this phone, unbelievable screen!", "a dark espresso mug on the table",
     {"love", "this", "phone", "unbelievable", "screen"}, {"a", "dark", "espresso", "mug", "on", "the", "table"}),
    ("worst service ever", "", {"worst", "service", "ever"}, set()),
    ("", 'objects: espresso, coffee mug. text in image: "happy monday". scene: sunny.',
     set(), {"espresso", "coffee", "mug", "happy", "monday", "sunny"}),  # the describer's field labels never show
    ("ok", "beach", {"ok"}, {"beach"}),
]
PAIRS = [(text, description) for text, description, _, _ in POSTS]
TAKES_TOKEN_TYPES = {"bert", "electra", "deberta-v2"}  # the others' tokenizers emit no token_type_ids


def words_by_side(prediction) -> dict[str, set[str]]:
    return {side: {w.text.lower() for w in prediction.rationale if w.source == side} for side in ("text", "image")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_encoder_family_trains_exports_serves_and_tags_rationale_sides(family, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "encoder"
    encoder, tokenizer = tiny_family_encoder(family, tmp_path)
    encoder.save_pretrained(checkpoint)  # with its pooler where the family has one, as hub checkpoints are
    tokenizer.save_pretrained(str(checkpoint))
    encoder, tokenizer = load_encoder(str(checkpoint))
    assert encoder.config.model_type == family and getattr(encoder, "pooler", None) is None
    # every token selected: the rationale must then show every word, each on its own side
    config = AlignedConfig(encoder=str(checkpoint), top_k=64, max_length=64, scorer_hidden=16, trained=True,
                           version=f"tiny-{family}")
    model = AlignedClassifier(config, encoder)

    # two steps of the training loop's batching and objective
    samples = [Sample(id=f"s{i}", text=text, label=SENTIMENT_LABELS[i % 3], split="train")
               for i, (text, _) in enumerate(PAIRS)]
    descriptions = {s.id: description for s, (_, description) in zip(samples, PAIRS)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    embeddings = model.encoder.get_input_embeddings().weight.detach().clone()
    model.train()
    for _ in range(2):
        encoded, labels, _ = encode_batch(tokenizer, samples, descriptions, config.max_length)
        assert ("token_type_ids" in encoded.model_inputs()) == (family in TAKES_TOKEN_TYPES)
        out = model(**encoded.model_inputs())
        loss = aligned_objective(out.sentiment_logits, labels, out.pooled, config.uniformity_weight)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert not torch.equal(embeddings, model.encoder.get_input_embeddings().weight), "the encoder did not train"

    # export, reload, serve: the deployed directory predicts exactly what the trained model does
    directory = save_deployed(model.eval(), tokenizer, tmp_path / "model")
    assert json.loads((directory / "config.json").read_text())["encoder_config"]["model_type"] == family
    served = BatchPredictor.from_directory(directory, device="cpu", dtype="fp32")
    assert type(served.model.encoder) is type(model.encoder)
    expected = BatchPredictor(model, tokenizer, config, device="cpu", dtype="fp32").predict(PAIRS)
    predictions = served.predict(PAIRS)
    assert [p.to_dict() for p in predictions] == [p.to_dict() for p in expected]
    for (_, _, text_words, image_words), prediction in zip(POSTS, predictions):
        assert prediction.label in SENTIMENT_LABELS
        assert words_by_side(prediction) == {"text": text_words, "image": image_words}

    # bf16 serving (pre-packed linears on CPUs with bf16 units) reads the same words from the same sides
    bf16 = BatchPredictor.from_directory(directory, device="cpu", dtype="bf16").predict(PAIRS)
    assert [words_by_side(p) for p in bf16] == [words_by_side(p) for p in predictions]
