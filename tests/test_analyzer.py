"""The Python API (`affectstream.Analyzer`) and `affectstream predict`, on the committed models/posts (post
level, offline describer) and models/default (posts and targets in one model): labels, rationales, captions, per-brand targets,
images from bytes, files and URLs through the SSRF guard, and the lazy top-level import."""
import http.server
import io
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from affectstream.analyzer import Analyzer, ImageUnavailable, brand_ids
from affectstream.model.images import ImageLimits
from affectstream.model.normalize import normalize_text
from affectstream.model.targets import TargetInput
from affectstream.predict import predict

ROOT = Path(__file__).resolve().parent.parent
# DEFAULT: a post-level model (the previous default); BRANDS: the deployed default, which also reads targets
DEFAULT, BRANDS = ROOT / "models" / "posts", ROOT / "models" / "default"


@pytest.fixture(scope="module")
def default():
    return Analyzer.from_pretrained(DEFAULT, device="cpu")


@pytest.fixture(scope="module")
def brands():
    return Analyzer.from_pretrained(BRANDS, device="cpu")


def png(text: str = "WORST DAY", size=(320, 200)) -> bytes:
    image = Image.new("RGB", size, (30, 30, 30))
    ImageDraw.Draw(image).text((20, 80), text, fill=(250, 250, 250))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_importing_the_namespace_loads_neither_torch_nor_the_analyzer():
    code = ("import sys, affectstream; assert 'torch' not in sys.modules and 'affectstream.analyzer' not in sys.modules;"
            "from affectstream import Analyzer; assert Analyzer.__module__ == 'affectstream.analyzer'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    import affectstream

    with pytest.raises(AttributeError):
        affectstream.NoSuchThing  # noqa: B018


def test_a_text_gets_a_label_scores_and_rationale_words_of_its_text(default):
    text = "I love this phone, the screen is gorgeous"
    analysis = default(text)
    assert analysis.label == "positive"
    assert set(analysis.scores) == {"negative", "neutral", "positive"}
    assert abs(sum(analysis.scores.values()) - 1) < 1e-2
    assert analysis.caption is None and analysis.targets == []
    words = normalize_text(text, default.predictor.config.text_normalization).split()
    assert analysis.rationale and all(w.source == "text" for w in analysis.rationale)
    assert all(any(w.text in word for word in words) for w in analysis.rationale)
    assert analysis.model == default.predictor.version


def test_a_post_level_model_gives_every_brand_the_post_label_and_says_so(default):
    analysis = default("acme support never answers, awful", brands=["acme", "Nimbus"])
    assert not analysis.targets_per_brand
    assert [(t.brand, t.label) for t in analysis.targets] == [("acme", analysis.label), ("nimbus", analysis.label)]
    assert analysis.targets[0].mentions[0]["span"] == [0, 4] and analysis.targets[1].mentions == []


def test_a_target_aware_model_gives_each_brand_its_own_prediction(brands):
    text = "Switched from acme to nimbus: nimbus is so much better, acme kept crashing"
    analysis = brands(text, brands=["zeta", "Nimbus", "acme"])
    assert analysis.targets_per_brand
    # mentioned brands in order of first mention, then the one only asserted
    assert [t.brand for t in analysis.targets] == ["acme", "nimbus", "zeta"]
    acme, nimbus, zeta = analysis.targets
    assert [text[s:e] for s, e in (m["span"] for m in acme.mentions)] == ["acme", "acme"]
    assert nimbus.name == "Nimbus" and zeta.mentions == []
    assert len({tuple(t.scores.values()) for t in analysis.targets}) == 3     # three different readings
    spans = tuple(tuple(m["span"]) for m in acme.mentions)
    [direct] = brands.predictor.predict_targets([TargetInput(text, "", "acme", spans)])
    assert acme.scores == direct.scores           # the same marked input the classify stage would build
    assert all(w.text not in ("«", "»") for t in analysis.targets for w in t.rationale)


def test_brands_given_as_handles_match_only_the_handle(brands):
    analysis = brands("@acme fixed it fast, acme pie was nice", brands=["@acme"])
    [acme] = analysis.targets
    assert [m["span"] for m in acme.mentions] == [[0, 5]]


def test_brand_ids_are_slugs_unique_and_never_empty():
    assert brand_ids(["Acme Corp", "acme corp", "ソニー", "  Acme   Corp ", "@acme"]) == {
        "acme-corp": "Acme Corp", "brand-3": "ソニー", "acme": "@acme"}


def test_an_image_is_described_by_the_models_own_captioner(default, tmp_path):
    path = tmp_path / "meme.png"
    path.write_bytes(png())
    from_file = default("monday again", image=str(path))
    assert default.captioner.name == default.predictor.config.captioner == "offline"
    assert from_file.caption and "objects:" in from_file.caption
    assert default("monday again", image=path.read_bytes()).caption == from_file.caption
    assert default("monday again", image=Image.open(io.BytesIO(png()))).caption == from_file.caption


def test_bad_images_are_refused_with_the_pipelines_reason(tmp_path):
    analyzer = Analyzer.from_pretrained(DEFAULT, captioner="none", device="cpu", image_limits=ImageLimits(max_bytes=2000))
    with pytest.raises(ImageUnavailable) as missing:
        analyzer("x", image=str(tmp_path / "nope.png"))
    assert missing.value.reason == "image_not_found"
    (tmp_path / "big.png").write_bytes(png(size=(900, 900)) + b"\0" * 3000)
    with pytest.raises(ImageUnavailable) as big:
        analyzer("x", image=str(tmp_path / "big.png"))
    assert big.value.reason == "image_too_large"
    with pytest.raises(ImageUnavailable) as garbage:
        analyzer("x", image=b"not an image at all")
    assert garbage.value.reason == "not_an_image"


@pytest.fixture
def local_http():
    """A real HTTP server on 127.0.0.1 serving /meme.png and /page.html."""
    bodies = {"/meme.png": (png(), "image/png"), "/page.html": (b"<html>hi</html>", "text/html")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = bodies.get(self.path, (b"", "text/plain"))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_go_through_the_ssrf_guard(local_http):
    guarded = Analyzer.from_pretrained(DEFAULT, captioner="none", device="cpu")
    with pytest.raises(ImageUnavailable) as refused:
        guarded("x", image=f"{local_http}/meme.png")
    assert refused.value.reason == "url_not_allowed"
    with pytest.raises(ImageUnavailable) as scheme:
        guarded("x", image="file:///etc/passwd")
    assert scheme.value.reason == "url_scheme_not_allowed"
    trusted = Analyzer.from_pretrained(DEFAULT, captioner="none", device="cpu", allow_private_urls=True)
    assert trusted("great day", image=f"{local_http}/meme.png").caption == ""   # fetched, decoded, described
    with pytest.raises(ImageUnavailable) as html:
        trusted("x", image=f"{local_http}/page.html")
    assert html.value.reason == "not_an_image"


def test_predict_command_prints_label_scores_and_rationale():
    result = CliRunner().invoke(predict, ["I hate waiting on hold for an hour", "--model-dir", str(DEFAULT)])
    assert result.exit_code == 0, result.output
    assert "label      negative" in result.output
    assert "scores     negative" in result.output and "rationale  " in result.output


def test_predict_command_json_with_brands_on_a_target_aware_model():
    result = CliRunner().invoke(predict, ["acme is great, nimbus is awful", "--brand", "acme", "--brand", "nimbus",
                                          "--model-dir", str(BRANDS), "--json"])
    assert result.exit_code == 0, result.output
    analysis = orjson.loads(result.output)
    assert analysis["targets_per_brand"] is True
    assert [t["brand"] for t in analysis["targets"]] == ["acme", "nimbus"]
    assert {"label", "scores", "rationale", "caption", "model"} <= set(analysis)


def test_predict_command_says_when_brands_get_the_post_label():
    result = CliRunner().invoke(predict, ["acme is great", "--brand", "acme", "--model-dir", str(DEFAULT),
                                          "--captioner", "none"])
    assert result.exit_code == 0, result.output
    assert "post-level model: every brand gets the post's label" in result.output


def test_predict_command_rejects_a_missing_model_and_a_bad_image(tmp_path):
    missing = CliRunner().invoke(predict, ["hi", "--model-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "not a deployed model directory" in missing.output
    bad = CliRunner().invoke(predict, ["hi", "--model-dir", str(DEFAULT), "--captioner", "none",
                                       "--image", str(tmp_path / "none.png")])
    assert bad.exit_code == 1 and "image_not_found" in bad.output
