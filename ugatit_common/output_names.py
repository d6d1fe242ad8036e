"""Output file names that cannot collide: each direction writes into its own subfolder of the
results folder (`a2b/`, `b2a/`), a name already given out in this run gets `_1`, `_2`, ...
(compared ignoring case, as macOS and Windows do: `A.png` and `a.jpg` give Morph's `A_strip.png`
and `a_1_strip.png`), and an output never has the path of an input (an input inside the results folder is never
overwritten). The results page shows the subfolder in each row's name. An input whose name is
too long for an output name once a suffix is added (255 bytes, the file systems' limit) gives a
shortened stem, its start kept and a hash of the whole name added, so two such inputs still get
distinct outputs.

A command writing into a folder that may hold other files (Morph interpolate / translate write
into `--result_dir` itself) keeps an `OutputRecord` there: its earlier outputs may be replaced and
are not read as inputs; a file it does not list (a user's) is never replaced.
"""
from __future__ import annotations

import hashlib
import json
import os

from .options import IMAGE_EXTENSIONS

DIRECTIONS = ("a2b", "b2a")


NAME_MAX = 255      # bytes in one file name (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
_NUMBER_ROOM = 6    # "_<n>" added when a name is taken


def fit_stem(stem: str, longest_tail: str) -> str:
    """`stem`, or its start plus `~<8 hex of its hash>`, so that stem + `_<n>` + `longest_tail`
    fits in NAME_MAX bytes (the name's bytes as os.fsencode gives them; a UTF-8 character is
    never cut)."""
    raw = os.fsencode(stem)
    room = NAME_MAX - len(os.fsencode(longest_tail)) - _NUMBER_ROOM
    if len(raw) <= room:
        return stem
    tag = "~" + hashlib.sha1(raw).hexdigest()[:8]
    cut = raw[:max(0, room - len(tag))]
    while cut and (cut[-1] & 0xC0) == 0x80:  # continuation bytes of a cut character
        cut = cut[:-1]
    if cut and cut[-1] >= 0xC0:  # its lead byte
        cut = cut[:-1]
    return os.fsdecode(cut) + tag


RECORD = ".ugatit-outputs.json"


class OutputRecord:
    """The files a results command wrote into a folder it shares with other files (Morph
    interpolate / translate write into `--result_dir` itself, which may hold the user's photos):
    `.ugatit-outputs.json` there lists them. A later run may replace those; any other file there
    is never replaced (OutputNames picks another name) and is never taken for an earlier output."""

    def __init__(self, folder: str, forget: bool = True):
        """`forget` False: only read (a folder this command does not write into, e.g. its input
        folder, where another command may be writing: its names recorded before their files exist
        are not dropped from under it)."""
        self.folder = os.path.realpath(folder)
        self.path = os.path.join(folder, RECORD)
        self.names = self._read()
        if not forget:
            return
        try:
            self.forget_missing()
        except OSError:  # a folder only read here (or read-only): the missing names are dropped in memory
            pass

    def forget_missing(self) -> None:
        """Drop the names whose files do not exist: outputs are recorded before they are written,
        and a run stopped before writing one (an error, Ctrl-C, a kill) must not leave its name
        claimed - a file someone puts there later is theirs, never replaced as an earlier output."""
        names = self._read() | self.names
        gone = {n for n in names if not os.path.lexists(os.path.join(self.folder, n))}
        if not gone:
            return
        self.names = names - gone
        if not os.path.lexists(self.path):
            return
        if self.names:
            self._write()
        else:  # nothing of ours is there: no record (a refused run leaves none)
            os.remove(self.path)

    def _read(self) -> set:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return {str(n) for n in json.load(fh).get("files", [])}
        except (OSError, ValueError, AttributeError):  # none yet, or not ours: nothing is recorded
            return set()

    def mine(self, path: str) -> bool:
        """Whether `path` is a file this record lists (written by an earlier run)."""
        return (os.path.realpath(os.path.dirname(os.path.abspath(path))) == self.folder
                and os.path.basename(path) in self.names)

    def add(self, paths) -> None:
        """Record `paths` (just written into the folder); entries of a run writing meanwhile are kept."""
        self.names = self._read() | self.names | {os.path.basename(p) for p in paths}
        self._write()

    def _write(self) -> None:
        from .atomic import write_bytes_atomic
        text = json.dumps({"written_by": "ugatit results commands (a later run may replace these files)",
                           "files": sorted(self.names)}, indent=0)  # ASCII: a name's odd bytes as escapes
        write_bytes_atomic(self.path, (text + "\n").encode("ascii"))


def _key(path: str) -> str:
    """`path` as a file system that ignores case sees it (macOS, Windows: `A_strip.png` and
    `a_strip.png` are one file), so that two outputs never differ by case alone, on any system."""
    return os.path.realpath(path).casefold()


class OutputNames:
    def __init__(self, inputs=(), record: OutputRecord | None = None):
        self.inputs = {_key(p) for p in inputs}
        self.used: set[str] = set()
        self.record = record  # with a record: an existing file it does not list is someone else's, never replaced

    def _taken(self, path: str) -> bool:
        key = _key(path)
        if key in self.inputs or key in self.used:
            return True
        return self.record is not None and os.path.lexists(path) and not self.record.mine(path)

    def add_inputs(self, inputs) -> None:
        self.inputs.update(_key(p) for p in inputs)

    def path(self, folder: str, input_path: str, suffix: str = "", ext: str | None = None) -> str:
        """A fresh path in `folder` for the output of `input_path`: its file name (+ `suffix`
        before the extension; an extension cv2 cannot write becomes .png unless `ext`)."""
        stem, own_ext = os.path.splitext(os.path.basename(input_path))
        if ext is None:
            ext = own_ext if own_ext.lower() in IMAGE_EXTENSIONS else own_ext + ".png"
        if len(os.fsencode(ext)) > 16 and ext.endswith(".png"):  # "name.<long tail>" + .png: the tail is name
            stem, ext = stem + ext[:-4], ".png"
        stem = fit_stem(stem, suffix + ext)
        cand, i = os.path.join(folder, f"{stem}{suffix}{ext}"), 0
        while self._taken(cand):
            i += 1
            cand = os.path.join(folder, f"{stem}{suffix}_{i}{ext}")
        self.used.add(_key(cand))
        return cand

    def stem(self, folder: str, input_path: str, suffixes) -> str:
        """A stem (the input's name without extension, numbered when needed) such that every
        `folder/<stem><suffix>` is fresh in this run and none is an input; all are reserved."""
        base = fit_stem(os.path.splitext(os.path.basename(input_path))[0],
                        max(suffixes, key=lambda t: len(os.fsencode(t)), default=""))
        stem, i = base, 0

        def taken(st):
            return any(self._taken(os.path.join(folder, st + sfx)) for sfx in suffixes)
        while taken(stem):
            i += 1
            stem = f"{base}_{i}"
        self.used.update(_key(os.path.join(folder, stem + sfx)) for sfx in suffixes)
        return stem
