"""What an output may replace: the one rule for every command that writes a model file.

`weights_convert.py tf2torch / torch2tf / tf2onnx`, `python -m torch_port export` and
`python -m morph export` call `place_output` (one file) or `check_outputs` (several, e.g. a TF
checkpoint's .index and .data) before any work, and `release_claims` at their end, so a refusal
(OutputRefused: exit 2, one `error:` line) leaves the disk as it was. Refused:

- an output that is one of the command's inputs (the same file by name, relative path, symlink
  or hard link: os.path.realpath and os.path.samefile), even with --overwrite;
- an output inside a folder that a live training run owns (its checkpoint, sample or log folder:
  ugatit_common.run_lock.held_by), or inside the checkpoint folder holding the input checkpoint
  (an ONNX file or loose weights among a run's checkpoints are not that run's). One opt-in:
  `torch2tf --continue_run` writes a TF checkpoint beside the port checkpoint it was converted
  from, which continues the same run in TensorFlow (how the checkpoint policy lets a run change
  framework); the other rules still hold for it;
- an existing file that is not of the output's own kind (judged by its content and name: an
  image, a TF .meta / .index, a .state.pt, weights when writing ONNX, ONNX when writing weights,
  an empty or unknown file, a folder where a file goes): never replaced, --overwrite or not;
- an existing file of the output's kind, unless --overwrite; never (even with it) the weights
  half of a port checkpoint (`<prefix>.model-N.safetensors` beside its `.state.pt`): other
  weights there would be paired with that run's optimizer state;
- a path whose folder cannot be made or written (a file where a folder goes, a read-only folder):
  said before the work, not after it;
- an output named as part of a checkpoint (`<prefix>.model-N.index` / `.data-*` / `.safetensors`)
  in a folder that holds other checkpoints (than the one it replaces): the checkpoint policy
  resumes the newest in a folder, so a training run there would continue one run from another's
  weights (`--continue_run` into the input's own folder is the same run);
- an output another command is writing at this moment: each output is claimed for the command's
  life (`claim`, the run lock of `.<name>.ugatit-out.lock` beside it) and checked again once
  claimed, so of two commands given the same output at once the second is refused, naming the
  first, instead of silently replacing its file.

A folder given as an output (an existing folder, or a path ending in a separator) is a folder:
the output goes inside it under the command's default name (`as_file`). Extensions count in any
case (`.ONNX` is an ONNX name). Results (the test phases' translated images and pages, Morph
interpolate / translate) follow `check_result_folders`: never in a live run's folder, the
checkpoint folder being read, or a dataset's image folder; and one such command at a time per
results folder (`own_result_folder`).
Framework-free (no numpy, torch or TensorFlow).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import struct
import zipfile

from . import checkpoint_policy as policy
from .atomic import sweep_dead_temps
from .options import DOMAIN_FOLDERS, OptionError
from . import run_lock
from .run_lock import held_by

__all__ = ["OutputRefused", "KINDS", "kind_of", "describe", "input_files", "checkpoint_folder_of", "as_file",
           "check_outputs", "place_output", "claim", "release_claims", "sweep_dead_claims", "check_result_folders",
           "own_result_folder"]


class OutputRefused(OptionError):
    """An output path the command may not write (exit 2; nothing is written)."""


# the kinds of file a command writes or may meet at its output path, as the message names them
KINDS = {
    "safetensors": "a safetensors weights file",
    "torch-pt": "a PyTorch .pt weights file",
    "state": "a training state file (.state.pt: optimizer, RNG and loop state)",
    "onnx": "an ONNX model",
    "npz": "a numpy .npz archive",
    "morph-codes": "Morph-UGATIT's direction codes (a .npz of w_a2b and w_b2a, as morph export writes)",
    "zip": "a zip archive",
    "tf-index": "a TensorFlow checkpoint index (.index)",
    "tf-data": "a TensorFlow checkpoint data file (.data-*)",
    "tf-meta": "a TensorFlow graph (.meta)",
    "tf-state": "a TensorFlow `checkpoint` state file",
    "tf-prefix": "a TensorFlow checkpoint prefix (a new name: <prefix>.index and <prefix>.data-* are written)",
    "folder": "a folder",
    "special": "not a regular file (a FIFO, socket or device)",
    "broken-link": "a symbolic link to a missing file",
    "empty": "an empty file",
    "unreadable": "an unreadable file",
    "unknown": "a file of unknown kind",
}

MORPH_CODES = ("w_a2b.npy", "w_b2a.npy")  # the members of the codes file `morph export` writes
_IMAGES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
           (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_TF_DATA = re.compile(r"\.data-\d{5}-of-\d{5}$")
_TF_TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of a TF table (.index) file


def describe(kind: str) -> str:
    if kind.startswith("image:"):
        return f"a {kind.split(':', 1)[1]} image"
    return KINDS.get(kind, kind)


def _zip_kind(path: str, name: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return "unknown"
    if any(n.endswith("data.pkl") for n in names):  # torch.save's zip layout
        return "state" if name.endswith(".state.pt") else "torch-pt"
    if sorted(names) == list(MORPH_CODES):  # another .npz (a user's own arrays) is not replaced for it
        return "morph-codes"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def is_safetensors_head(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes starting with `head` (>= 9 bytes of it) is a safetensors
    file: an 8-byte header length that fits the file, then its JSON. Told so first: that length
    may begin with a zip's `PK` or a pickle's 0x80 (one file in 256)."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8


def kind_of(path: str) -> str | None:
    """What is at `path` (a key of KINDS, or `image:<FORMAT>`), judged by content and name; None
    when nothing is there. Extensions count in any case (`.ONNX`, `.PT`): the writers accept
    them, so a file one wrote is recognised when it is replaced."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        return "folder"
    if not os.path.exists(path):
        return "broken-link"
    if not os.path.isfile(path):
        return "special"
    name = os.path.basename(path).lower()
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(32)
            tail = b""
            if size >= 48:
                fh.seek(size - 8)
                tail = fh.read(8)
    except OSError:
        return "unreadable"
    if size == 0:
        return "empty"
    if os.path.basename(path) == policy.TF_STATE and head.startswith(b"model_checkpoint_path"):
        return "tf-state"
    if _TF_DATA.search(os.path.basename(path)):  # raw tensor bytes: one only with its index (a TF table) beside it
        index = path[: _TF_DATA.search(path).start()] + ".index"
        return "tf-data" if kind_of(index) == "tf-index" else "unknown"
    if name.endswith(".meta"):
        return "tf-meta"
    if name.endswith(".index") and len(tail) == 8 and struct.unpack("<Q", tail)[0] == _TF_TABLE_MAGIC:
        return "tf-index"
    if is_safetensors_head(head, size):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, name)
    if head[:1] == b"\x80" and name.endswith(".pt"):  # torch.save's legacy (pickle) format
        return "state" if name.endswith(".state.pt") else "torch-pt"
    if name.endswith(".onnx") and head[:1] == b"\x08":  # ModelProto starts with ir_version (field 1)
        return "onnx"
    for magic, fmt in _IMAGES:
        if head.startswith(magic):
            return "image:" + fmt
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image:WEBP"
    return "unknown"


# -- inputs ----------------------------------------------------------------------------------------

def _tf_prefix(path: str) -> str | None:
    return path if os.path.isfile(path + ".index") else None


def input_files(path: str) -> list[str]:
    """The files a checkpoint input consists of: a folder -> every checkpoint file in it and its
    `latest` / `checkpoint` pointers; a TF prefix -> <prefix>.* and its folder's `checkpoint`; a
    file -> itself (and, for a port checkpoint's weights, the .state.pt beside it)."""
    out = []
    if os.path.isdir(path):
        for f in policy.inventory(path):
            out += f.files
        out += [os.path.join(path, n) for n in (policy.POINTER, policy.TF_STATE)]
    elif _tf_prefix(path):
        folder = os.path.dirname(os.path.abspath(path))
        base = os.path.basename(path)
        out += [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(base + ".")]
        out.append(os.path.join(folder, policy.TF_STATE))
    else:
        out.append(path)
        if path.lower().endswith(".safetensors"):
            out.append(path[: -len(".safetensors")] + ".state.pt")
    return [p for p in out if os.path.lexists(p)]


def checkpoint_folder_of(path: str) -> str | None:
    """The checkpoint folder an input checkpoint lives in (realpath): the folder itself, a TF
    prefix's folder, or a weights file's folder when the file is part of a complete checkpoint
    there (a loose weights file elsewhere makes its folder no checkpoint folder)."""
    if os.path.isdir(path):
        return os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if _tf_prefix(path):
        return os.path.realpath(folder)
    real = os.path.realpath(path)
    for f in policy.inventory(folder):
        if f.complete and real in {os.path.realpath(p) for p in f.files}:
            return os.path.realpath(folder)
    return None


# -- outputs ---------------------------------------------------------------------------------------

def as_file(out: str, default_name: str) -> tuple[str, bool]:
    """(file path, given as a folder): `out` itself, or `out/default_name` when `out` is a folder
    (existing, or written with a trailing separator)."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return os.path.join(out, default_name), True
    return out, False


def _inside(path_real: str, folder_real: str) -> bool:
    return path_real == folder_real or path_real.startswith(folder_real.rstrip(os.sep) + os.sep)


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _live_owner(folder_real: str):
    """(folder, holder) of the nearest folder at or above `folder_real` that a live run holds."""
    d = folder_real
    while True:
        if os.path.isdir(d):
            holder = held_by(d)
            if holder is not None:
                return d, holder
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _half_of_a_checkpoint(path: str) -> str | None:
    """The .state.pt that `path` (a port checkpoint's weights file) is paired with, or None. The
    extension in any case: on a case-insensitive file system (macOS, Windows) `X.model-3.SAFETENSORS`
    is the weights file `X.model-3.safetensors` itself."""
    if not re.search(r"\.model-\d+\.safetensors$", path, re.IGNORECASE):
        return None
    state = path[: -len(".safetensors")] + ".state.pt"
    return state if os.path.isfile(state) else None


def _unwritable(path: str) -> str | None:
    """Why the folder `path` goes into cannot be written (its nearest existing ancestor is a file,
    or not writable), or None."""
    d = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        return f"{d!r} is not a folder"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"the folder {d!r} is not writable"
    return None


def _check_one(path: str, kind: str, is_update: bool, in_files, in_folders, overwrite: bool, beside_input_ok: bool,
               flag: str, input_name: str, beside_input_hint: str) -> None:
    """OutputRefused when the one output `path` (of `kind`) may not be written: the module
    docstring's rules, in its order."""
    for f in in_files:
        if _same_file(path, f):
            raise OutputRefused(f"output {path!r} is a file of {input_name} ({f!r}), one of this command's "
                                f"inputs; it is never replaced: choose another output name")
    real_folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    live = _live_owner(real_folder)
    if live is not None:
        folder, holder = live
        raise OutputRefused(f"output {path!r} lies in {folder!r}, a folder of a running training "
                            f"({holder.describe()}); write it outside that folder")
    beside_input = any(_inside(real_folder, folder) for folder in in_folders)
    if beside_input and not beside_input_ok:
        holding = next(f for f in in_folders if _inside(real_folder, f))
        raise OutputRefused(f"output {path!r} lies in the checkpoint folder {holding!r} that holds {input_name}; "
                            f"write it outside that folder{beside_input_hint}")
    found = kind_of(path)
    if found is not None:
        if found != kind:
            raise OutputRefused(f"output {path!r} exists and is {describe(found)}, not {describe(kind)}: it is "
                                f"never replaced ({flag} replaces only a file of the output's own kind)")
        state = _half_of_a_checkpoint(path)
        if state:
            raise OutputRefused(f"output {path!r} is the weights file of a checkpoint (its state {state!r} is beside "
                                f"it): other weights would be paired with that run's optimizer state; it is never "
                                f"replaced, {flag} or not: write elsewhere")
    if not beside_input:
        others = _other_checkpoints(path)
        if others:
            name = policy.checkpoint_of(os.path.basename(path))[0]
            raise OutputRefused(f"output {path!r} would be the checkpoint {name} in "
                                f"{os.path.dirname(os.path.abspath(path))!r}, which holds other checkpoints "
                                f"({policy.describe(others)}): a training run there resumes from the newest of them, "
                                f"so one run would continue from another's weights; write it into a folder of its own")
    if found is None:
        why = _unwritable(path)
        if why:
            raise OutputRefused(f"output {path!r} cannot be written: {why}")
        return
    if not (overwrite or is_update):
        raise OutputRefused(f"output {path!r} exists ({describe(found)}); pass {flag} to replace it")
    why = _unwritable(path)
    if why:
        raise OutputRefused(f"output {path!r} cannot be replaced: {why}")


def _other_checkpoints(path: str) -> list:
    """When `path`'s name makes it part of a checkpoint (`<prefix>.model-N.*`): the checkpoints of
    its folder other than that one (the checkpoint policy would resume the newest of them all)."""
    own = policy.checkpoint_of(os.path.basename(path))
    if own is None:
        return []
    return [f for f in policy.inventory(os.path.dirname(os.path.abspath(path)))
            if (os.path.basename(f.base), f.framework) != own]


def check_outputs(outputs, inputs, overwrite: bool, *, updates=(), beside_input_ok: bool = False,
                  flag: str = "--overwrite", input_name: str = "the input checkpoint",
                  beside_input_hint: str = "") -> None:
    """Raise OutputRefused for the first output that may not be written (module docstring).
    `outputs`: [(path, kind)] files the command writes; `inputs`: the checkpoint paths it reads
    (files, folders or TF prefixes); `updates`: [(path, kind)] files the command rewrites as an
    index of what it wrote (a TF `checkpoint` file): replaced without `flag` when of that kind,
    refused otherwise (torch2tf also refuses, without --overwrite, to re-point one that names
    another checkpoint still there, whatever its name: weights_convert._refuse_repointing);
    `beside_input_ok`: the output may lie in the input checkpoint's folder
    (`beside_input_hint`: how to ask for that, appended to the refusal); `input_name`: what the
    inputs are, for the message. The outputs are then claimed for this process (`claim`, until
    `release_claims`) and checked again, so a command that wrote one meanwhile is seen."""
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for p, _ in [*outputs, *updates]}):
        # a killed earlier write there: its files put back before they are judged, its temp files removed
        sweep_dead_temps(folder)
        sweep_dead_claims(folder)
    in_files = [f for p in inputs for f in input_files(p)] + [p for p in inputs if os.path.lexists(p)]
    in_folders = [f for f in (checkpoint_folder_of(p) for p in inputs if os.path.lexists(p) or _tf_prefix(p)) if f]
    every = [(p, k, False) for p, k in outputs] + [(p, k, True) for p, k in updates]
    for path, kind, is_update in every:
        _check_one(path, kind, is_update, in_files, in_folders, overwrite, beside_input_ok, flag, input_name,
                   beside_input_hint)
    taken = []
    try:
        for path, _ in outputs:
            if claim(path):
                taken.append(path)
        for path, kind, is_update in every:
            _check_one(path, kind, is_update, in_files, in_folders, overwrite, beside_input_ok, flag, input_name,
                       beside_input_hint)
    except BaseException:
        release_claims(taken)
        raise


# -- results: translated images, strips, GIFs, pages ------------------------------------------------

def _domain_folder_of(real: str) -> str | None:
    """The dataset image folder (`dataset/<name>/trainA|trainB|testA|testB`) that `real` is or lies
    in, else None."""
    d = real
    while True:
        if os.path.basename(d) in DOMAIN_FOLDERS and os.path.basename(os.path.dirname(os.path.dirname(d))) \
                == "dataset":
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def check_result_folders(folders, *, checkpoint: str | None = None, flag: str = "--result_dir") -> None:
    """Raise OutputRefused when one of `folders` (where a test phase or Morph interpolate /
    translate writes its results) may not receive them; checked before anything is written:
    - inside a folder a live training run owns (its checkpoint, sample or log folder: that run's
      alone, as for model files above);
    - inside the checkpoint folder being read (`checkpoint`: a folder, TF prefix or weights file):
      a run's checkpoint folder holds that run;
    - a dataset's image folder or a folder inside one (any `dataset/<name>/trainA|trainB|testA|
      testB`, what the trainers and test phases read): the next training run would take the
      results for training images (a training set grown by its own translations, silently).
      Beside the inputs elsewhere is allowed: results never take an input's name
      (ugatit_common.output_names)."""
    reading = None
    if checkpoint and (os.path.lexists(checkpoint) or _tf_prefix(checkpoint)):
        reading = checkpoint_folder_of(checkpoint)
    for folder in folders:
        real = os.path.realpath(folder)
        live = _live_owner(real)
        if live is not None:
            owned, holder = live
            raise OutputRefused(f"{flag}: results would go into {folder!r}, which lies in {owned!r}, a folder of a "
                                f"running training ({holder.describe()}); give {flag} a folder of its own")
        if reading and _inside(real, reading):
            raise OutputRefused(f"{flag}: results would go into {folder!r}, inside the checkpoint folder {reading!r} "
                                f"that is being read; give {flag} a folder outside it")
        domain = _domain_folder_of(real)
        if domain is not None:
            raise OutputRefused(f"{flag}: results would go into {folder!r}, "
                                + ("" if domain == real else f"inside {domain!r}, ")
                                + f"a dataset's image folder: the next training run (or test phase) would take "
                                  f"them for its images; give {flag} another folder")


# -- one results command per results folder -----------------------------------------------------------

@contextlib.contextmanager
def own_result_folder(folder: str, flag: str = "--result_dir"):
    """`with own_result_folder(folder):` hold the results folder `folder` for the block (the run
    lock of `.ugatit-results.lock` there; a folder made for it and left empty goes again). A test
    phase or Morph interpolate / translate writes its pictures and its page there; a second one
    into the same folder at the same time would write over the first's pictures of the same
    names and replace its page (listing the other run's pictures). The second is refused instead
    (OutputRefused, exit 2, naming the first: pid, command, start time) before it writes
    anything. A killed holder blocks nothing. Taken after check_result_folders."""
    try:
        lock = run_lock.acquire(folder, flag, lock_name=run_lock.RESULTS_LOCK_NAME,
                                owner_name=run_lock.RESULTS_OWNER_NAME)
    except run_lock.FolderInUse as e:
        raise OutputRefused(f"{flag}: results would go into {folder!r}, which another command is writing "
                            f"({e.holder.describe()}); wait for it to end, or give {flag} another folder") from None
    try:
        live = _live_owner(os.path.realpath(folder))  # a training run that took it since check_result_folders
        if live is not None and not live[1].is_this_process():
            raise OutputRefused(f"{flag}: results would go into {folder!r}, which lies in {live[0]!r}, a folder of a "
                                f"running training ({live[1].describe()}); give {flag} a folder of its own")
        yield lock
    finally:
        lock.release()
        run_lock.remove_created(lock)


# -- claims: one command per output file -------------------------------------------------------------

def recheck_live_run(path: str) -> None:
    """OutputRefused when a training run of another process now holds a folder at or above
    `path`'s: checked again right before a slow command (an export's verification) writes, as
    a run may have taken the folder since `check_outputs` looked."""
    live = _live_owner(os.path.realpath(os.path.dirname(os.path.abspath(path))))
    if live is not None and not live[1].is_this_process():
        folder, holder = live
        raise OutputRefused(f"output {path!r} lies in {folder!r}, which a training run took meanwhile "
                            f"({holder.describe()}); nothing was written: write it outside that folder")


CLAIM = ".ugatit-out"
_claims: dict = {}


def _claim_key(path: str) -> str:
    """The output named by its real folder and its own name (a link there is replaced, not followed)."""
    return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, APFS)


def _claim_stem(name: str) -> str:
    """The output's name as its claim files carry it (`.<stem>.ugatit-out.owner`): the name itself,
    or - when that would make a claim file's name longer than NAME_MAX (an output name of 240 bytes
    is legal) - its start and a hash of the whole name, so that two outputs never share a claim."""
    raw = os.fsencode(name)
    room = NAME_MAX - len(f".{CLAIM}.owner")
    if len(raw) <= room:
        return name
    import hashlib
    tag = "~" + hashlib.sha1(raw).hexdigest()[:16]
    return os.fsdecode(raw[:room - len(tag)]) + tag


def claim(path: str) -> bool:
    """Hold the output file `path` for this process until `release_claims`: the run lock
    (ugatit_common.run_lock) of `.<name>.ugatit-out.lock` beside it. Two commands given the same
    output at the same time both find nothing there when they check, and the later one would
    silently replace the earlier one's file (no --overwrite given): here the second is refused,
    naming the first (pid, command, start time). A killed holder blocks nothing. Returns whether
    this call took it (False: this process already holds it)."""
    key = _claim_key(path)
    if key in _claims:
        return False
    name = os.path.basename(key)
    if len(os.fsencode(name)) > NAME_MAX:
        raise OutputRefused(f"output {path!r}: its name is {len(os.fsencode(name))} bytes long, more than a file "
                            f"name may have ({NAME_MAX}); choose a shorter name")
    stem = _claim_stem(name)
    try:
        _claims[key] = run_lock.acquire(os.path.dirname(key), "output folder", lock_name=f".{stem}{CLAIM}.lock",
                                        owner_name=f".{stem}{CLAIM}.owner")
    except run_lock.FolderInUse as e:
        raise OutputRefused(f"output {path!r} is being written by another command ({e.holder.describe()}); wait "
                            f"for it to end, or choose another output name") from None
    return True


def _claim_owner(name: str) -> str | None:
    """The owner file of the claim lock file `name` (`.<stem>.ugatit-out.lock`), or None."""
    tail = CLAIM + ".lock"
    if name.startswith(".") and name.endswith(tail) and len(name) > 1 + len(tail):
        return name[: -len(".lock")] + ".owner"
    return None


def sweep_dead_claims(folder: str, log=print) -> list[str]:
    """Remove the claim files (`.<name>.ugatit-out.lock` / `.owner`) in `folder` that a killed
    command left (SIGKILL, a power cut: its atexit clean-up never ran), said in one line naming
    the command from its owner file; a claim of a command still running (its flock held) is left
    alone, whatever pid it names. The next command writing into that folder calls it
    (check_outputs, the report commands); a claim of the same output is also taken over by
    `claim`. Returns the lock files' names removed."""
    gone = run_lock.sweep_dead(folder, _claim_owner)
    if gone and log:
        who = sorted({h.describe() for _, h in gone})
        outputs = [n[1: -len(CLAIM + ".lock")] for n, _ in gone]
        log(f"note: {folder}: removed the claim files of {len(gone)} output(s) ({', '.join(outputs)}) left by a "
            f"command that ended without its clean-up ({'; '.join(who)})")
    return [n for n, _ in gone]


def release_claims(paths=None) -> None:
    """Let the outputs claimed by this process go (all, or those of `paths`); their lock files go too,
    and the folders the claim made while they are empty (a refused or failed command leaves none)."""
    locks = [_claims.pop(k) for k in [k for k in _claims if paths is None or k in {_claim_key(p) for p in paths}]]
    for lock in locks:
        lock.release()
    for lock in locks:  # after all: claims beside it hold lock files in the folder until then
        run_lock.remove_created(lock)


atexit.register(release_claims)


def place_output(out: str, kind, inputs, overwrite: bool, default_name: str, *, log=print,
                 flag: str = "--overwrite", input_name: str = "the input checkpoint") -> str:
    """The file to write for the output argument `out` (a file, or a folder: `default_name`
    inside it, said through `log`), checked by check_outputs; raises OutputRefused. `kind`: the
    output's kind, or a function of the file path giving it (e.g. by its extension)."""
    path, folder = as_file(out, default_name)
    check_outputs([(path, kind(path) if callable(kind) else kind)], inputs, overwrite, flag=flag,
                  input_name=input_name)
    if folder and log:
        log(f"note: {out!r} is a folder: the output goes into it as {default_name}")
    return path
