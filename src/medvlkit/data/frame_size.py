"""The size a compressed image frame declares in its own header, read before anything is decoded.

A DICOM file's Rows and Columns are what it says; an encapsulated JPEG, JPEG-LS or JPEG 2000 frame carries its own
dimensions, which the decoder obeys. A 64 x 64 header in front of a 12,000 x 12,000 JPEG frame would otherwise be
decoded whole (144 million pixels) before any check could see it.
"""

from __future__ import annotations

import struct

# JPEG start-of-frame markers (ITU T.81 B.1.1.3): C0-CF except DHT (C4), JPG (C8) and DAC (CC); F7 is JPEG-LS's SOF55.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or JPEG-LS stream's start-of-frame segment; None if none is found."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan before any frame header
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _SOF and pos + 9 <= n:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (ITU T.800 A.5.1), bare or inside a JP2 box."""
    at = data.find(b"\xff\x4f\xff\x51")  # SOC followed by SIZ
    if at < 0 or at + 24 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[at + 8:at + 24])
    return max(0, xsiz - xosiz), max(0, ysiz - yosiz)


def frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a compressed frame declares (JPEG, JPEG-LS, JPEG 2000); None for other encodings (RLE's
    segments carry no size: its decoder uses the DICOM header's)."""
    return jpeg_size(data) or j2k_size(data)
