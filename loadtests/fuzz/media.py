"""Image and text payloads for the fuzz cases: small real images, lying headers, broken files, odd text.

Real images are made with Pillow from the case's own random source. The "bombs" are tiny files whose
header claims 50000x50000 pixels (7.5 GB decoded): the server must refuse them from the header.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image

BOMB_SIDE = 50_000


def real_image(rng: random.Random, fmt: str | None = None) -> tuple[bytes, str]:
    """A small decodable image (PNG, JPEG, GIF or BMP) -> (bytes, description)."""
    fmt = fmt or rng.choice(("PNG", "JPEG", "GIF", "BMP"))
    mode = rng.choice(("RGB", "L", "RGBA") if fmt == "PNG" else ("RGB", "L"))
    width, height = rng.randint(1, 48), rng.randint(1, 48)
    pixels = rng.randbytes(width * height * len(mode))
    image = Image.frombytes(mode, (width, height), pixels)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue(), f"{fmt} {mode} {width}x{height}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid-looking PNG (correct CRCs) that claims width x height RGB pixels and holds one row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + b"\x00" * min(width, 1024) * 3)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bomb(rng: random.Random, width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(real_image(rng, "JPEG")[0])
    sof = data.find(b"\xff\xc0")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A GIF header whose logical screen and one image claim width x height."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def bmp_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A BMP header claiming width x height 24-bit pixels, with almost no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info))
    return header + info + b"\x00" * 16


def broken_image(rng: random.Random) -> tuple[bytes, str]:
    """Bytes that are not a decodable image of a served format -> (bytes, description)."""
    kind = rng.choice(
        (
            "png_bomb",
            "jpeg_bomb",
            "gif_bomb",
            "bmp_bomb",
            "truncated",
            "flipped",
            "empty",
            "text",
            "tiff",
            "webp",
        )
    )
    if kind == "png_bomb":
        return png_bomb(), f"PNG header claiming {BOMB_SIDE}x{BOMB_SIDE}"
    if kind == "jpeg_bomb":
        return jpeg_bomb(rng), f"JPEG frame claiming {BOMB_SIDE}x{BOMB_SIDE}"
    if kind == "gif_bomb":
        return gif_bomb(), f"GIF screen claiming {BOMB_SIDE}x{BOMB_SIDE}"
    if kind == "bmp_bomb":
        return bmp_bomb(), f"BMP header claiming {BOMB_SIDE}x{BOMB_SIDE}"
    if kind in ("truncated", "flipped"):
        data, what = real_image(rng)
        if kind == "truncated":
            cut = rng.randint(1, max(1, len(data) - 1))
            return data[:cut], f"{what} truncated to {cut} of {len(data)} bytes"
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped), f"{what} with bit flips"
    if kind == "empty":
        return b"", "empty bytes"
    if kind == "text":
        return b"this is not an image", "plain text"
    if kind == "tiff":
        return b"II*\x00\x08\x00\x00\x00" + b"\x00" * 32, "TIFF header (a format the server does not take)"
    return b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 24, "WebP header (a format the server does not take)"


# Words the tiny sentiment model knows, and text that is odd in every way a tokenizer can care about.
WORDS = ("good", "great", "fun", "bad", "dull", "awful", "movie", "GOOD!", "Great...", "fun?")
ODD_TEXT = (
    "",
    " ",
    "\t\n\v\f\r",
    "\x00",
    "\x1c\x1d\x1e\x1f",
    "\u00a0\u3000",
    "\u202e\u2066",
    "e\u0301" * 50,
    "😀" * 100,
    "Ⅻ²₃",
    "ﬁ ß İ",
    "\ufeff",
    "\uffff",
)


def random_text(rng: random.Random, max_words: int = 12) -> str:
    """A text of known and odd words."""
    words = [
        rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(ODD_TEXT)
        for _ in range(rng.randint(0, max_words))
    ]
    return rng.choice((" ", "  ", "\n", "\t")).join(words)


def invalid_utf8(rng: random.Random) -> bytes:
    """Bytes that are not UTF-8: lone continuation bytes, overlongs, encoded surrogates, 0xff."""
    pieces = (
        b"\xff",
        b"\xfe",
        b"\x80",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
        b"\xc3",
    )
    return b"good " + b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) + b" fun"


# Unicode that names may be made of: letters of several scripts, controls, marks, emoji, RTL marks.
_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "-_.~/\\:%?#&=+ ",
    "\x00\x01\x07\x1b\x7f",
    "数字情感猫狗",
    "ثنائي",
    "\u0301\u200b\u200d\u202e\ufeff",
    "😀🐈🐕",
    "ÀÉÎÕÜ²³",
)


def random_name(rng: random.Random, max_length: int = 24) -> str:
    alphabet = "".join(rng.sample(_ALPHABETS, rng.randint(1, 3)))
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_length)))
