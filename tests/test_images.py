"""decode_image: every input is untrusted; only RGB images or ImageError ever come out."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from affectstream.model.images import ImageError, ImageLimits, decode_image, image_sha256


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A gradient: something every codec must round-trip without being trivially flat."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // w, y * 255 // h, 128) for y in range(h) for x in range(w)])
    return img


def _reason(data: bytes, limits: ImageLimits = ImageLimits()) -> str:
    with pytest.raises(ImageError) as e:
        decode_image(data, limits)
    return e.value.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    img = decode_image(_encode(_photo(), fmt))
    assert img.mode == "RGB"
    assert img.size == (64, 48)


def test_greyscale_palette_and_16bit_pngs_become_rgb() -> None:
    for img in (Image.new("L", (8, 8), 50), Image.new("P", (8, 8), 3), Image.new("I;16", (8, 8), 40000)):
        out = decode_image(_encode(img, "PNG"))
        assert out.mode == "RGB"
    assert decode_image(_encode(Image.new("I;16", (4, 4), 65535), "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_transparency_is_flattened_onto_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(_encode(img, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored 40x20 shows as 20x40
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_phone_mpo_jpeg_counts_as_jpeg() -> None:
    buf = io.BytesIO()
    _photo().save(buf, format="MPO", save_all=True, append_images=[_photo()])
    assert decode_image(buf.getvalue()).mode == "RGB"


def test_empty_bytes_are_rejected() -> None:
    assert _reason(b"") == "image_empty"


def test_oversized_bytes_are_rejected_before_parsing() -> None:
    data = _encode(_photo(), "PNG")
    assert _reason(data, ImageLimits(max_bytes=len(data) - 1)) == "image_too_large"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decompression_bomb_header_is_rejected_without_decoding() -> None:
    # A valid PNG claiming 50000x50000 (2.5 Gpx) in ~100 bytes: decoding it would exhaust memory.
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    assert len(data) < 200
    assert _reason(data) == "image_too_many_pixels"


def test_real_small_file_bomb_is_rejected() -> None:
    data = _encode(Image.new("1", (7000, 7000)), "PNG")  # 49 Mpx in a few kB
    assert len(data) < 100_000
    assert _reason(data) == "image_too_many_pixels"


def test_pixel_limit_does_not_depend_on_pillows_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert _reason(_encode(_photo(), "PNG"), ImageLimits(max_pixels=100)) == "image_too_many_pixels"


def test_truncated_jpeg_is_rejected() -> None:
    data = _encode(_photo((256, 256)), "JPEG", quality=95)
    assert _reason(data[: len(data) // 2]) == "image_truncated"


def test_truncated_png_is_rejected() -> None:
    data = _encode(_photo((256, 256)), "PNG")
    assert _reason(data[: len(data) // 2]) in {"image_truncated", "image_corrupt"}


@pytest.mark.parametrize("data", [
    bytes(range(256)) * 4,
    b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><rect/></svg>",
    b"hello, this is text not an image\n",
])
def test_non_images_are_rejected(data: bytes) -> None:
    assert _reason(data) == "not_an_image"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_disallowed_formats_are_rejected_by_name(fmt: str) -> None:
    data = _encode(_photo(), fmt)
    assert _reason(data) == "image_format_not_allowed"
    allowing = ImageLimits(formats=frozenset({"JPEG", fmt}))
    assert decode_image(data, allowing).mode == "RGB"


def test_disallowed_but_otherwise_valid_format_is_not_decoded() -> None:
    assert _reason(_encode(_photo(), "PNG"), ImageLimits(formats=frozenset({"JPEG"}))) == "image_format_not_allowed"


def test_sha256_is_hex_digest_of_bytes() -> None:
    assert image_sha256(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _only_rgb_or_image_error(data: bytes) -> None:
    try:
        img = decode_image(data, ImageLimits(max_pixels=4_000_000))
    except ImageError as e:
        assert e.reason in {"image_empty", "image_too_large", "image_too_many_pixels",
                            "image_format_not_allowed", "not_an_image", "image_truncated", "image_corrupt"}
    else:
        assert img.mode == "RGB"
        assert img.width > 0 and img.height > 0


_SEEDS = [_encode(_photo((32, 24)), f) for f in ("PNG", "JPEG", "GIF", "WEBP")]

_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_rgb_or_image_error(data: bytes) -> None:
    _only_rgb_or_image_error(data)


@_fuzz
@given(st.sampled_from(_SEEDS),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 10_000))
def test_mutated_images_give_rgb_or_image_error(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    _only_rgb_or_image_error(bytes(data[: max(1, len(data) - cut % len(data))]))


def test_decoding_for_a_small_model_input_reduces_jpeg_in_the_decoder_and_png_after():
    import io as _io

    from PIL import Image as _Image

    from affectstream.model.images import decoded_pixels

    def encoded(fmt: str) -> bytes:
        out = _io.BytesIO()
        _Image.new("RGB", (4000, 3000), (200, 40, 40)).save(out, format=fmt)
        return out.getvalue()

    jpeg, png = encoded("JPEG"), encoded("PNG")
    assert decoded_pixels(jpeg, max_side=500) == 1000 * 750  # draft: 1/4 scale, before any pixel is decoded
    assert decoded_pixels(png, max_side=500) == 4000 * 3000  # PNG decodes at full size, then is reduced
    for data in (jpeg, png):
        img = decode_image(data, max_side=500)
        assert img.mode == "RGB" and 500 <= max(img.size) < 1000 and img.size[0] * 3 == img.size[1] * 4
        assert img.getpixel((10, 10))[0] > 150
        assert decode_image(data).size == (4000, 3000)  # without max_side: full size, as before
    assert decode_image(png, max_side=5000).size == (4000, 3000)  # never enlarged
