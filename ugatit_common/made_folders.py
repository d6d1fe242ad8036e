"""The folders one command made for its outputs, removed again when it fails while they are empty.

A test phase (tf_reference, the port) or Morph interpolate / translate makes `--result_dir`, its
`<model_dir>` and `a2b/` / `b2a/` before its first picture; one that fails before it wrote
anything there (no readable image, a NaN picture, Ctrl-C) should leave the disk as it found it.
Only the folders this run made go (each path is noted before it is made, with the topmost folder
that was missing above it), and only while empty: `os.rmdir` never removes a folder holding
anything, so a folder that existed before, or one someone wrote into meanwhile, stays.

    with made_folders.removed_on_failure() as made:
        made.make(folder, check_writable_folder, "--result_dir")   # or made.note(folder) before making it
        ...                                                         # an exception: the empty ones go
"""
from __future__ import annotations

import contextlib
import os


def missing_top(folder: str) -> str | None:
    """The topmost folder of the path `folder` that does not exist yet (None: it exists)."""
    top, d = None, os.path.abspath(folder)
    while not os.path.lexists(d):
        top, parent = d, os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return top


def _chain(folder: str, top: str):
    """`folder` and its parents up to `top` (a folder above it, or itself), deepest first."""
    d, top = os.path.abspath(folder), os.path.abspath(top)
    while True:
        yield d
        if d == top or os.path.dirname(d) == d:
            return
        d = os.path.dirname(d)


def remove_empty_chain(folder: str, top: str) -> None:
    """Remove `folder` and its parents up to `top` (a folder above it, or itself) while each is
    empty; the first that is not (or cannot be removed) ends it."""
    for d in _chain(folder, top):
        try:
            os.rmdir(d)
        except OSError:
            return


class MadeFolders:
    """The folders made in this run (each with the topmost one that was missing above it)."""

    def __init__(self):
        self._made: list[tuple[str, str]] = []

    def note(self, folder: str) -> None:
        """Call right before `folder` is made: remembers what of its path is missing now."""
        top = missing_top(folder)
        if top is not None:
            self._made.append((os.path.abspath(folder), top))

    def make(self, folder: str, maker=None, *args) -> str:
        """note(folder), then make it: `maker(folder, *args)` (e.g. cli_errors.check_writable_folder)
        or os.makedirs."""
        self.note(folder)
        if maker is None:
            os.makedirs(folder, exist_ok=True)
            return folder
        return maker(folder, *args)

    def remove_empty(self) -> None:
        """Remove every noted folder that is empty now, with its parents up to the topmost one this
        run made: all of them deepest first, so a parent made for one folder goes after a sibling
        noted later (whose chain stops at itself: the parent existed by then) has gone."""
        made = {d for folder, top in self._made for d in _chain(folder, top)}
        for d in sorted(made, key=lambda p: p.count(os.sep), reverse=True):
            try:
                os.rmdir(d)  # never a folder holding anything
            except OSError:
                pass


@contextlib.contextmanager
def removed_on_failure():
    """`with removed_on_failure() as made:` the folders made through `made` that are still empty
    when the block raises (any exception, Ctrl-C, SIGTERM's exception) are removed."""
    made = MadeFolders()
    try:
        yield made
    except BaseException:
        made.remove_empty()
        raise
