"""Writing what people look at, as the official code does (numpy + cv2; no TF, no torch).

Official: `inverse_transform` ((x + 1) / 2) * 255, `astype('uint8')` (C cast: truncation toward
zero; the values are in [0, 255] for inputs in [-1, 1]), RGB -> BGR, cv2.imwrite; test phase
writes `index.html` with columns name | input | output.
Here every file is written atomically (temp file in the same folder, then os.replace), and the
page's image paths are relative to the page so it works when opened from disk.
"""
from __future__ import annotations

import html
import os
import time
import urllib.parse

import cv2
import numpy as np

from .atomic import write_bytes_atomic


def to_uint8(images) -> np.ndarray:
    """Official inverse transform + `astype('uint8')`, in float64 as the official numpy math.
    Values outside [-1, 1] are clipped first (the official would wrap around)."""
    x = np.asarray(images, dtype=np.float64)
    x = ((np.clip(x, -1.0, 1.0) + 1.0) / 2) * 255.0
    return x.astype("uint8")


def write_text_atomic(path: str, text: str) -> str:
    """Write a text file (report, page) atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_rgb(path: str, rgb_uint8: np.ndarray) -> str:
    """Encode an HWC uint8 RGB picture by the path's extension and write it atomically."""
    ext = os.path.splitext(path)[1] or ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb_uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode an image for {path!r}")
    return write_bytes_atomic(path, buf.tobytes())


def _as_hwc_list(item):
    a = np.asarray(item)
    if a.ndim == 4:
        return list(a)
    if a.ndim == 3:
        return [a]
    raise ValueError(f"expected an HWC image or an NHWC batch, got shape {a.shape}")


def save_image(image, path: str) -> str:
    """Write one HWC RGB image in [-1, 1] (an NHWC batch of one is accepted)."""
    a = np.asarray(image)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"save_image takes one image, got a batch of {a.shape[0]}; use save_grid")
        a = a[0]
    return write_rgb(path, to_uint8(a))


def save_grid(images, path: str, ncols: int | None = None) -> str:
    """Tile HWC images / NHWC batches (all in [-1, 1], same H and W) into one picture, row by row
    as the official `merge` (index i goes to column i % ncols, row i // ncols). Default ncols:
    one column, as the official `[batch_size, 1]` samples."""
    tiles = [t for item in images for t in _as_hwc_list(item)]
    if not tiles:
        raise ValueError("save_grid needs at least one image")
    h, w = tiles[0].shape[:2]
    ncols = 1 if ncols is None else max(1, int(ncols))
    nrows = -(-len(tiles) // ncols)
    grid = np.zeros((h * nrows, w * ncols, 3), dtype=np.float64) - 1.0  # black background
    for i, t in enumerate(tiles):
        if t.shape[:2] != (h, w):
            raise ValueError(f"image {i} has shape {t.shape}, expected {(h, w)}")
        r, c = divmod(i, ncols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return write_rgb(path, to_uint8(grid))


def page_link(target: str, page: str) -> str:
    """The `src` / `href` of file `target` in the page `page`: relative to the page's folder,
    percent-encoded from the name's bytes (a file name that is not UTF-8 keeps its bytes, as
    os.fsencode gives them), HTML-escaped."""
    rel = os.path.relpath(os.path.abspath(target), os.path.dirname(os.path.abspath(page)))
    return html.escape(urllib.parse.quote(os.fsencode(rel.replace(os.sep, "/"))), quote=True)


def page_text(text) -> str:
    """`text` (a file name, say) HTML-escaped for a UTF-8 page; the bytes of a name that is not
    UTF-8 show as U+FFFD instead of stopping the page's write."""
    return html.escape(str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


PAGE_HEAD = "<html><head><meta charset='utf-8'></head><body>"  # the pages are written as UTF-8


def file_state(path: str | None):
    """What tells whether a file was written since (an atomic write replaces the inode); None: none."""
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ResultsPage:
    """`index.html` with one row per translated image: name | input | output.

    The page never lists two runs' pictures: a rerun into the same folder writes its pictures over
    the earlier run's, so its first output replaces the earlier page (`before_output`, called
    before an output is written; `add` does it too) with this run's page, rewritten as rows come
    (at most every REFRESH_S seconds) and at `close`. Until `close` the page says it is
    incomplete; a run stopped in any way leaves a page listing the pictures it wrote, each one
    there. A run that writes nothing leaves the earlier page as it was."""

    REFRESH_S = 2.0
    INCOMPLETE = ("<p><b>Incomplete</b>: the run writing this page had written the %d picture(s) below "
                  "when this was saved (it is rewritten when the run ends).</p>\n")

    def __init__(self, result_dir: str, img_size: int = 256, filename: str = "index.html"):
        self.path = os.path.join(result_dir, filename)
        self.img_size = int(img_size)
        self.rows = []
        self.started = False  # this run's page has replaced the earlier one
        self._saved_at = 0.0
        self._earlier = None  # the earlier page's bytes, put back by a run that wrote no picture
        self._announced = []  # (picture, its file's state before) of before_output, until the first row

    def _src(self, p: str) -> str:
        return page_link(p, self.path)

    def before_output(self, path: str | None = None) -> None:
        """Call before writing a picture this page will list: the first call replaces an earlier
        run's page (whose pictures are about to be written over) with this run's. `path`: the
        picture; a run stopped before any of them changed puts the earlier page back (`stopped`)."""
        if not self.rows:
            self._announced.append((path, file_state(path)))
        if not self.started:
            try:
                with open(self.path, "rb") as fh:
                    self._earlier = fh.read()
            except OSError:  # none (or not a readable file: the write below says so)
                self._earlier = None
            self._write(final=False)

    def add(self, name: str, input_path: str, output_path: str) -> None:
        s = self.img_size
        self.rows.append(
            "<tr><td>%s</td><td><img src='%s' width='%d' height='%d'></td>"
            "<td><img src='%s' width='%d' height='%d'></td></tr>"
            % (page_text(name), self._src(input_path), s, s, self._src(output_path), s, s))
        if not self.started or time.monotonic() - self._saved_at >= self.REFRESH_S:
            self._write(final=False)

    def _write(self, final: bool) -> str:
        body = "\n".join(self.rows)
        note = "" if final else self.INCOMPLETE % len(self.rows)
        text = (PAGE_HEAD + note + "<table><tr><th>name</th><th>input</th><th>output</th></tr>\n"
                f"{body}\n</table></body></html>\n")
        path = write_bytes_atomic(self.path, text.encode("utf-8"))
        self.started, self._saved_at = True, time.monotonic()
        return path

    def close(self) -> str:
        return self._write(final=True)

    def stopped(self) -> None:
        """A run stopped (an error, Ctrl-C) after writing pictures: its page lists every one it
        wrote, still marked incomplete; one that wrote none leaves the earlier page as it was."""
        if self.started and not self.rows and all(p is not None and file_state(p) == state
                                                  for p, state in self._announced):
            try:  # no picture of this run was written (e.g. the first one's write failed)
                if self._earlier is None:
                    os.remove(self.path)
                else:
                    write_bytes_atomic(self.path, self._earlier)
            except OSError:
                pass
        elif self.started:
            try:
                self._write(final=False)
            except Exception:  # noqa: BLE001 - a full disk: the run's own error is the one to report
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and self.rows:  # a failed or empty run leaves the previous page as it was
            self.close()
        elif exc_type is not None:
            self.stopped()
        return False
