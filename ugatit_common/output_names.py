"""Output file names that cannot collide: each direction writes into its own subfolder of the
results folder (`a2b/`, `b2a/`), a name already given out in this run gets `_1`, `_2`, ...,
and an output never has the path of an input (an input inside the results folder is never
overwritten). The results page shows the subfolder in each row's name."""
from __future__ import annotations

import os

from .options import IMAGE_EXTENSIONS

DIRECTIONS = ("a2b", "b2a")


class OutputNames:
    def __init__(self, inputs=()):
        self.inputs = {os.path.realpath(p) for p in inputs}
        self.used: set[str] = set()

    def add_inputs(self, inputs) -> None:
        self.inputs.update(os.path.realpath(p) for p in inputs)

    def path(self, folder: str, input_path: str, suffix: str = "", ext: str | None = None) -> str:
        """A fresh path in `folder` for the output of `input_path`: its file name (+ `suffix`
        before the extension; an extension cv2 cannot write becomes .png unless `ext`)."""
        stem, own_ext = os.path.splitext(os.path.basename(input_path))
        if ext is None:
            ext = own_ext if own_ext.lower() in IMAGE_EXTENSIONS else own_ext + ".png"
        cand, i = os.path.join(folder, f"{stem}{suffix}{ext}"), 0
        while os.path.realpath(cand) in self.inputs or os.path.realpath(cand) in self.used:
            i += 1
            cand = os.path.join(folder, f"{stem}{suffix}_{i}{ext}")
        self.used.add(os.path.realpath(cand))
        return cand

    def stem(self, folder: str, input_path: str, suffixes) -> str:
        """A stem (the input's name without extension, numbered when needed) such that every
        `folder/<stem><suffix>` is fresh in this run and none is an input; all are reserved."""
        base = os.path.splitext(os.path.basename(input_path))[0]
        stem, i = base, 0

        def taken(st):
            paths = [os.path.realpath(os.path.join(folder, st + sfx)) for sfx in suffixes]
            return any(p in self.inputs or p in self.used for p in paths)
        while taken(stem):
            i += 1
            stem = f"{base}_{i}"
        self.used.update(os.path.realpath(os.path.join(folder, stem + sfx)) for sfx in suffixes)
        return stem
