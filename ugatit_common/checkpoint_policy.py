"""The checkpoint policy of tf_reference, torch_port and morph (numpy-free, torch-free, TF-free).

One checkpoint folder holds one run. What is in it is read from the file names (`inventory`):
    torch  <prefix>.model-N.safetensors + <prefix>.model-N.state.pt   (+ the `latest` pointer)
    TF     <prefix>.model-N.index + <prefix>.model-N.data-*           (+ the `checkpoint` file)
Subfolders (older runs moved aside, unusable checkpoints) are never looked at.

- Resume: the newest checkpoint by step wins, whichever framework wrote it (at the same step the
  torch one, which also holds the data-loader and RNG positions). If it is incomplete or
  unreadable (damaged: not a file this user may not read, nor one `ulimit -n` kept
  closed: those stop the run, `CannotRead`), the next newest is tried, and the run says so; a training run moves the ones it
  skipped into `unusable/` (so the new run never overwrites or is shadowed by them). When
  checkpoints exist but none can be read, the run stops (exit 2): never from scratch. A test
  phase (need="weights") restores instead an older TF checkpoint that the folder's `checkpoint`
  state file names, as the official `load` does, unless a PyTorch one is newer (`_test_phase_choice`).
- `--resume False` (torch_port) with checkpoints in the folder: they are moved into
  `previous-run-<time>/` beside them, and the run says where; nothing is deleted. A run (of any
  of the three) that starts from scratch moves an older run's files in its sample / log folders aside the same way
  (`move_outputs_of_an_older_run`: that run's checkpoints are elsewhere), never cutting its loss
  log or overwriting its samples.
- Pruning deletes only checkpoints of the run being trained (its `run` id, stored in each
  checkpoint and inherited on resume), never the newest, never the one `latest` names.
- Temp files of killed saves (`.tmp-*`, TF's `*.tempstate*`, `<name>.tmp<32 hex>` such as
  `checkpoint.tmp…` or `<prefix>.model-N.meta.tmp…`, and `<prefix>.model-N_temp*`) are swept when
  a run starts writing into the folder, and after a failed save.
- One owner per run folder (`own_run`, ugatit_common.run_lock): a training run locks its
  checkpoint, sample and log folders before it reads, sweeps or moves anything in them and
  holds them to its end; a second run into a held folder stops (exit 2) naming the holder. The
  folders a killed run left locked are taken over, said in one `note:` line (`takeover_note`). The
  steps that change a folder (`sweep_temp` of a run folder, `move_previous_run`,
  `move_previous_outputs`, `set_aside`, `choose`'s setting aside) take that lock (`owner`) and
  refuse to act without it (`run_lock.NotOwner`, a bug).
- A run records its options in `ugatit-run.json` (`write_run_record`), written atomically when it
  starts from scratch, before its first checkpoint: a light model's image size is in no weight,
  and TF's Saver writes a checkpoint's `.meta` (which records it) last, so a run whose first
  checkpoint lost its `.meta` would otherwise record no size (`run_image_size`). It is moved
  aside with the older run (`--resume False`); TF's reader ignores it, weights_convert.py tf2torch
  takes the image size and flags it holds (ugatit_common.recorded_config).
- A torch checkpoint's weights and state file must be one pair (`pairing_problem`: the run id,
  the step, the kind and the config they record agree); one that is not is unusable like a
  damaged one.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass, field

from . import run_lock
from .held_signals import signals_held
from . import options as opt
from . import strict_json
from .machine_limits import limit_error
from .atomic import abandoned, journal_file, recover_interrupted_writes, write_bytes_atomic
from .options import OptionError

POINTER = "latest"          # torch_port's pointer file
TF_STATE = "checkpoint"     # tf.train.Saver's state file
RUN_RECORD = "ugatit-run.json"  # the run's options (write_run_record), beside its checkpoints
CONVERTER = "weights_convert.py torch2tf"  # a run record's writer for a converted checkpoint (not a run's start)
UNUSABLE = "unusable"
PREVIOUS = "previous-run-"

_TORCH = re.compile(r"^(?P<prefix>.+)\.model-(?P<step>\d+)\.(?P<part>safetensors|state\.pt)$")
_TF = re.compile(r"^(?P<prefix>.+)\.model-(?P<step>\d+)\.(?P<part>index|meta|data-\d{5}-of-(?P<shards>\d{5}))$")
# TF's atomic_write_string_to_file writes `<name>.tmp<uuid4 hex>` (the `checkpoint` state file, a
# Saver's `.meta`) and leaves it behind when the write fails (a full disk); the framework-free
# BundleWriter (weights_convert.py torch2tf) writes `.<prefix>.data.<rand>.tmp`, `.<prefix>.index.
# <rand>.tmp` and `.checkpoint.<rand>.tmp`, left only when the process is killed
_TEMP = re.compile(r"^(\.tmp-.*|.*\.tempstate\d*|.*\.model-\d+_temp.*|checkpoint\.tmp[0-9a-f]+|.+\.tmp[0-9a-f]{32}"
                   r"|\..+\.(data|index)\.\w+\.tmp|\.checkpoint\.\w+\.tmp)$")
_LOCK_FILES = (run_lock.LOCK_NAME, run_lock.OWNER_NAME)


class NoUsableCheckpoint(OptionError):
    """Checkpoints exist but none can be used: the run stops instead of starting from scratch."""


@dataclass
class Found:
    """One checkpoint (both frameworks): step, framework, files present, what is missing."""
    step: int
    framework: str                  # "torch" | "tf"
    prefix: str                     # model name, e.g. UGATIT_light
    base: str                       # <folder>/<prefix>.model-<step>
    files: list = field(default_factory=list)
    missing: str = ""               # "" when complete

    @property
    def name(self) -> str:
        return f"{self.prefix}.model-{self.step} ({'TensorFlow' if self.framework == 'tf' else 'PyTorch'})"

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def has_weights(self) -> bool:
        """Usable by a test phase: torch weights file present, or a complete TF bundle."""
        if self.framework == "torch":
            return os.path.isfile(self.base + ".safetensors")
        return self.complete

    @property
    def weights(self) -> str:
        return self.base + ".safetensors" if self.framework == "torch" else self.base


def inventory(folder: str, prefer: str = "torch") -> list[Found]:
    """Every checkpoint in `folder`, newest first (at equal steps the `prefer` framework's first).
    A multi-file write there killed half way is rolled back first (atomic.recover_interrupted_writes)."""
    if not os.path.isdir(folder):
        return []
    recover_interrupted_writes(folder)
    found: dict[tuple, Found] = {}
    names = os.listdir(folder)
    for n in names:
        p = os.path.join(folder, n)
        if not os.path.isfile(p):
            continue
        m = _TORCH.match(n) or _TF.match(n)
        if not m:
            continue
        fw = "torch" if m.re is _TORCH else "tf"
        key = (int(m.group("step")), fw, m.group("prefix"), m.group("step"))  # (digits as written)
        f = found.setdefault(key, Found(key[0], fw, key[2], os.path.join(folder, f"{key[2]}.model-{key[3]}")))
        f.files.append(p)
    for (_, fw, prefix, step), f in found.items():
        have = {os.path.basename(p)[len(prefix) + len(f".model-{step}"):] for p in f.files}
        if fw == "torch":
            lack = [s for s in (".safetensors", ".state.pt") if s not in have]
        else:
            lack = [] if ".index" in have else [".index"]
            data = [s for s in have if s.startswith(".data-")]
            if not data:
                lack.append(".data-00000-of-00001")
            else:
                total = int(data[0][-5:])
                want = {f".data-{i:05d}-of-{total:05d}" for i in range(total)}
                lack += sorted(want - set(data))
        if lack and fw == "tf" and ".index" in lack and os.path.isfile(f.base):
            # `<prefix>.model-N` itself (beside its .meta): TF1's V1 format, one file and no .index
            from .tf_checkpoint.bundle import v1_error  # numpy: only for this rare find
            f.missing = v1_error(f.base)
        elif lack:
            f.missing = "no " + ", ".join(prefix + f".model-{step}" + s for s in lack)
    return sorted(found.values(), key=lambda f: (-f.step, f.framework != prefer, f.prefix))


def checkpoint_of(file_name: str) -> tuple[str, str] | None:
    """(`<prefix>.model-N`, framework "torch" | "tf") when `inventory` reads a file of that name
    as part of that checkpoint, else None."""
    m = _TORCH.match(file_name) or _TF.match(file_name)
    if not m:
        return None
    return f"{m.group('prefix')}.model-{m.group('step')}", "torch" if m.re is _TORCH else "tf"


def _holds_checkpoint(folder: str) -> bool:
    """Whether `folder` directly holds a file of a checkpoint (by name; nothing is opened or moved)."""
    try:
        return any(checkpoint_of(n) for n in os.listdir(folder))
    except OSError:
        return False


def _morph_run(folder: str) -> bool:
    """Whether `folder` holds a Morph-UGATIT run's checkpoint (its files are named MorphUGATIT_<config>)."""
    try:
        return any(n.startswith("MorphUGATIT_") and checkpoint_of(n) for n in os.listdir(folder))
    except OSError:
        return False


def where_checkpoints_are(run_folder: str, cfg: dict) -> str:
    """For a test phase that found no checkpoint in `run_folder` (`<checkpoint_dir>/<model_dir>`):
    what `--checkpoint_dir` holds instead, as `; ...` (empty when nothing). The commonest slips
    with a downloaded folder: `--checkpoint_dir` naming the run folder itself, and flags whose
    model_dir is not the folder's name (another --dataset, --light, --n_dis ...: each run folder's
    name records them, and the differing ones are named)."""
    parent = os.path.dirname(os.path.normpath(run_folder))
    if _holds_checkpoint(parent):
        return (f"; --checkpoint_dir {parent!r} is itself a run folder holding checkpoints: give the folder "
                f"above it ({os.path.dirname(os.path.normpath(parent)) or '.'!r}), where the run folder "
                f"{os.path.basename(os.path.normpath(parent))!r} must match the flags")
    try:
        runs = sorted(n for n in os.listdir(parent) if _holds_checkpoint(os.path.join(parent, n)))
    except OSError:
        return ""
    if not runs:
        return ""
    from .tf_checkpoint.config import parse_model_dir  # numpy: only for this error
    lines = []
    def differing(recorded):
        return [f"--{k} {v}" for k, v in (recorded or {}).items() if k in cfg and cfg[k] != v]
    for name in runs[:5]:
        # `UGATIT_light_x_...` reads as a light run on x or a full one on light_x: name the reading
        # nearer the flags (a tie: the light one; `--light False --dataset x` is the slip, not light_x)
        differ = min((differing(parse_model_dir(name, light)) for light in (True, False)), key=len)
        if _morph_run(os.path.join(parent, name)):  # not this command's model, whatever its name records
            lines.append(f"{name!r} (a Morph-UGATIT run: python -m morph interpolate / translate reads it)")
            continue
        lines.append(f"{name!r}" + (f" (its name records {', '.join(differ)})" if differ else ""))
    return (f"; --checkpoint_dir {parent!r} holds the run folder(s) {'; '.join(lines)}"
            + (" ..." if len(runs) > 5 else "") + ": the flags name the run folder (<model_dir>)")


def describe(found: list[Found]) -> str:
    return ", ".join(f.name + ("" if f.complete else f" [incomplete: {f.missing}]") for f in found) or "none"


def _unique(path: str) -> str:
    out, i = path, 1
    while os.path.exists(out):
        out, i = f"{path}-{i}", i + 1
    return out


def move_files(paths: list[str], dest: str, done: list | None = None) -> str:
    """Move files into `dest` (created); a name already there gets a numbered suffix. `done`:
    gets (source, destination) of each move made, and ("", dest) when dest was created."""
    if done is not None and not os.path.isdir(dest):
        os.makedirs(dest)
        done.append(("", dest))
    os.makedirs(dest, exist_ok=True)
    for p in paths:
        if os.path.exists(p):
            to = _unique(os.path.join(dest, os.path.basename(p)))
            os.replace(p, to)
            if done is not None:
                done.append((p, to))
    return dest


def move_older_run_aside(folder: str, outputs, owner, log=print, on_moved=None) -> str | None:
    """`--resume False`: the older run's checkpoints in `folder`, then its files in each of the
    `outputs` folders, moved into `previous-run-<time>/` (move_previous_run, move_previous_outputs)
    as one step: an error, Ctrl-C or SIGTERM half way moves every file back (the older run whole,
    as before the command). Ctrl-C / SIGTERM are held while the files move (held_signals), so one
    never falls between a move and its record, nor into the moving back; one that came meanwhile
    moves every file back too, then stops the command. `on_moved()`: called once all have moved,
    still under that hold (the command's note that --resume False took effect). Its oldest
    checkpoints go first and the pointer files last, so even a kill half way leaves the older run
    resumable from its newest checkpoint. Returns the folder name used, or None when there was
    nothing to move."""
    done = []
    with signals_held() as got:
        try:
            moved = move_previous_run(folder, owner, log, done=done)
            if moved:
                for out in outputs:
                    move_previous_outputs(out, os.path.basename(moved), owner, log, done=done)
        except BaseException:
            _move_back(done, "--resume False", log)
            raise
        if got:  # Ctrl-C / SIGTERM came while they moved: raised again once this block ends
            _move_back(done, "--resume False", log)
            return None
        if on_moved is not None:
            on_moved()
    return moved


def _move_back(done: list, why: str, log=print) -> None:
    """Undo the moves `done` ((source, destination); ("", folder): a folder made), newest first,
    and say so: every file back where it was, or the ones that could not be moved back."""
    failed = []
    for src, dst in reversed(done):
        try:
            os.rmdir(dst) if not src else os.replace(dst, src)
        except OSError as e:
            if src:
                failed.append(f"{dst} (back to {src}: {e.strerror or e})")
    if failed:
        log(f" [!] {why} was interrupted and {len(failed)} file(s) could not be moved back: {'; '.join(failed)}")
    elif done:
        log(f" [*] {why} was interrupted: the older run's files were moved back where they were")


def set_aside(folder: str, found: list[Found], why: str, owner, log=print) -> str | None:
    """Move checkpoints a training run cannot use into `<folder>/unusable/` (never deleted); only
    the run holding the folder (`owner`) does."""
    files = [p for f in found for p in f.files]
    if not files:
        return None
    run_lock.require(owner, folder, "setting unusable checkpoints aside")
    dest = move_files(files, os.path.join(folder, UNUSABLE))
    log(f" [!] moved {describe(found)} to {dest}/ ({why}); nothing was deleted")
    return dest


def move_previous_run(folder: str, owner, log=print, done: list | None = None) -> str | None:
    """`--resume False`: move every checkpoint file (and the pointer files) of an older run in
    `folder` into `<folder>/previous-run-<time>/`. Returns that folder, or None when empty. Only
    the run holding the folder (`owner`) does."""
    run_lock.require(owner, folder, "moving an older run aside")
    found = inventory(folder)
    extra = [os.path.join(folder, n) for n in (POINTER, TF_STATE) if os.path.isfile(os.path.join(folder, n))]
    if not found and not extra:  # (a run record alone: of a run that saved nothing; the new run replaces it)
        return None
    if os.path.isfile(os.path.join(folder, RUN_RECORD)):  # the older run's options go with it
        extra.append(os.path.join(folder, RUN_RECORD))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = _unique(os.path.join(folder, PREVIOUS + stamp))
    move_files([p for f in reversed(found) for p in sorted(f.files)] + extra, dest, done)  # oldest first
    log(f" [*] --resume False: the older run's checkpoints ({describe(found)}) were moved to {dest}/ "
        f"(nothing deleted); this run starts from scratch")
    return dest


def move_previous_outputs(folder: str, dest_name: str, owner, log=print, why: str = "--resume False",
                          done: list | None = None) -> str | None:
    """`--resume False`: move the files (not subfolders) an older run left in an output folder
    (samples, loss logs) into `<folder>/<dest_name>/`, so the new run overwrites none of them.
    Only the run holding the folder (`owner`, see `own_run`) does. `why`: the message's cause."""
    if not os.path.isdir(folder):
        return None
    run_lock.require(owner, folder, "moving an older run's outputs aside")
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
             if os.path.isfile(os.path.join(folder, n)) and not _TEMP.match(n) and n not in _LOCK_FILES]
    if not files:
        return None
    dest = move_files(files, os.path.join(folder, dest_name), done)
    log(f" [*] {why}: the older run's {len(files)} file(s) in {folder} were moved to {dest}/")
    return dest


def move_outputs_of_an_older_run(folders, owner, log=print) -> str | None:
    """A training run that starts from scratch (no checkpoint to resume in its checkpoint folder)
    while its sample or log folder holds an older run's files - that run's checkpoints are
    elsewhere (another --checkpoint_dir with the same --log_dir / --sample_dir) or were removed:
    those files (its loss log, samples, event files) are moved into `<folder>/previous-run-<time>/`
    of each folder, as `--resume False` moves them, instead of being cut (the loss log is cut to
    the steps before the resumed counter: all of it, from scratch) or overwritten (samples of the
    same names). Only the run holding the folders (`owner`). Returns the name used, or None when
    nothing was there."""
    name = PREVIOUS + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    used, done = None, []
    with signals_held() as got:  # all folders' files moved, or (an error, Ctrl-C, SIGTERM) none
        try:
            for folder in folders:
                if not os.path.isdir(folder):
                    continue
                dest = move_previous_outputs(folder, os.path.basename(_unique(os.path.join(folder, name))), owner,
                                             log, why="starting from scratch", done=done)
                used = used or dest
        except BaseException:
            _move_back(done, "setting the older run's outputs aside", log)
            raise
        if got:
            _move_back(done, "setting the older run's outputs aside", log)
            return None
    return used


def sweep_temp(folder: str, log=print, owner=None) -> list[str]:
    """Remove temp files of killed saves in `folder` (not in subfolders). Returns what went.
    A run's own folder: only by the run holding it (`owner`). Without `owner` (a test phase's
    results folder) a folder that another run holds is left alone: its temp files are that
    run's saves in progress; and so is a temp file whose writer still runs (another test phase
    writing its page there: ugatit_common.atomic.abandoned). There only the atomic writers'
    temp files go (`.tmp-...` regular files): never a folder, a link, or a name of TF's saves
    (a test phase makes none; `cat.model-5_temp.png` is the picture of an input so named)."""
    gone = []
    if not os.path.isdir(folder):
        return gone
    if owner is not None:
        run_lock.require(owner, folder, "sweeping temp files")
    elif run_lock.held_by(folder) is not None:
        return gone
    recover_interrupted_writes(folder, log)  # its backups are temp files: put back before they go
    for n in sorted(os.listdir(folder)):
        if not _TEMP.match(n) or journal_file(n):  # a journal left for the user (and its backups) stays
            continue
        p = os.path.join(folder, n)
        if owner is None and (abandoned(p) is False  # a running command's write in progress
                              or not n.startswith(".tmp-") or os.path.islink(p) or not os.path.isfile(p)):
            continue
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)
            gone.append(n)
        except FileNotFoundError:
            pass
    if gone:
        log(f" [*] removed {len(gone)} temp file(s) of interrupted saves in {folder}: {', '.join(gone[:5])}")
    return gone


RUN_FOLDERS = (("checkpoint", "--checkpoint_dir"), ("sample", "--sample_dir"), ("log", "--log_dir"))


# output_guard.claim's lock of one output file being written: `.<name>.ugatit-out.lock` (+ `.owner`)
_CLAIM_LOCK = re.compile(r"^\.(?P<name>.+)\.ugatit-out\.lock$")


def _output_being_written(folder: str):
    """(output name, holder) of an output another command (weights_convert, an export) is writing
    into `folder` at this moment (its live output_guard claim), or None."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for n in names:
        m = _CLAIM_LOCK.match(n)
        if not m:
            continue
        holder = run_lock.held_by(folder, lock_name=n, owner_name=n[: -len(".lock")] + ".owner")
        if holder is not None:
            return m.group("name"), holder
    return None


def own_run(paths, command: str | None = None, log=print) -> "run_lock.RunLocks":
    """Lock the folders a training run writes (`paths.checkpoint`, `.sample`, `.log`: an
    options.Paths), checkpoint folder first, before anything in them is read, swept or moved;
    hold the result for the run's life and `release()` it at the end. Another run holding one of
    them: run_lock.FolderInUse (exit 2) naming the folder and the holder's pid, command and start
    time, with nothing changed. So is a folder into which another command (weights_convert, an
    export) is writing an output right now (its output_guard claim): the run would sweep that
    command's temp file as a killed save's, or train beside the file it is about to drop there.
    That command checks again once it has claimed its output, so of the two the later is refused.
    So is a folder a test phase (or Morph interpolate / translate) is writing its results into
    (output_guard.own_result_folder; e.g. --sample_dir and --result_dir both `results`): the run
    would sweep its page's temp file and move its pictures aside as an older run's samples; that
    command refuses a folder a run holds, so of the two the later is refused. Folders whose lock a
    run that is no longer running left behind (killed: its clean-up never ran) are taken over,
    said in one `note:` line (`takeover_note`) through `log`."""
    folders = [(getattr(paths, attr), flag) for attr, flag in RUN_FOLDERS]
    locks = run_lock.acquire_all(folders, command)
    try:
        for folder, flag in folders:
            busy = _output_being_written(folder)
            if busy:
                name, holder = busy
                raise run_lock.FolderInUse(f"{flag} {folder!r}: another command is writing {name!r} into it "
                                           f"({holder.describe()}); wait for it to end, or give this run another "
                                           f"folder", holder)
            holder = run_lock.held_by(folder, run_lock.RESULTS_LOCK_NAME, run_lock.RESULTS_OWNER_NAME)
            if holder is not None:
                raise run_lock.FolderInUse(f"{flag} {folder!r}: another command is writing its results into it "
                                           f"({holder.describe()}); wait for it to end, or give this run another "
                                           f"folder", holder)
    except BaseException:
        for lock in reversed(locks.locks):
            lock.release()
            run_lock.remove_created(lock)
        raise
    note = takeover_note(locks.taken_over(), folders)
    if note and log:
        log(note)
    return locks


def takeover_note(taken, folders) -> str | None:
    """The one line of a run that took over folders (`taken`: [(folder, run_lock.Holder)] from
    RunLocks.taken_over) whose lock a run no longer running left behind, each named with its flag
    (`folders`: [(folder, flag)]) and that run's pid, start and command where its owner file says;
    None when there were none (a clean start)."""
    if not taken:
        return None
    groups: dict[str, list[str]] = {}
    for folder, holder in taken:
        flag = next((f for d, f in folders if os.path.realpath(d) == os.path.realpath(folder)), "folder")
        who = holder.describe() if holder.pid is not None else "pid unknown: no readable owner file"
        groups.setdefault(who, []).append(f"{flag} {folder!r}")
    parts = [f"{', '.join(names)} (left by {who})" for who, names in groups.items()]
    return (f"note: took over the folder(s) of a run that is no longer running (it ended without its clean-up, "
            f"e.g. killed): {'; '.join(parts)}")


def state_file_named(folder: str, found: list[Found]) -> Found | None:
    """The TF checkpoint of `found` (the inventory of `folder`) that the folder's `checkpoint` state
    file names, by its path's last part as the official `load` restores it (tf_checkpoint.bundle
    `_named_prefix`, as resolve_prefix reads it); None without a state file, one naming nothing
    here, or one that cannot be read."""
    if not os.path.isfile(os.path.join(folder, TF_STATE)):
        return None
    from .tf_checkpoint.bundle import CheckpointError, _named_prefix, read_checkpoint_state  # numpy: only here
    try:
        model = read_checkpoint_state(folder)[0]
    except CheckpointError:
        return None
    prefix = _named_prefix(folder, model) if model else None
    if prefix is None:
        return None
    return next((f for f in found if f.framework == "tf" and os.path.abspath(f.base) == os.path.abspath(prefix)),
                None)


def _test_phase_choice(folder: str, found: list[Found]) -> Found | None:
    """The test phase's exception to newest-by-step: the TF checkpoint the folder's `checkpoint`
    state file names, when it is older than the newest (TF users pick a test checkpoint by editing
    that file, and the official `load` restores the one it names). Not when a PyTorch checkpoint
    is newer than it: the port continued the run, and the state file is TF's last save, not a
    choice. None: the newest usable, as a training run resumes."""
    named = state_file_named(folder, found)
    if named is None or named.step >= found[0].step:
        return None
    if any(f.framework == "torch" and f.step > named.step for f in found):
        return None
    return named


class CannotRead(OSError):
    """A checkpoint file this user may not read, or a limit of the machine met reading it: not a
    damaged checkpoint, so never skipped for an older one nor set aside (`choose` stops instead)."""

    def __str__(self):
        return self.strerror


def check_readable(path: str, what: str = "checkpoint file") -> None:
    """CannotRead when `path` cannot be opened for a reason that is not the file's content: its
    permissions (a chmod, another user's file) or a limit of the machine (`ulimit -n`); libraries
    that open it themselves say neither (safetensors: "No such file or directory"). Any other
    failure (gone, a folder) is left for the reader to say."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise CannotRead(e.errno, f"{what} {path!r} is not readable by this user ({e.strerror}): make it "
                                      f"readable (chmod u+r) and run again; nothing was skipped or moved") from None
        limit = limit_error(e, f"cannot read {what} {path!r}")
        if limit is not None:
            raise CannotRead(limit.errno, limit.strerror) from None
        return
    os.close(fd)


def _readable(f: Found, need: str) -> None:
    """`check_readable` of each file of checkpoint `f` that `need` reads (a test phase: a torch
    checkpoint's weights alone; never a TF `.meta`, which the readers read past when they cannot)."""
    for p in ([f.weights] if need != "train" and f.framework == "torch" else sorted(f.files)):
        if not p.endswith(".meta"):
            check_readable(p)


def _load_or_stop(f: Found, load, need: str):
    """`load(f)`, stopping with CannotRead (not skipping `f`) where `_readable` finds a file of it
    unreadable by permissions or where the load failed on a limit of the machine."""
    _readable(f, need)
    try:
        return load(f)
    except (KeyboardInterrupt, SystemExit, OptionError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised, or said by the caller
        limit = limit_error(e, f"cannot read checkpoint {f.name} in {os.path.dirname(f.base)!r}")
        if limit is None:
            raise
    raise CannotRead(limit.errno, limit.strerror)


def choose(folder: str, load, need: str = "train", log=print, owner=None, prefer: str = "torch"):
    """Load the newest usable checkpoint of `folder`: `load(found)` returns its content or raises
    (any Exception = unreadable). Returns (found, content), or None when the folder holds no
    checkpoint at all. Skipped ones are named; with `owner` (a training run holding the folder)
    they are moved to `unusable/`. Checkpoints that exist but none usable: NoUsableCheckpoint
    (exit 2). need="weights" (a test phase): an older TF checkpoint the folder's `checkpoint`
    file names is used instead, with a `note:` line (`_test_phase_choice`); if it is incomplete
    or unreadable, that is said and the newest usable is used. A checkpoint whose files vanish
    while it is read (a training run there pruned it) is not unusable: the folder is looked at again."""
    return look_again_while_pruned(lambda retry: _choose_once(folder, load, need, log, owner, prefer, retry))


def look_again_while_pruned(once):
    """`once(retry)`, called again while it raises Vanished (a run writing the folder pruned a
    checkpoint while it was read), at most VANISHED_TRIES times; the last call has retry=False
    (it says what it finds instead of raising Vanished)."""
    for _ in range(VANISHED_TRIES - 1):
        try:
            return once(True)
        except Vanished:
            continue
    return once(False)


# A reader (a test phase, an export) that finds a checkpoint's files gone while it reads them (a
# training run writing the folder saved a newer one and pruned this one) looks at the folder again,
# this often, instead of calling the folder unusable; each retry means one checkpoint deleted meanwhile
VANISHED_TRIES = 20


class Vanished(Exception):
    """A checkpoint `choose` listed lost a file before or while it was loaded."""


def vanished(f: Found) -> bool:
    """Whether a file the inventory found for `f` is no longer there (pruned or moved meanwhile)."""
    return any(not os.path.lexists(p) for p in f.files)


def _choose_once(folder: str, load, need: str, log, owner, prefer: str, retry: bool):
    """One look at `folder` for `choose`; Vanished (when `retry`) where a checkpoint it listed
    lost a file before its load succeeded, so that the look starts again from a new inventory."""
    found = inventory(folder, prefer)
    if not found:
        return None
    skipped = []
    named = _test_phase_choice(folder, found) if need == "weights" else None
    if named is not None:
        why = "" if named.has_weights else named.missing
        if not why:
            try:
                content = _load_or_stop(named, load, need)
            except (KeyboardInterrupt, SystemExit, OptionError, CannotRead):
                raise
            except Exception as e:  # noqa: BLE001 - unreadable: the newest usable instead, as without the file
                why = _reason(e)
            else:
                newest = found[0]
                log(f"note: the folder's `checkpoint` file names {os.path.basename(named.base)} (step {named.step}), "
                    f"the one TensorFlow's loader (the official code) restores, while the newest checkpoint in "
                    f"{folder!r} is {os.path.basename(newest.base)} (step {newest.step}, "
                    f"{'TensorFlow' if newest.framework == 'tf' else 'PyTorch'}): translating with step {named.step}; to "
                    f"translate with the newest, give it with --checkpoint {newest.weights!r} (python -m torch_port) "
                    f"or name it in the `checkpoint` file (model_checkpoint_path: "
                    f"\"{os.path.basename(newest.base)}\")")
                return named, content
        if retry and vanished(named):
            raise Vanished()
        log(f" [!] checkpoint {named.name} in {folder}, which its `checkpoint` file names, is unusable ({why}); "
            f"using the newest usable checkpoint instead")
    for f in found:
        if f is named:  # tried above, and said
            skipped.append((f, why))
            continue
        usable = f.complete if need == "train" else f.has_weights
        if not usable:
            if retry and vanished(f):
                raise Vanished()
            skipped.append((f, f.missing))
            continue
        try:
            content = _load_or_stop(f, load, need)
        except (KeyboardInterrupt, SystemExit, OptionError, CannotRead):
            raise
        except Exception as e:  # noqa: BLE001 - an unreadable file means "not this one"
            if retry and vanished(f):
                raise Vanished() from e
            skipped.append((f, _reason(e)))
            continue
        if skipped:
            for s, why in skipped:
                if s is not named:
                    log(f" [!] checkpoint {s.name} in {folder} is unusable ({why})")
            log(f" [!] using {f.name} instead, the newest usable checkpoint")
            if owner is not None:
                set_aside(folder, [s for s, _ in skipped], "unusable, skipped by this run", owner, log)
        return f, content
    lines = "; ".join(f"{s.name}: {why}" for s, why in skipped)
    hint = ("to start a new run anyway, move them elsewhere or pass --resume False (they are then "
            "moved aside, not deleted)" if need == "train" else "train first, or point at another checkpoint folder")
    raise NoUsableCheckpoint(f"checkpoint folder {folder!r} holds checkpoints but none can be used ({lines}); "
                             f"{hint}")


def _reason(e: BaseException) -> str:
    from .cli_errors import tf_error_text
    text = " ".join(tf_error_text(str(e)).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- run ids and pruning ----------------------------------------------------------------------------

def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def recorded_step(value, source: str) -> int:
    """The step a checkpoint file records (`value`, from its metadata or state; None or "": 0) as a
    whole number >= 0; OptionError naming `source` otherwise - never int()'s bare message, nor a
    negative step (torch2tf would name its prefix `<name>.model--5`)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        step = None
    else:
        try:
            step = int(value)
        except (TypeError, ValueError, OverflowError):
            step = None
    if step is None or step < 0:
        raise OptionError(f"{source!r} records step {value!r}: expected a whole number >= 0 (the training step "
                          f"it was saved at)")
    return step


def safetensors_metadata(path: str) -> dict:
    """The `__metadata__` of a safetensors file (header only; {} when unreadable)."""
    try:
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n > 100 << 20:
                return {}
            return dict(json.loads(fh.read(n)).get("__metadata__") or {})
    except (OSError, ValueError, struct.error):
        return {}


class NotOnePair(Exception):
    """A torch checkpoint whose weights file and state file were not written together: unusable,
    like a damaged one (named, set aside by a training run, the next newest used)."""


# what weights_convert.py tf2torch writes into a converted file's metadata and a trainer never does
_CONVERTED_KEYS = ("ugatit_config", "source")


def _same_value(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def pairing_problem(step: int, weights_meta: dict, state: dict) -> str | None:
    """Why the weights file (its safetensors metadata, `weights_meta`) and the state file
    (`state`) named for step `step` are not one checkpoint, or None when they are.

    A trainer's save writes both from one state: the weights' metadata records its step, run id,
    kind and config (`torch_port.checkpoint.save`). So: a converted file (weights_convert.py
    tf2torch) is never the pair of a state file; run ids recorded on both sides agree, and a state
    file that records one needs weights that record it too (run ids came to both files in the
    same version); every step recorded (weights `step`, state `step` and `counter`, the one the
    loop continues from) is `step`; kinds and the config keys recorded on both sides agree. A
    state file from before run ids (none recorded, e.g. Morph's earlier loop) is matched on the
    rest; weights from before run ids (their step alone recorded) pair with such a state only."""
    meta = dict(weights_meta or {})
    if any(k in meta for k in _CONVERTED_KEYS):
        src = meta.get("source")
        return ("the weights file was written by weights_convert.py tf2torch" + (f" from {src!r}" if src else "")
                + ", not by the training run that wrote the state file")
    s_run, w_run = state.get("run"), meta.get("run")
    if s_run and w_run and str(s_run) != str(w_run):
        return f"the weights belong to run {w_run}, the state to run {s_run}"
    if s_run and not w_run:
        return f"the state belongs to run {s_run}, the weights record no run (they were not saved with it)"
    for what, value in (("the weights file", meta.get("step")), ("the state file", state.get("step")),
                        ("the state file's counter", state.get("counter"))):
        if value is None:
            continue
        try:
            recorded = int(value)
        except (TypeError, ValueError):
            return f"{what} records step {value!r}, not a number"
        if recorded != int(step):
            return f"{what} records step {recorded}, the file name says {int(step)}"
    s_kind, w_kind = state.get("kind"), meta.get("kind")
    if s_kind and w_kind and str(s_kind) != str(w_kind):
        return f"the weights are of kind {w_kind!r}, the state of kind {s_kind!r}"
    s_cfg = state.get("config")
    if meta.get("config") and isinstance(s_cfg, dict):
        try:
            w_cfg = json.loads(meta["config"])
        except ValueError:
            return "the weights file's config is not readable JSON"
        if isinstance(w_cfg, dict):
            differ = [k for k in sorted(set(w_cfg) & set(s_cfg)) if not _same_value(w_cfg[k], s_cfg[k])]
            if differ:
                return "their configs differ: " + ", ".join(
                    f"{k}={w_cfg[k]!r} (weights) vs {s_cfg[k]!r} (state)" for k in differ[:3]) + (
                    f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    return None


def pointer_target(folder: str) -> str | None:
    """The weights file `latest` names (basename), or None."""
    try:
        with open(os.path.join(folder, POINTER)) as fh:
            return json.load(fh).get("weights")
    except (OSError, ValueError, AttributeError):
        return None


def prunable(folder: str, prefix: str, run_id: str, keep: int) -> list[Found]:
    """This run's torch checkpoints beyond the newest `keep`, never the newest in the folder and
    never the one `latest` names."""
    if keep is None or keep < 1:
        return []
    everything = inventory(folder)
    if not everything:
        return []
    newest = everything[0]
    named = pointer_target(folder)
    own = [f for f in everything if f.framework == "torch" and f.prefix == prefix
           and safetensors_metadata(f.base + ".safetensors").get("run") == run_id]
    return [f for f in own[keep:] if f is not newest and os.path.basename(f.base + ".safetensors") != named]


def prune(folder: str, prefix: str, run_id: str, keep: int) -> list[Found]:
    gone = prunable(folder, prefix, run_id, keep)
    for f in gone:
        for suffix in (".state.pt", ".safetensors"):  # state first: half-deleted = incomplete
            try:
                os.remove(f.base + suffix)
            except FileNotFoundError:
                pass
    return gone


class RunRecordDamaged(OptionError):
    """The run record (`RUN_RECORD`) is needed and cannot be read: exit 2 naming it."""


def write_run_record(folder: str, cfg: dict, writer: str, owner) -> str:
    """Record the run's options in `<folder>/ugatit-run.json` (atomically: temp file + rename),
    as a run starting from scratch does before its first checkpoint: the image size a light
    model's weights do not fix, for a resume from a TF checkpoint whose `.meta` was lost
    (`run_image_size`). `writer`: the command. Only the run holding the folder (`owner`)."""
    run_lock.require(owner, folder, "recording the run's options")
    return write_bytes_atomic(os.path.join(folder, RUN_RECORD), run_record_bytes(cfg, writer))


def run_record_bytes(cfg: dict, writer: str, keys=None) -> bytes:
    """The run record's bytes (`write_run_record`'s format): `img_size` and the official flags of
    `cfg` (`keys`: only those, e.g. the settings a converted checkpoint records; None: all)."""
    options = {k: cfg[k] for k in opt.DEFAULTS if isinstance(cfg.get(k), (bool, int, float, str))
               and (keys is None or k in keys)}
    record = {"written_by": writer, "img_size": int(cfg["img_size"]), "options": options}
    return (strict_json.dumps(record, indent=1, sort_keys=True) + "\n").encode()


def read_run_record(folder: str, remedy: str = "remove it to resume without this check") -> dict | None:
    """The run record of `folder` (`write_run_record`): {"img_size": int, "options": {official
    flag: value}, "written_by": str}; None without one. RunRecordDamaged naming it when it is no
    JSON object with a positive integer `img_size`, or its `options` (optional: a record may hold
    the size alone) are no object of official flags of their types agreeing with that size - it
    is written whole, so only a damaged disk or a hand edit does that. `remedy`: the message's
    way out besides fixing it."""
    path = os.path.join(folder, RUN_RECORD)
    if not os.path.isfile(path):
        return None
    record = {}
    try:
        with open(path, "rb") as fh:
            record = strict_json.restore(json.loads(fh.read().decode("utf-8")))
        why = _record_problem(record)
    except (OSError, ValueError) as e:
        why = _reason(e)
    if why:
        raise RunRecordDamaged(f"run record {path!r} is damaged ({why}); it is what records the image size of "
                               f"the run in that folder: fix it (\"img_size\": the run's --img_size), or {remedy}")
    return {"img_size": record["img_size"], "options": dict(record.get("options") or {}),
            "written_by": str(record.get("written_by") or "")}


def _record_problem(record) -> str | None:
    """Why `record` (parsed JSON) is not a run record, or None."""
    size = record.get("img_size") if isinstance(record, dict) else None
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        return "no positive integer img_size in a JSON object"
    options = record.get("options", {})
    if not isinstance(options, dict):
        return "its options are not a JSON object"
    for k, v in options.items():  # (a number flag may hold an int or a float: --lr 1, a loss weight 0.5)
        want = type(opt.DEFAULTS[k]) if k in opt.DEFAULTS else None
        number = want in (int, float) and type(v) in (int, float)
        if want is not None and not (type(v) is want or number):
            return f"options.{k} is {json.dumps(v)}, not a {'number' if want in (int, float) else want.__name__}"
    if options.get("img_size", size) != size:
        return f"options.img_size {options['img_size']} is not its img_size {size}"
    return None


def run_image_size(prefix: str) -> tuple[int, str] | None:
    """(img_size, what records it) of the run that wrote the TF checkpoint `prefix`, for a resume
    at another --img_size (a light model's weights restore at any size): its own .meta; without
    one (TF's Saver writes it last: a full disk or a kill there leaves the checkpoint without it)
    the newest other checkpoint of its folder (one run's) that records the size - a TF one's
    .meta, a port one's weights metadata (its trainer's config) -, else the folder's run record
    (`write_run_record`: a first checkpoint's run; RunRecordDamaged when it cannot be read).
    None when nothing does (an official folder, a run of an earlier version)."""
    from .tf_checkpoint import metagraph
    from .tf_checkpoint.config import ConversionError, from_meta

    def meta_size(base):
        try:
            setting = from_meta(base, None)[0].get("img_size")
        except (ConversionError, OSError, ValueError):  # an unreadable .meta records nothing
            return None
        return None if setting is None else int(setting.value)
    own = meta_size(prefix)
    if own is not None:
        return own, f"its .meta graph records img_size={own}"
    lacks = "it has no .meta" if metagraph.find_meta(prefix) is None else "its .meta records no image size"
    folder = os.path.dirname(os.path.abspath(prefix))
    for f in inventory(folder, prefer="tf"):  # newest first
        if os.path.abspath(f.base) == os.path.abspath(prefix):
            continue
        name = os.path.basename(f.base)
        if f.framework == "tf":
            size, where = meta_size(f.base), f"{name}.meta"
        else:
            try:
                size = json.loads(safetensors_metadata(f.base + ".safetensors").get("config") or "{}")
                size = size.get("img_size") if isinstance(size, dict) else None
            except ValueError:
                size = None
            where = f"the run config in {name}.safetensors"
        if isinstance(size, int) and not isinstance(size, bool):
            return size, f"{lacks}, and {where}, of the same run, records img_size={size}"
    record = read_run_record(folder)
    if record is not None:
        size, by = record["img_size"], record["written_by"]
        when = (f"written by {by} from the checkpoint's records" if by.startswith(CONVERTER)
                else "written when the run started")
        return size, f"{lacks}, and the run record {RUN_RECORD}, {when}, records img_size={size}"
    return None


def other_image_size(f: "Found", folder: str, img_size) -> str | None:
    """The refusal (a message) of a resume at `img_size` from the TF checkpoint `f` of `folder`
    whose run trained at another size (`run_image_size`), or None (also for img_size None): a
    light model's weights restore at any size, and the run would go on at another one.
    tf_reference and the port both refuse it, each with its own CheckpointMismatch."""
    recorded = run_image_size(f.base) if img_size is not None else None
    if recorded is None or recorded[0] == int(img_size):
        return None
    had, how = recorded
    return (f"--img_size={img_size} contradicts checkpoint {f.name} in {folder!r} ({how}): resume with "
            f"--img_size {had}, or train a new run in another --checkpoint_dir")
