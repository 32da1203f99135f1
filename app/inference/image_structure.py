"""An image's structure, walked before Pillow reads it: what opening an image costs.

Opening an image costs time whatever its pixels: Pillow reads a PNG's chunks, a JPEG's
segments before its first scan and a GIF's blocks before its first image in Python, holding the
GIL (so the event loop stalls with the worker), at about 1 us a byte where they are tiny: 10 MB
of empty PNG chunks held it 13 s. Their structure is walked first, cheaply and with a bound, and
an image whose structure no encoder writes is refused before Pillow sees it (`PNG_MAX_CHUNKS`,
`JPEG_MAX_SEGMENTS`, `JPEG_MAX_FILL_BYTES`, `JPEG_MAX_HEADER_ENTRIES`, `GIF_MAX_BLOCKS`), and so
are the images of a request that take more steps together than `REQUEST_MAX_STEPS` (128 images
each just within its own limit cost Pillow 7 s). A JPEG's scans are counted too
(`JPEG_MAX_SCANS`), and a PNG's compressed text chunks are removed before Pillow reads it
(`without_png_text`).
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

# Decoding a progressive JPEG walks every block of the image once per scan, so its cost grows
# with the number of scans, which the pixel and size limits do not bound: an AC scan of a flat
# image is a few bytes whatever its size (EOB runs), and a 234 kB JPEG of 4096 x 4096 with 3,000
# such scans took 16 s. libjpeg's progressive scripts write 6 scans (grayscale), 10 (YCbCr) or
# 18 (CMYK), and a thumbnail or an MPO's other pictures add their own: 100 leaves room for
# those, and 100 tiny scans of a 4096 x 4096 image cost about 0.6 s, what a legitimate
# progressive JPEG of that size takes (0.5 s). Scans that cost more carry at least a bit per
# block, so `max_size_mb` bounds them.
JPEG_MAX_SCANS = 100
# Pillow reads a PNG's chunks one by one in Python (about 16 us a chunk when they are empty: 13 s
# for the 800,000 that fit in 10 MB), those before IDAT when opening and the rest when loading,
# so every chunk up to IEND is counted. libpng writes IDAT in 8 kB chunks (Pillow in 64 kB
# ones): a 10 MB PNG holds about 1,300 chunks, with its text and other metadata a few dozen
# more. 4,096 allow that for files up to 32 MB, and one chunk per 4 kB (half libpng's size)
# for larger ones where a spec allows them; 4,096 chunks cost Pillow about 65 ms. An APNG's
# frames take two chunks or more each, so one of more than about 2,000 frames is refused.
PNG_MAX_CHUNKS = 4096
PNG_BYTES_PER_CHUNK = 4096
# Pillow reads a JPEG up to its first scan in Python (libjpeg decodes the rest in C), a turn of
# its loop per segment (4 us), per fill byte (0xFF before a marker) and per stray byte between
# segments (1.4 us), and inside segments per quantization table, frame component, Photoshop
# resource and Exif tag (up to 5 us). Encoders write a dozen segments (APPn, DQT, SOF, DHT),
# a few dozen with Exif, XMP and an ICC profile in 64 kB pieces: 1,024 leave room for a 60 MB
# profile. They write no fill bytes, or a few: the format allows any number, 1,024 are plenty.
# Real headers hold at most 4 tables, 4 components, a hundred Photoshop resources and one Exif
# segment (a second one's tags are counted, as Pillow appends it to the first): 1,024 entries.
# At these limits the walk costs 2 ms at most, Pillow 10 to 20 ms.
JPEG_MAX_SEGMENTS = 1024
JPEG_MAX_FILL_BYTES = 1024
JPEG_MAX_HEADER_ENTRIES = 1024
# Pillow reads a GIF's extensions before its first image one sub-block at a time in Python (0.5
# to 3 us each: 4 MB of 1-byte comment sub-blocks took 1 s). Encoders write a few extensions
# (loop count, graphic control, comment, XMP, an ICC profile) in sub-blocks of up to 255
# bytes: 4,096 blocks hold 1 MB of metadata, and cost Pillow about 10 ms. GIF is opt-in.
GIF_MAX_BLOCKS = 4096

# A request's images together: 16,384 steps cost Pillow about 0.3 s at most (tiny PNG chunks,
# its slowest), while 128 ordinary images take a few dozen steps each.
REQUEST_MAX_STEPS = 16_384


def jpeg_scans(raw: bytes) -> int:
    """At least the number of scans in the JPEG: its SOS markers (FF DA) counted undecoded.

    Entropy-coded data stuffs every FF with 00 (or follows it with a restart marker), so FF DA
    appears only as a marker; segments (an Exif thumbnail, an MPO's other pictures) may add a
    few, which the limit allows for.
    """
    return raw.count(b"\xff\xda")


class Walk(NamedTuple):
    steps: int  # the parts walked: chunks, segments, fill bytes, header entries or blocks
    excess: str | None  # what is beyond a limit (OVER_REQUEST: the request's), None if within


# A walk's excess when the request's budget ran out first.
OVER_REQUEST = "beyond the request's budget"


def walk(raw: bytes, left: int) -> Walk:
    """The image's structure walked undecoded, at most `left` steps (the rest of the request's
    budget) and its format's limits.

    A structure cut short or broken is left for Pillow to refuse, as it does: only the count
    of the parts it would read one by one is judged here, and each step of a walk counts one.
    """
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_walk(raw, left)
    if raw.startswith(b"\xff\xd8\xff"):
        return _jpeg_walk(raw, left)
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return _gif_walk(raw, left)
    return Walk(0, None)


def request_budget(sizes: list[int]) -> int:
    """Steps the images of one request may take in all: REQUEST_MAX_STEPS, or one PNG chunk
    per PNG_BYTES_PER_CHUNK of their bytes where that is more."""
    return max(REQUEST_MAX_STEPS, sum(sizes) // PNG_BYTES_PER_CHUNK)


_PNG_CHUNK = struct.Struct(">I4s")


def _png_walk(raw: bytes, left: int) -> Walk:
    """Chunks up to IEND: a jump from chunk header to chunk header."""
    limit = max(PNG_MAX_CHUNKS, len(raw) // PNG_BYTES_PER_CHUNK)
    pos, chunks, end = 8, 0, len(raw) - _PNG_CHUNK.size
    while pos <= end:
        length, kind = _PNG_CHUNK.unpack_from(raw, pos)
        chunks += 1
        if chunks > limit:
            return Walk(chunks, f"a PNG of more than {limit} chunks")
        if chunks > left:
            return Walk(chunks, OVER_REQUEST)
        if kind == b"IEND":
            break
        pos += 12 + length  # length and type, data, CRC
    return Walk(chunks, None)


# Compressed text: zTXt always, iTXt optionally. Plain tEXt is kept: it costs no more than
# its own bytes, and Pillow reads Exif (the orientation) from a tEXt chunk keyed "exif".
_PNG_TEXT = frozenset([b"zTXt", b"iTXt"])


def without_png_text(raw: bytes) -> bytes:
    """A PNG without its compressed text chunks (other images as they are).

    Pillow inflates every compressed text chunk when it opens a PNG, up to 1 MB each and 64 MB
    an image, and keeps the text: a 66 KB PNG of 63 such chunks took 63 MB and 0.3 s, and a
    request carries up to 128 images. That text (comments, XMP) says nothing the decoding
    reads (the orientation is Exif: an eXIf chunk, or tEXt keyed "exif"), so it is dropped
    unread; a chunk cut short is left for Pillow to refuse.
    """
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return raw
    kept, start, pos, end = [], 0, 8, len(raw) - _PNG_CHUNK.size
    while pos <= end:  # at most PNG_MAX_CHUNKS steps: _png_walk has counted them
        length, kind = _PNG_CHUNK.unpack_from(raw, pos)
        following = pos + 12 + length  # length and type, data, CRC
        if kind in _PNG_TEXT and following <= len(raw):
            kept.append(raw[start:pos])
            start = following
        if kind == b"IEND":
            break
        pos = following
    return b"".join([*kept, raw[start:]]) if kept else raw


# Markers that Pillow reads without a length (its handler is None): JPG, RSTn, SOI, EOI, JPGn.
_JPEG_STANDALONE = frozenset([0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)])
# Frame headers (SOFn, and DHP, read alike), whose components Pillow reads one by one.
_JPEG_FRAMES = frozenset([*range(0xC0, 0xD0), 0xDE]) - {0xC4, 0xC8, 0xCC}
_JPEG_FILL = re.compile(b"\xff+")


def _jpeg_walk(raw: bytes, left: int) -> Walk:
    """Segments, fill bytes and header entries before the first scan.

    The walk follows Pillow's (`JpegImageFile._open`), so it counts the turns Pillow's loop
    would take; runs of stray and fill bytes are measured in C (`find`, a bounded match).
    """
    pos, end = 2, len(raw)
    segments = fill = entries = 0
    while True:
        ff = raw.find(b"\xff", pos)
        if ff < 0:
            break
        fill_run = _JPEG_FILL.match(raw, ff, ff + JPEG_MAX_FILL_BYTES + 2)  # bounded, in C
        run = fill_run.end() - ff if fill_run else 1
        fill += ff - pos + run - 1  # stray bytes, then 0xFF bytes but the marker's own
        if fill > JPEG_MAX_FILL_BYTES:
            excess = f"a JPEG of more than {JPEG_MAX_FILL_BYTES} fill bytes before its first scan"
            return Walk(segments + fill + entries, excess)
        pos = ff + run + 1
        if pos > end:
            break
        marker = raw[pos - 1]
        if marker == 0:  # a stuffed FF 00, skipped as a stray
            fill += 1
            continue
        if marker < 0xC0:  # no marker: Pillow refuses the file
            break
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            excess = f"a JPEG of more than {JPEG_MAX_SEGMENTS} segments before its first scan"
            return Walk(segments + fill + entries, excess)
        if marker == 0xDA:
            break
        if marker not in _JPEG_STANDALONE:
            start = pos + 2
            pos += max(2, int.from_bytes(raw[pos : pos + 2], "big"))  # Pillow reads no less
            entries += _jpeg_entries(raw, marker, start, pos)
            if entries > JPEG_MAX_HEADER_ENTRIES:
                excess = (
                    f"a JPEG of more than {JPEG_MAX_HEADER_ENTRIES} tables, components and"
                    " other header entries before its first scan"
                )
                return Walk(segments + fill + entries, excess)
        if segments + fill + entries > left:
            return Walk(segments + fill + entries, OVER_REQUEST)
    # The walk's last steps (up to the first scan, or the end) count against the budget too.
    steps = segments + fill + entries
    return Walk(steps, OVER_REQUEST if steps > left else None)


def _jpeg_entries(raw: bytes, marker: int, start: int, end: int) -> int:
    """At least how many entries Pillow reads one by one in the segment's data, start to end.

    Exif is not counted: Pillow joins the Exif segments and reads the first IFD's tags, at most
    65,535 by the format (about 0.3 s), and a thumbnail or MakerNote in a second segment holds
    bytes, not tags (counting them as tags refused real camera files).
    """
    size = end - start
    if marker == 0xDB:  # tables of 65 bytes, or of 129 with 16-bit values
        return -(-size // 65)
    if marker in _JPEG_FRAMES:  # 6 bytes, then 3 per component
        return max(0, -(-(size - 6) // 3))
    if marker == 0xED and raw.startswith(b"Photoshop 3.0\x00", start):
        return raw.count(b"8BIM", start, end)  # each resource starts with one
    return 0


def _gif_walk(raw: bytes, left: int) -> Walk:
    """Blocks before the first image: extensions, sub-blocks, strays."""
    flags = raw[10] if len(raw) > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    limit = min(GIF_MAX_BLOCKS, left)
    blocks, end = 0, len(raw)
    while pos < end and blocks <= limit:
        introducer = raw[pos]
        if introducer in b",;":  # the first image, or the end
            break
        blocks += 1
        pos += 2 if introducer == 0x21 else 1  # an extension's introducer and label
        if introducer == 0x21:
            while pos < end and raw[pos] and blocks <= limit:
                blocks += 1
                pos += 1 + raw[pos]
            pos += 1  # the terminator
    if blocks > GIF_MAX_BLOCKS:
        return Walk(blocks, f"a GIF of more than {GIF_MAX_BLOCKS} blocks before its first image")
    return Walk(blocks, OVER_REQUEST if blocks > left else None)
