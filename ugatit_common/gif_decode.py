"""What TensorFlow's GIF decoder makes of a GIF file, without TensorFlow (numpy-free, TF-free).

TF decodes GIFs with giflib's DGifSlurp; TF 2.21's gif_io keeps the frames read whole before the
first error (a damaged or cut frame and all after it are dropped; none left: an error), and
decode_jpeg (the official train pipeline's decode) then stops on more than one frame and on a
pixel whose colour index is past its colour table. `giflib_frames` walks the file as DGifSlurp
reads it - its LZW decoder's checks and its quirks included - so the training-image check can say
what the official pipeline does with a GIF it skips (checked against TF on fuzzed GIFs in
parity_tests/test_gif_warnings.py).
"""
from __future__ import annotations

_LZ_MAX = 4095      # giflib's LZ_MAX_CODE
_NO_CODE = 4098     # giflib's NO_SUCH_CODE


class _Fail(Exception):
    """giflib stops reading the frame (the reason)."""


def giflib_frames(buf: bytes) -> tuple[int, str | None, list]:
    """(frames, why, colours) as giflib's DGifSlurp reads `buf`: how many frames it reads whole
    before its first error, that error (None: it read to the trailer), and for each whole frame
    None or why TF stops drawing it (a colour index past its table, no colour table)."""
    n = len(buf)
    pos = 0

    def read(k):
        nonlocal pos
        if pos + k > n:
            pos = n
            return None
        out = buf[pos:pos + k]
        pos += k
        return out
    if read(6) is None:
        return 0, "the data ends in its header", []
    scr = read(7)
    if scr is None:
        return 0, "the data ends in its header", []
    if scr[4] & 0x80 and read(3 << ((scr[4] & 7) + 1)) is None:
        return 0, "the data ends in its colour table", []
    global_colours = 2 << (scr[4] & 7) if scr[4] & 0x80 else 0
    frames = 0
    transparent = None  # the graphic control extension's transparent index of the next frame
    colours = []
    while True:
        rec = read(1)
        if rec is None:
            return frames, f"the data ends after frame {frames} (no trailer)", colours
        kind = rec[0]
        if kind == 0x3B:
            return frames, None, colours
        if kind == 0x21:
            label = read(1)
            if label is None:
                return frames, f"the data ends in an extension after frame {frames}", colours
            first = True
            while True:
                size = read(1)
                data = size and (read(size[0]) if size[0] else b"")
                if size is None or data is None:
                    return frames, f"the data ends in an extension after frame {frames}", colours
                if not size[0]:
                    if first:  # giflib's DGifSlurp reads one more size byte after an empty first sub-block
                        first = False
                        continue
                    break
                if first and label[0] == 0xF9 and len(data) == 4:
                    transparent = data[3] if data[0] & 1 else None
                first = False
            continue
        if kind != 0x2C:
            return frames, f"an unknown block (0x{kind:02X}) after frame {frames}", colours
        k = frames + 1
        desc = read(9)
        if desc is None:
            return frames, f"the data ends in frame {k}'s descriptor", colours
        w, h = desc[4] | desc[5] << 8, desc[6] | desc[7] << 8
        if desc[8] & 0x80 and read(3 << ((desc[8] & 7) + 1)) is None:
            return frames, f"the data ends in frame {k}'s colour table", colours
        if w <= 0 or h <= 0:
            return frames, f"frame {k} is {w}x{h}", colours
        ncol = 2 << (desc[8] & 7) if desc[8] & 0x80 else global_colours
        top, left = desc[2] | desc[3] << 8, desc[0] | desc[1] << 8
        rows = _row_order(h, bool(desc[8] & 0x40))
        # TF checks the colour index of each pixel it draws: on the canvas, which is this frame's size when it is
        # the only one (decode_jpeg); transparent pixels are not drawn
        inside = (lambda i: top + rows[i // w] < h and left + i % w < w) if (top or left) else None
        why, index = _lzw(read, w * h, ncol, transparent, inside)
        if why:
            return frames, f"frame {k}: {why}", colours
        colours.append(None if ncol and index is None else
                       "it has no colour table" if not ncol else f"colour index {index} of a {ncol}-colour table")
        transparent = None
        frames += 1


def _row_order(h, interlaced):
    """The rows of a frame in the order its pixels come (an interlaced GIF's four passes)."""
    if not interlaced:
        return range(h)
    return [r for start, step in ((0, 8), (4, 8), (2, 4), (1, 2)) for r in range(start, h, step)]


def _lzw(read, pixels, ncol=256, transparent=None, inside=None):
    """giflib's DGifGetLine of a whole frame (DGifDecompressLine: its codes, table and stack, values
    kept as bytes), then the flush of its sub-blocks up to the empty one: (why it fails or None,
    the first colour index >= `ncol` among the drawn pixels - not `transparent`, `inside` the
    canvas - or None)."""
    LZ_MAX, NO = _LZ_MAX, _NO_CODE
    b = read(1)
    if b is None:
        return "the data ends before its LZW code size", None
    bpp = b[0]
    if bpp > 8:
        return f"an LZW code size of {bpp}", None
    clear, eof = 1 << bpp, (1 << bpp) + 1
    running, bits = eof + 1, bpp + 1
    max1 = 1 << bits
    prefix = [NO] * (LZ_MAX + 1)
    suffix = [0] * (LZ_MAX + 1)
    last = NO
    block = b""
    bp = 0
    shift, word = 0, 0
    stack = []

    def next_byte():
        nonlocal block, bp
        if bp >= len(block):
            s = read(1)
            if s is None:
                raise _Fail("the data ends inside it")
            if s[0] == 0:
                raise _Fail("its data ends before all its pixels")
            block = read(s[0])
            if block is None:
                raise _Fail("the data ends inside it")
            bp = 0
        c = block[bp]
        bp += 1
        return c

    def prefix_char(code):
        i = 0
        while code > clear and i <= LZ_MAX:
            i += 1
            if code > LZ_MAX:
                return NO
            code = prefix[code]
        return code
    out = 0
    bad = None

    def emit(values):
        nonlocal bad
        if bad is None:
            for j, v in enumerate(values):
                if (v & 0xFF) >= ncol and (v & 0xFF) != transparent and (inside is None or inside(out + j)):
                    bad = v & 0xFF
                    break
    try:
        while out < pixels:
            if stack:
                take = min(len(stack), pixels - out)
                emit(stack[len(stack) - take:][::-1])
                del stack[len(stack) - take:]
                out += take
                continue
            while shift < bits:
                word |= next_byte() << shift
                shift += 8
            code = word & ((1 << bits) - 1)
            word >>= bits
            shift -= bits
            if running < LZ_MAX + 2:
                running += 1
                if running > max1 and bits < 12:
                    max1 <<= 1
                    bits += 1
            if code == eof:
                return "an end code before all its pixels", None
            if code == clear:
                prefix = [NO] * (LZ_MAX + 1)
                running, bits = eof + 1, bpp + 1
                max1 = 1 << bits
                last = NO
                continue
            if code < clear:
                emit((code,))
                out += 1
            else:
                if prefix[code] == NO:
                    cp = last
                    ch = prefix_char(last if code == running - 2 else code)
                    suffix[running - 2] = ch
                    stack.append(ch)
                else:
                    cp = code
                while len(stack) < LZ_MAX and clear < cp <= LZ_MAX:
                    stack.append(suffix[cp])
                    cp = prefix[cp]
                if len(stack) >= LZ_MAX or cp > LZ_MAX:
                    return "damaged LZW data", None
                stack.append(cp)
                take = min(len(stack), pixels - out)
                emit(stack[len(stack) - take:][::-1])
                del stack[len(stack) - take:]
                out += take
            if last != NO and running - 2 < LZ_MAX + 1 and prefix[running - 2] == NO:
                prefix[running - 2] = last
                suffix[running - 2] = prefix_char(last if code == running - 2 else code)
            last = code
        # the rest of the frame's sub-blocks, up to the empty one
        while True:
            s = read(1)
            if s is None:
                return "the data ends inside it", None
            if not s[0]:
                return None, bad
            if read(s[0]) is None:
                return "the data ends inside it", None
    except _Fail as e:
        return str(e), None




def tf_decode_of_frames(buf: bytes) -> tuple[int, str | None, str]:
    """(whole frames, why giflib stopped or None, what the official train pipeline's
    decode_jpeg does with `buf` in words): "stops on it mid-run (...)" or "decodes its first
    frame"."""
    frames, why, colours = giflib_frames(buf)
    if frames == 0:
        return frames, why, f"stops on it mid-run (no frame decodes: {why})"
    if frames > 1:
        return frames, why, f"stops on it mid-run ({frames} frames decode: decode_jpeg takes single-frame GIFs only)"
    if colours[0]:
        return frames, why, f"stops on it mid-run (its first frame: {colours[0]})"
    return frames, why, "decodes its first frame"
