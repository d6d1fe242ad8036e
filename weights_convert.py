"""Official TF U-GAT-IT checkpoints ⇄ PyTorch (`torch_port`) weights.

The naming rule is the whole mapping: the TF variable path with `/` → `.`, the `conv2d/` or
`dense/` component of tf.layers variables dropped, and `kernel` → `weight` (conv kernels
HWIO → OIHW, dense/CAM kernels transposed). Spectral-norm `u`, biases and norm
`gamma`/`beta`/`rho` keep their names and layouts. Adam slots `<var>/Adam|Adam_1` map to
`<torch name>/Adam|Adam_1`; the G optimizer's powers are `beta1_power`/`beta2_power`, D's
`beta1_power_1`/`beta2_power_1`.

TF checkpoints are read with the numpy bundle reader (no TensorFlow needed), one tensor at a
time; safetensors output is streamed, so peak memory stays near twice the largest tensor.

    python weights_convert.py tf2torch CKPT OUT.safetensors [--generators_only] [--with_optimizer]
    python weights_convert.py torch2tf IN.safetensors CKPT_OUT_PREFIX
    python weights_convert.py tf2torch CKPT OUT --verify        # run both frameworks, print max diffs

Outputs follow ugatit_common.output_guard (never an input, never in a live run's folder or the
input checkpoint's folder - `torch2tf --continue_run` writes beside its input: the same run
continued in TF -,
never over a file of another kind, over one of the same kind only with --overwrite; a folder as
OUT gets the default name inside it; torch2tf re-points a folder's `checkpoint` file that names
another checkpoint only with --overwrite, and takes the replaced checkpoint's stale .meta with it).
torch2tf also writes `<prefix>.meta`, the official train graph of the recorded config (built by
tf_reference, as tf.train.Saver writes it), where TensorFlow can be imported and the input records
every setting that graph holds; otherwise one note on stderr says why there is none. It also
writes the folder's run record `ugatit-run.json` (the settings its input records: run_record_plan),
so a round trip through any folder keeps the run's dataset, n_critic and the rest.
Non-finite weights (NaN, inf) are refused unless --allow_non_finite: a faithful copy of a broken
checkpoint is rarely what anyone wants, and every command that uses weights refuses them anyway.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import struct
import sys

import numpy as np

from ugatit_common import options as opt
from ugatit_common import output_guard as guard
from ugatit_common.atomic import atomic_output, publish_together, remove_quietly, write_temp_beside
from ugatit_common.finite import NonFiniteWeights, first_non_finite, refuse_non_finite
from ugatit_common.options import checkpoint_mismatch as opt_mismatch
from ugatit_common.recorded_config import recorded_keys, with_run_record
from ugatit_common.tf_checkpoint.config import MODEL_KEYS as _MODEL_KEYS
# The TF checkpoint format (bundle reader/writer, naming rule, layouts, config inference) lives in
# the ground-floor package ugatit_common.tf_checkpoint; this module is its command line and
# re-exports the public API under the names it always had.
from ugatit_common.tf_checkpoint import read as _read
from ugatit_common.tf_checkpoint.bundle import (BundleReader, BundleWriter, CheckpointError, checkpoint_state_text,
                                                prefix_by_name, prepare_checkpoint_state, read_checkpoint_state,
                                                resolve_prefix, write_checkpoint_state)
from ugatit_common.tf_checkpoint.config import CheckpointConfig, ConfigConflict, infer, infer_config, parse_model_dir
from ugatit_common.tf_checkpoint.names import (NETWORKS, POWER_NAMES, SLOT_SUFFIXES, ConversionError, _is_conv_scope,
                                               selected as _selected, split_slot as _split_slot, tf_to_torch_name,
                                               to_tf_layout, to_torch_layout, torch_layout_shape, torch_layout_view,
                                               tf_names_of, torch_to_tf_name)
from ugatit_common.tf_checkpoint.read import is_tf_checkpoint_folder

__all__ = ["ConversionError", "ConfigConflict", "CheckpointConfig", "POWER_NAMES", "SLOT_SUFFIXES", "NETWORKS",
           "tf_to_torch_name", "torch_to_tf_name", "to_torch_layout", "to_tf_layout", "torch_layout_view",
           "infer_config", "parse_model_dir", "read_tf_config", "read_tf_config_info", "tf_to_torch",
           "read_tf_training_state", "iter_tf_tensors", "checkpoint_step", "is_tf_checkpoint_folder",
           "write_safetensors_streamed", "convert_tf_to_file", "load_torch_weights", "torch_to_tf", "verify", "main"]


# ------------------------------------------------------------------ reading
def iter_tf_tensors(path: str, generators_only=False, with_optimizer=False):
    """Yield (torch_name, torch-layout ndarray) one at a time from a TF checkpoint."""
    with BundleReader(path) as r:
        yield from _read.iter_arrays(r, generators_only, with_optimizer)


def checkpoint_step(path: str) -> int:
    m = re.search(r"-(\d+)$", resolve_prefix(path))
    return int(m.group(1)) if m else 0


def read_tf_config_info(path: str, overrides: dict | None = None) -> CheckpointConfig:
    """The inferred config with each setting's source (.meta, model_dir, weights, the folder's run
    record `ugatit-run.json`, flag, default)."""
    with BundleReader(path) as r:
        return _config_of(r, overrides)


def _config_of(reader: BundleReader, overrides: dict | None = None) -> CheckpointConfig:
    """The config of the open checkpoint: inferred from its .meta, folder name and weights (and
    `overrides`), then completed and checked by its folder's run record (with_run_record)."""
    return with_run_record(_read.config_of(reader, overrides, recorded_keys(reader.prefix)), reader.prefix)


def read_tf_config(path: str, overrides: dict | None = None) -> dict:
    """The inferred config as a plain dict (see read_tf_config_info for the provenance)."""
    return read_tf_config_info(path, overrides).config


def tf_to_torch(path: str, generators_only: bool = False, overrides: dict | None = None, quiet: bool = False):
    """(config, state) from an official TF checkpoint folder or prefix; state keys are
    `torch_port.build_ugatit(config)` state-dict keys, `u` buffers included. The config comes
    from the checkpoint's .meta graph, folder name, weights and run record (`overrides`: explicit
    settings; one that contradicts the checkpoint raises ConfigConflict); guessed settings are
    printed on stderr unless `quiet`."""
    import torch
    with BundleReader(path) as r:
        info = _config_of(r, overrides)  # before any tensor is read: a contradicting flag fails fast
        _check_img_size(info.config, info)  # as tf2torch: a size the official graph cannot build with
        arrays = dict(_read.iter_arrays(r, generators_only))
    if not quiet:
        info.announce()
    return info.config, {n: torch.from_numpy(a) for n, a in arrays.items()}


def read_tf_training_state(path: str, overrides: dict | None = None, quiet: bool = False) -> dict:
    """Everything a torch run needs to continue an official TF run: weights, Adam slots of both
    optimizers, their powers, the step counter from the checkpoint name, and the config
    (`config`, with its provenance in `info`)."""
    from torch_port.checkpoint import training_state_as_torch
    st = _read.read_training_arrays(path, overrides, known=recorded_keys(path))
    st["info"] = with_run_record(st["info"], st["info"].prefix or resolve_prefix(path))
    st["config"] = st["info"].config
    if not quiet:
        st["info"].announce()
    return training_state_as_torch(st)


# ------------------------------------------------------------------ safetensors, streamed
_ST_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int32"): "I32",
              np.dtype("int64"): "I64", np.dtype("float16"): "F16", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}


_TILE_BYTES = 64 << 20


@contextlib.contextmanager
def _writing(path: str, shown: str | None = None):
    """Around an atomic write of `path`: an OSError (a full disk: write() names no file) becomes
    one ConversionError naming `shown` (default: `path`), and on any failure the folders this
    write made are removed again, so nothing of it is left."""
    made, d = [], os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(d):
        made.append(d)
        d = os.path.dirname(d)
    try:
        yield
    except BaseException as e:
        for d in made:  # innermost first; one that is not empty stays
            try:
                os.rmdir(d)
            except OSError:
                break
        if isinstance(e, OSError):
            raise ConversionError(f"{shown or path!r} cannot be written ({e.strerror or e}); nothing was "
                                  f"written") from e
        raise


def _write_array(f, array: np.ndarray, dtype) -> None:
    """Write `array` C-ordered, little-endian, in tiles of <= 64 MiB along its first axis, so a
    transposed view is never copied whole (a 16-row tile of a transposed [in, out] kernel reads
    one cache line per source row)."""
    dt = np.dtype(dtype).newbyteorder("<")
    if array.ndim == 0 or array.nbytes <= _TILE_BYTES:
        f.write(np.ascontiguousarray(array, dtype=dt).data)
        return
    rows = max(1, _TILE_BYTES // max(1, array[0].nbytes))
    for i in range(0, array.shape[0], rows):
        f.write(np.ascontiguousarray(array[i:i + rows], dtype=dt).data)


def write_safetensors_streamed(out_path: str, specs: list, produce, metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor. `specs`: [(name, shape, dtype)] in file order;
    `produce()` yields (name, ndarray) in the same order. Atomic: temp file, then rename.
    Only one tensor is alive at a time: each is released before the next is produced."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_DTYPES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with _writing(out_path), atomic_output(out_path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        arrays = produce()
        for name, shape, dtype in specs:
            got_name, array = next(arrays)
            if got_name != name or tuple(array.shape) != tuple(shape):
                raise ConversionError(f"internal: expected {name} {shape}, got {got_name} {array.shape}")
            _write_array(f, array, dtype)
            del array  # release before the next read (the MLP kernels are 1 GiB each)
        f.flush()
        os.fsync(f.fileno())


def convert_tf_to_file(ckpt: str, out: str, generators_only=False, with_optimizer=False,
                       overrides: dict | None = None, progress=True, quiet=False, allow_non_finite=False) -> dict:
    """Stream a TF checkpoint into `out` (.safetensors, or .pt on request). Returns the config.
    The file's metadata stores the config and where each setting came from (read from the
    checkpoint, given as a flag, or guessed). A NaN / inf value stops the conversion
    (NonFiniteWeights naming the tensor; nothing written) unless `allow_non_finite`."""
    return convert_tf_to_file_info(ckpt, out, generators_only, with_optimizer, overrides, progress, quiet,
                                   allow_non_finite).config


def convert_tf_to_file_info(ckpt: str, out: str, generators_only=False, with_optimizer=False,
                            overrides: dict | None = None, progress=True, quiet=False,
                            allow_non_finite=False) -> CheckpointConfig:
    from tqdm import tqdm

    with BundleReader(ckpt) as r:
        info = _config_of(r, overrides)
        cfg = info.config
        _check_img_size(cfg, info)  # before anything is written (a refusal is then the one line said)
        names = list(_selected(r.keys(), generators_only, with_optimizer))
        extra = _check_variables(r.prefix, cfg, {n: (r.shape(n), r.dtype(n)) for n in names}, with_optimizer)
        names = [n for n in names if n not in extra]
        specs = [(tf_to_torch_name(n), torch_layout_shape(n, r.shape(n)), r.dtype(n)) for n in names]
        if not quiet:
            info.announce()
            if extra:
                print(f"note: {r.prefix}: {_read.left_out_note(extra)}", file=sys.stderr, flush=True)
        total = sum(r.nbytes(n) for n in names)
        # on a terminal only (as the other bars): in a log file its redraws run into the lines after it
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tf2torch",
                   disable=not progress or not sys.stderr.isatty())

        copied_bad = []

        def produce():
            for n in names:
                bar.update(r.nbytes(n))
                array = r.read(n)
                bad = first_non_finite([(n, array)])  # checked as streamed: one tensor in memory at a time
                if bad and not allow_non_finite:
                    bar.close()
                    raise NonFiniteWeights(f"TF checkpoint {r.prefix}: tensor {n!r} holds {bad[1]} non-finite "
                                           f"value(s) (NaN or inf) of {bad[2]}; not converted (pass "
                                           f"--allow_non_finite to copy it as it is)")
                if bad:
                    copied_bad.append(bad)
                # a view: the writer copies it tile by tile; no local keeps it alive afterwards
                yield tf_to_torch_name(n), torch_layout_view(n, array)
                del array

        meta = {"format": "pt", "step": checkpoint_step(ckpt), "source": os.path.basename(r.prefix)}
        meta.update(info.metadata())
        try:
            if _torch_kind(out) == "torch-pt":
                import torch
                # an owned C-ordered copy that keeps a 0-d power 0-d (np.ascontiguousarray makes it [1])
                state = {name: torch.from_numpy(np.array(a, order="C")) for name, a in produce()}
                _atomic_torch_save({"state": state, "config": cfg, "config_provenance": info.provenance(),
                                    "step": meta["step"]}, out)
            else:
                write_safetensors_streamed(out, specs, produce, meta)
        finally:
            bar.close()  # an error message then starts on its own line, not on the bar's
        if copied_bad:
            _warn_non_finite(copied_bad)
    return info


def _check_variables(prefix: str, cfg: dict, stored: dict, with_optimizer: bool) -> list[str]:
    """The variables tf2torch writes (`stored`: {TF name: (shape, dtype)}) hold those of the model
    `cfg` builds, each of its shape and a float (with `with_optimizer`: every trainable one's Adam
    slots, and the powers): ConversionError naming the variables that differ otherwise. A tensor
    of another shape (TF's Saver refuses to restore it) or one missing would make a file every
    port command refuses; a checkpoint without discriminators (or --generators_only) is checked
    for its generators. Returns the variables that model has not (a modified fork's), which are
    left out, as the official test phase's Saver restores past them."""
    from torch_port.to_tf import _expected
    want, trainable = _expected(cfg)
    slot_or_power = [n for n in stored if n in POWER_NAMES or _split_slot(n)[1]]
    if not any(n.startswith("discriminator") for n in stored):
        want = {k: s for k, s in want.items() if k.startswith("generator")}
        trainable = {k: s for k, s in trainable.items() if k.startswith("generator")}
    if with_optimizer:
        if not slot_or_power:
            raise ConversionError(f"--with_optimizer: checkpoint {prefix} holds no Adam slots nor powers (an "
                                  f"inference-only export); leave --with_optimizer out to convert the weights")
        want.update({f"{n}/{s}": shape for n, shape in trainable.items() for s in ("Adam", "Adam_1")})
        if any(n in POWER_NAMES for n in stored) or any(k.startswith("discriminator") for k in trainable):
            want.update({f"optimizer.G.{p}": () for p in ("beta1_power", "beta2_power")})
            if any(k.startswith("discriminator") for k in trainable):
                want.update({f"optimizer.D.{p}": () for p in ("beta1_power", "beta2_power")})
    # compared in the checkpoint's own names and layout (HWIO kernels), which its owner knows
    tf_names = tf_names_of(want)
    want_tf = {tf_names[n]: _tf_layout_shape(n, shape) for n, shape in want.items()}
    extra = [n for n in stored if n not in want_tf]
    stored = {n: v for n, v in stored.items() if n in want_tf}
    message = opt_mismatch(prefix, want_tf, {n: shape for n, (shape, _) in stored.items()},
                           hint="the model its records describe: "
                                + ", ".join(f"{k}={cfg[k]}" for k in _MODEL_KEYS if k in cfg))
    if message:
        raise ConversionError(message + "; nothing was written")
    bad = next(((n, d) for n, (_, d) in stored.items() if np.dtype(d).kind != "f"), None)
    if bad:
        raise ConversionError(f"checkpoint {prefix}: tensor {bad[0]!r} is {np.dtype(bad[1])}, float expected (every "
                              f"variable of the official graph is float32); nothing was written")
    return extra


def _tf_layout_shape(torch_name: str, shape: tuple) -> tuple:
    """The TF-layout shape of a torch-layout `shape` (to_tf_layout's transposes, on shapes)."""
    if _split_slot(torch_name)[0].endswith("weight") and len(shape) in (2, 4):
        return tuple(shape[i] for i in ((2, 3, 1, 0) if len(shape) == 4 else (1, 0)))
    return tuple(shape)


def _warn_non_finite(bad: list) -> None:
    name, n, size = bad[0]
    print(f"warning: copied {len(bad)} tensor(s) holding NaN or inf as --allow_non_finite asks (first: {name!r}, "
          f"{n} of {size} values); the port's commands refuse such weights", file=sys.stderr, flush=True)


def default_torch_name(ckpt: str) -> str:
    """tf2torch's file name inside a folder given as OUT: the TF prefix's name with `.model-N`
    as `-stepN` (UGATIT_light.model-3 -> UGATIT_light-step3.safetensors), so it is not taken for a
    port checkpoint (<prefix>.model-N.safetensors beside its .state.pt)."""
    return re.sub(r"\.model-(\d+)$", r"-step\1", os.path.basename(resolve_prefix(ckpt))) + ".safetensors"


def _torch_kind(path: str) -> str:
    """The format tf2torch writes to `path`: torch.save for a .pt name (any case), else safetensors."""
    return "torch-pt" if path.lower().endswith(".pt") else "safetensors"


def _check_img_size(cfg: dict, info: CheckpointConfig | None = None) -> None:
    """The image size the official graph can build with (ugatit_common.options.img_size_problem);
    `info`: where the settings came from, so a refusal says when n_dis is a guess (a checkpoint
    without discriminators) and how to give it."""
    from ugatit_common.options import img_size_problem
    size, n_dis = cfg.get("img_size"), cfg.get("n_dis") or 4
    if size is None:
        return
    problem = img_size_problem(size, n_dis)
    if problem:
        guess = info.settings.get("n_dis") if info is not None else None
        if guess is not None and guess.guessed:
            problem += f"; n_dis={n_dis} is guessed ({guess.detail}): --n_dis sets it"
        raise ConversionError(f"--img_size={size}: {problem}")


def _refuse_repointing(folder: str, prefix: str) -> None:
    """The folder's `checkpoint` file names another checkpoint still there: re-pointing it is
    refused (without --overwrite) whatever the names, as output_guard refuses a `*.model-N` among
    other checkpoints - TF (tf.train.latest_checkpoint: tf_reference's test phase and resume)
    would take the new one for that run's."""
    state = os.path.join(folder, "checkpoint")
    if not os.path.isfile(state):
        return
    named, _ = read_checkpoint_state(folder)
    try:
        current = resolve_prefix(folder)  # what readers take: a moved folder's or Windows path re-rooted
    except CheckpointError:
        return  # it names no checkpoint that is there
    if os.path.abspath(current) != os.path.abspath(prefix):
        raise ConversionError(f"output {prefix!r}: {state!r} names another checkpoint, {named!r}, which TensorFlow "
                              f"resumes and tests from; writing this one would re-point it: write into a folder of "
                              f"its own, or pass --overwrite to re-point it")


def _check_report_folder(path: str, ckpt: str) -> list[str]:
    """--report's folder, before any work, by the report command's rules for OUT_DIR
    (parity_tests.harness.claim_report_outputs): a folder (or one that can be made) that is
    writable, not the checkpoint folder being read, a live run's folder or a dataset's images, and
    no file by a report's name that these commands did not write. Returns the report files (and
    the report's other names there, set aside once it is written), held for this process until
    `release_claims`."""
    from parity_tests.harness import claim_report_outputs, other_report_paths
    outputs = [os.path.join(path, name) for name in ("parity_report.md", "parity_report.html")]
    others = other_report_paths(path, outputs)  # an earlier report's fast_paths.* / free_run.json: set aside after
    claim_report_outputs(outputs, ckpt, "--report", others=others)
    return outputs + others


def _need_tensorflow(flag: str) -> None:
    """`flag` runs the official graph: TensorFlow must import, said before any work."""
    try:
        from tf_reference.compat import tf  # noqa: F401
    except Exception as e:  # noqa: BLE001 - not installed, or a broken install
        raise ConversionError(f"{flag} runs the official TensorFlow graph, but TensorFlow cannot be imported "
                              f"({type(e).__name__}: {e}); install tensorflow-cpu or leave {flag} out") from e


# what the .meta of a train graph records (ugatit_common.tf_checkpoint.metagraph), and the two
# settings its discriminators are built from (recorded by a checkpoint's weights when it has them)
META_RECORDS = ("smoothing", "img_size", "gan_type", "adv_weight", "cycle_weight", "identity_weight", "cam_weight")


def official_meta_graph(cfg: dict, tf_names, recorded=None, source: str = "the input",
                        files=((), ())) -> tuple[bytes | None, str]:
    """(the bytes of the `<prefix>.meta` that the official train phase's tf.train.Saver writes
    beside a checkpoint of `cfg` holding the variables `tf_names`, its input pipelines listing
    `files` (trainA, trainB: `training_files`), "") - or (None, why not): when
    TensorFlow cannot be imported, or when a setting the graph would record is not one `source`
    records (`recorded`: those it does; None: all) - a .meta is a record, and readers would take
    a guess from it for the checkpoint's. Built by tf_reference (tf_reference.meta_graph);
    ConversionError when TensorFlow cannot build that graph."""
    needed = list(META_RECORDS)
    if not any(n.startswith("discriminator") for n in tf_names):  # the graph's discriminators: from the config
        needed += ["n_dis", "sn"]
    unknown = [k for k in needed if recorded is not None and k not in recorded]
    if unknown:
        return None, (f"{source} does not record {', '.join(unknown)} (official defaults or guesses here); "
                      f"a .meta would record them as the checkpoint's")
    build, why_not = _meta_builder()
    if build is None:
        return None, why_not
    try:
        return build(cfg, tf_names, *files), ""
    except Exception as e:  # noqa: BLE001 - ValueError (variables not of that graph) or a TF error
        raise ConversionError(f"the official graph of this config cannot be built for the checkpoint's .meta "
                              f"({type(e).__name__}: {e}); nothing was written") from e


def run_record_plan(folder: str, cfg: dict, recorded, source: str, overwrite: bool,
                    continued: bool) -> tuple[bytes | None, bool]:
    """(the run record `ugatit-run.json` torch2tf writes into `folder` or None, whether the
    folder's record is removed), checked before anything is written. The record holds what the
    input records (`recorded`: those of `cfg`'s settings), in the format the trainers write -
    none when the input does not record its image size (a record without it is none, and a guess
    would pass for one) - so the run's flags (dataset, n_critic...) survive a round trip through a
    folder that is no model_dir. A file of that name that is no run record is never replaced
    (ConversionError); a record there that differs describes the run of the checkpoint that
    `--overwrite` replaces (the guard allows no other checkpoint beside), replaced or removed with
    it, else refused; an equal one, or the input's own run's (`continued`: --continue_run), stays."""
    from ugatit_common import checkpoint_policy as policy
    path = os.path.join(folder, policy.RUN_RECORD)
    ours = (policy.run_record_bytes(cfg, f"{policy.CONVERTER} from {os.path.basename(source)}", keys=set(recorded))
            if "img_size" in recorded else None)
    if not os.path.lexists(path):
        return ours, False
    if continued:
        return None, False  # the record of the run this checkpoint continues (written when it started): its own
    if os.path.islink(path) or not os.path.isfile(path):
        raise ConversionError(f"{path!r} exists and is not a run record (not a regular file): torch2tf writes the "
                              f"checkpoint's run record there and never replaces another file; move it away or "
                              f"write into another folder; nothing was written")
    try:
        theirs = policy.read_run_record(folder, remedy="move it away (torch2tf writes the checkpoint's run record "
                                                       "there and never replaces a file that is not one)")
    except policy.RunRecordDamaged as e:
        raise ConversionError(f"{e}; nothing was written") from None
    from ugatit_common import strict_json  # a name that is not UTF-8 back from its bytes, as read_run_record does
    mine = strict_json.restore(json.loads(ours)) if ours is not None else None
    if mine is not None and (mine["img_size"], mine["options"]) == (theirs["img_size"], theirs["options"]):
        return None, False
    if not overwrite:
        if mine is None:
            why = "this checkpoint's input records no image size, so it gets no record"
        else:
            differ = [f"img_size {theirs['img_size']} there, {mine['img_size']} here"] * \
                (theirs["img_size"] != mine["img_size"])
            differ += [f"{k} {json.dumps(theirs['options'].get(k))} there, {json.dumps(mine['options'].get(k))} here"
                       for k in sorted(set(theirs["options"]) | set(mine["options"]))
                       if theirs["options"].get(k) != mine["options"].get(k)]
            why = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        raise ConversionError(f"{path!r} records another run's settings ({why}); readers would take them for this "
                              f"checkpoint's: pass --overwrite to replace it with the checkpoint, or write into a "
                              f"folder of its own; nothing was written")
    return ours, ours is None


_NO_DATA_SET = "the input does not record its data set"


def training_files(cfg: dict, recorded) -> tuple[tuple, tuple, str]:
    """(trainA files, trainB files, "") that the official train phase of `cfg` lists - its glob
    of `./dataset/<dataset>/trainA|trainB/*.*` in the working directory, the strings the graph of
    an official `.meta` holds - or ((), (), why not) when the input does not record its data set
    (`recorded`: the settings it does; None: all) or the working directory holds no such folders.
    A `.meta` whose pipelines list no file imports and restores, but its train op cannot run (TF's
    ShuffleDataset refuses a buffer of 0)."""
    if recorded is not None and "dataset" not in recorded:
        return (), (), _NO_DATA_SET
    try:
        found = [opt.domain_files(cfg, d, required=False) for d in ("trainA", "trainB")]
    except opt.OptionError as e:
        return (), (), str(e)
    if not all(found):
        return (), (), f"no images in {opt.dataset_root(cfg)}/trainA and trainB here"
    return tuple(found[0]), tuple(found[1]), ""


def no_training_images_note(cfg: dict, why: str) -> str:
    """The note said when the .meta's pipelines list no files (`why`: training_files' reason):
    where to run torch2tf for one that lists them - only for an input that records its data set
    (for another, no working directory would do)."""
    note = (f"note: the .meta's input pipelines list no training images ({why}): tf.train.import_meta_graph + "
            f"restore work, but its train op cannot run")
    if why == _NO_DATA_SET:
        return note
    return (f"{note}; run torch2tf in the working directory of the run (where dataset/{cfg.get('dataset')}/ is) for "
            f"one that lists them, as an official .meta does")


def _meta_builder():
    """(tf_reference.meta_graph.train_meta_graph, "") or, where TensorFlow cannot be imported,
    (None, why not): the conversion itself needs no TensorFlow."""
    from ugatit_common.cli_errors import tensorflow_installed
    if not tensorflow_installed():
        return None, "TensorFlow not installed"
    try:
        from tf_reference.meta_graph import train_meta_graph
    except Exception as e:  # noqa: BLE001 - a broken install
        return None, f"TensorFlow cannot be imported: {type(e).__name__}: {e}"
    return train_meta_graph, ""


def _atomic_torch_save(obj, out):
    import torch
    with _writing(out), atomic_output(out) as tmp:
        torch.save(obj, tmp)


def load_torch_weights(path: str):
    """(state, metadata) from a .safetensors file or a .pt written by this tool (weights_only; a
    pickle or an unreadable file is one ConversionError: torch_port.to_tf.load_weights)."""
    from torch_port.to_tf import load_weights
    return load_weights(path)


def torch_to_tf(state: dict, prefix: str, step: int | None = None, drop=(), meta: bytes | None = None,
                files: dict | None = None) -> str:
    """Write a torch state (weights, optional `/Adam` slots and `optimizer.*` powers) as an
    official-layout TF checkpoint at `prefix`, plus the folder's `checkpoint` file and, given
    `meta` (the MetaGraphDef bytes: official_meta_graph), `<prefix>.meta`, removing the files
    `drop` (a replaced checkpoint's stale .meta) with them, and `files` ({path in its folder: bytes}:
    the run record). All or nothing, even when the process is killed (ugatit_common.atomic.
    publish_together's journal)."""
    base = os.path.basename(prefix)
    try:  # the `checkpoint` file's bytes, checked before the bundle is committed (the file comes after it)
        checkpoint_state_text(base, [base])
    except UnicodeEncodeError as e:
        raise ConversionError(f"checkpoint prefix {prefix!r}: its name cannot be written into the folder's "
                              f"`checkpoint` file ({e.reason}); choose another name") from None
    for k, v in state.items():  # TF restores an entry only into a variable of its dtype: all float32 there
        if str(getattr(v, "dtype", "")) not in ("torch.float32", "float32"):
            raise ConversionError(f"tensor {k!r} is {str(getattr(v, 'dtype', type(v).__name__)).replace('torch.', '')}"
                                  f", float32 expected (every variable of the official graph is float32; "
                                  f"torch_port.to_tf.as_float32 casts other floats)")
    entries = sorted((n, k) for k, n in tf_names_of(state).items())
    folder = os.path.dirname(os.path.abspath(prefix))
    meta_path = os.path.abspath(prefix + ".meta")
    drop = [os.path.abspath(p) for p in drop if meta is None or os.path.abspath(p) != meta_path]
    # the bundle's two files, its .meta, then the folder's `checkpoint` file, then the stale .meta removed,
    # published as one write: a failure or a kill anywhere leaves (or, for the next command, puts back) what
    # was there - never a new .data beside an old .index (a corrupt checkpoint) nor a new file without its
    # partner, nor an old .meta beside new weights
    with _writing(prefix, f"{prefix}.index / .data-00000-of-00001" + (" / .meta" if meta is not None else "")):
        with BundleWriter(prefix) as w:
            for tf_name, k in entries:
                w.add(tf_name, to_tf_layout(k, np.asarray(state[k].detach().cpu().numpy()
                                                          if hasattr(state[k], "detach") else state[k])))
            temps = w.prepare()
            meta_file = state_file = None
            extra = {}
            try:
                if meta is not None:
                    meta_file = write_temp_beside(folder, meta, suffix=".meta.tmp")
                for path, data in (files or {}).items():
                    extra[os.path.abspath(path)] = write_temp_beside(folder, data, suffix=".json.tmp")
                try:
                    state_file = prepare_checkpoint_state(folder, base)
                except OSError as e:
                    raise ConversionError(f"{os.path.join(folder, 'checkpoint')!r} cannot be written "
                                          f"({e.strerror or e}); nothing was written") from e
                publish_together({**temps, **({meta_path: meta_file} if meta_file else {}), **extra,
                                  os.path.join(folder, "checkpoint"): state_file, **{p: None for p in drop}})
            finally:
                for tmp in (meta_file, state_file, *extra.values()):  # renamed into place, or not: never left
                    if tmp is not None:
                        remove_quietly(tmp)
    return prefix


# ------------------------------------------------------------------ verify
def verify(ckpt: str, cfg: dict, seed: int = 0) -> dict:
    """Run tf_reference and torch_port on the same random input with the checkpoint's weights;
    max |diff| per output (generators: image, CAM logits; discriminators: logits, CAM logits)."""
    from parity_tests.harness import compare_networks
    results = compare_networks(ckpt, cfg, seed=seed)
    return {name: r["max_abs"] for name, r in results.items() if r["output"]}


# ------------------------------------------------------------------ command line
def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): bad input -> one `error:` line (on its own
    line, never on the progress bar's), exit 2; --debug adds an internal error's traceback."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python weights_convert.py")


def _main(argv=None) -> int:
    try:
        return _convert(argv)
    finally:
        guard.release_claims()  # the outputs claimed by the checks (output_guard.claim)


def _convert(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "tf2onnx":  # ONNX export of a TF checkpoint's generator (torch_port/export.py)
        from torch_port.export import tf2onnx_main
        return tf2onnx_main(argv[1:])
    p = argparse.ArgumentParser(description="Convert U-GAT-IT checkpoints between TensorFlow and PyTorch")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("tf2torch", help="official TF checkpoint → safetensors (or .pt)")
    a.add_argument("ckpt", type=opt.path_value, help="checkpoint folder (with its `checkpoint` file) or prefix")
    a.add_argument("out", type=opt.path_value, help="output .safetensors (default format) or .pt")
    a.add_argument("--generators_only", action="store_true", help="keep only generator_A/B")
    a.add_argument("--with_optimizer", action="store_true", help="carry Adam slots, powers and the step counter")
    # The checkpoint's .meta graph, folder name and weights record the config; these flags are for
    # what none of them records (a flag that contradicts the checkpoint is an error, exit 2).
    a.add_argument("--img_size", type=int, help="image size (recorded in the .meta; a light model's weights do not fix it)")
    a.add_argument("--smoothing", choices=["True", "False"], help="AdaLIN smoothing (recorded in the .meta and the "
                                                                  "model_dir folder name, not in the weights)")
    a.add_argument("--n_dis", type=int, help="discriminator layers (only needed for a generators-only checkpoint)")
    a.add_argument("--sn", choices=["True", "False"], help="spectral norm (only needed for a generators-only checkpoint)")
    a.add_argument("--verify", action="store_true", help="run TF and torch on the same input, print max diffs")
    a.add_argument("--report", metavar="DIR", type=opt.path_value, help="write the per-layer parity report (Markdown + HTML) to DIR")
    a.add_argument("--overwrite", action="store_true", help="replace an existing OUT of the same kind (never "
                                                            "another kind of file, never an input)")
    a.add_argument("--allow_non_finite", action="store_true", help="copy NaN / inf weights as they are (refused "
                                                                   "by default)")
    b = sub.add_parser("torch2tf", help="safetensors/.pt → official-layout TF checkpoint")
    b.add_argument("inp", type=opt.path_value, help="a port checkpoint (.safetensors with its .state.pt beside it, or their folder), "
                               "or a tf2torch output")
    b.add_argument("ckpt_out", type=opt.path_value, help="checkpoint prefix to write, e.g. checkpoint/X/UGATIT_light.model-10 (-N: the "
                                    "input's step when not given); a folder: <folder>/<model name>.model-N")
    b.add_argument("--weights_only", action="store_true", help="write the weights without the optimizer state "
                                                               "(enough for the test phase, not for resuming)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing TF checkpoint at that prefix "
                                                            "(never another kind of file, never an input)")
    b.add_argument("--allow_non_finite", action="store_true", help="copy NaN / inf values as they are (refused "
                                                                   "by default)")
    b.add_argument("--continue_run", action="store_true",
                   help="write the TF checkpoint into the checkpoint folder of the port checkpoint being converted, "
                        "so that tf_reference continues that run there (refused without it, and always while a "
                        "run holds the folder; an existing file is still replaced only with --overwrite)")
    # listed for --help; `tf2onnx ...` is dispatched above to torch_port.export (its own flags: tf2onnx --help)
    sub.add_parser("tf2onnx", help="official TF checkpoint generator → verified ONNX model (tf2onnx --help)")
    args = p.parse_args(argv)
    report_files = []
    try:
        if args.cmd == "tf2torch":
            if args.img_size is not None and (args.img_size < 1 or args.img_size % 4):
                raise ConversionError(f"--img_size={args.img_size}: must be a positive multiple of 4")
            overrides = {"img_size": args.img_size, "n_dis": args.n_dis,
                         "smoothing": None if args.smoothing is None else args.smoothing == "True",
                         "sn": None if args.sn is None else args.sn == "True"}
            out = guard.place_output(args.out, _torch_kind, [args.ckpt], args.overwrite, default_torch_name(args.ckpt),
                                     input_name="the checkpoint being converted")
            results = None
            if args.verify or args.report:  # checked and run before the output is written
                if args.report:
                    if os.path.abspath(args.report) == os.path.abspath(out):  # the file would block its folder
                        raise ConversionError(f"--report {args.report!r} is the output file's path: give the report "
                                              f"a folder of its own")
                    report_files = _check_report_folder(args.report, args.ckpt)
                _need_tensorflow("--verify" if args.verify else "--report")
                from parity_tests.harness import compare_networks
                first = read_tf_config_info(args.ckpt, overrides)
                _check_img_size(first.config, first)
                results = compare_networks(args.ckpt, first.config)
            existed = os.path.lexists(out)
            info = convert_tf_to_file_info(args.ckpt, out, args.generators_only, args.with_optimizer, overrides,
                                           allow_non_finite=args.allow_non_finite)
            cfg = info.config
            print("inferred config: " + json.dumps(cfg))
            for line in info.describe():
                print("  " + line)
            print(f"wrote {out}")
            if results is not None:
                for name, r in results.items():
                    if r["output"]:
                        print(f"  {name:45s} max |diff| {r['max_abs']:.3g}")
            if args.report:
                from parity_tests.harness import set_earlier_aside, write_report
                try:
                    print("report: " + write_report(results, cfg, args.report, args.ckpt, provenance=info.describe()))
                    set_earlier_aside(args.report, ("parity_report.md", "parity_report.html"))
                except BaseException as e:
                    if not existed:  # the output this command wrote goes with its report; never one there before
                        os.remove(out)
                    if isinstance(e, OSError):
                        raise ConversionError(f"--report {args.report!r}: the report cannot be written "
                                              f"({e.strerror or e}); {out!r} "
                                              f"{'was not kept' if not existed else 'was written'}") from e
                    raise
        else:
            # validated against the model its config describes; the optimizer state carried along
            from torch_port.to_tf import prepare
            prepared = prepare(args.inp, weights_only=args.weights_only)
            state, step, cfg = prepared.state, prepared.step, prepared.config
            bad = [b for b in (first_non_finite([(k, v)]) for k, v in state.items()) if b]
            if bad and not args.allow_non_finite:
                refuse_non_finite(state, f"{args.inp} (not converted; pass --allow_non_finite to copy it as it is)")
            prefix, in_folder = guard.as_file(args.ckpt_out, f"{'UGATIT_light' if cfg['light'] else 'UGATIT'}.model")
            # one of a checkpoint's files (`<prefix>.index`, `.data-*`, `.meta`) names that checkpoint, as an
            # input file does (never `<prefix>.index-3.index`)
            file_of = None if in_folder else prefix_by_name(prefix)
            if file_of:
                prefix = file_of
            if not re.search(r"-\d+$", prefix):
                prefix = f"{prefix}-{step}"
            folder = os.path.dirname(os.path.abspath(prefix))
            # beside its input only when asked for: the same run, continued in TensorFlow (--continue_run)
            given = ([(args.ckpt_out, "tf-prefix")] if not in_folder and not file_of and os.path.lexists(args.ckpt_out)
                     else [])
            # the .meta of a checkpoint replaced is part of it: readers take the config (smoothing,
            # img_size, gan_type...) from <prefix>.meta, so a stale one would describe these weights
            meta = prefix + ".meta"
            guard.check_outputs(given + [(prefix + ".index", "tf-index"), (prefix + ".data-00000-of-00001", "tf-data"),
                                         (meta, "tf-meta")],
                                [args.inp], args.overwrite, updates=[(os.path.join(folder, "checkpoint"), "tf-state")],
                                beside_input_ok=args.continue_run, input_name="the checkpoint being converted",
                                beside_input_hint="; to continue that run in TensorFlow there, pass --continue_run")
            continued = args.continue_run and guard.checkpoint_folder_of(args.inp) == os.path.realpath(folder)
            if not (args.overwrite or continued):  # --continue_run: the same run, its folder's file re-pointed
                _refuse_repointing(folder, prefix)
            if in_folder:
                print(f"note: {args.ckpt_out!r} is a folder: the checkpoint goes into it as {os.path.basename(prefix)}")
            if file_of:
                print(f"note: {args.ckpt_out!r} names a file of the checkpoint {os.path.basename(prefix)}: that "
                      f"checkpoint is written")
            if bad:
                _warn_non_finite(bad)
            record, drop_record = run_record_plan(folder, cfg, prepared.recorded, prepared.source, args.overwrite,
                                                  continued)
            from ugatit_common.checkpoint_policy import RUN_RECORD
            record_path = os.path.join(folder, RUN_RECORD)
            stale = os.path.lexists(meta)
            # the graph the official Saver writes beside a checkpoint (tf_reference builds it; seconds), when
            # TensorFlow is here and the input records every setting it holds; before anything is written
            files_A, files_B, no_files = training_files(cfg, prepared.recorded)
            graph, why_not = official_meta_graph(cfg, list(tf_names_of(state).values()),
                                                 prepared.recorded, prepared.source, (files_A, files_B))
            # the new .meta, or the stale one removed, goes with the same write: a failure or a kill anywhere
            # leaves the old checkpoint whole
            torch_to_tf(state, prefix, drop=([meta] if stale and graph is None else []) + [record_path] * drop_record,
                        meta=graph, files={record_path: record} if record is not None else None)
            print(f"wrote {prefix}.index / .data-00000-of-00001{' / .meta' if graph is not None else ''}"
                  f"{', ' + record_path if record is not None else ''} and {folder}/checkpoint")
            if drop_record:
                print(f"note: removed {record_path}, the run record of the checkpoint replaced (its settings would "
                      f"have been read as these weights')")
            if stale and graph is None:
                print(f"note: removed {meta}, the graph of the checkpoint replaced (its recorded config would "
                      f"have been read as these weights')")
            if graph is None:  # said once the checkpoint is written (a failed command's one line is its error)
                print(f"note: no .meta written ({why_not}): tf2torch will take img_size, smoothing, gan_type "
                      f"and the loss weights from the folder name, the weights or flags", file=sys.stderr)
            elif no_files:
                print(no_training_images_note(cfg, no_files), file=sys.stderr)
    except (ConversionError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        guard.release_claims(report_files)  # and a --report folder this command made and left empty
    return 0


if __name__ == "__main__":
    sys.exit(main())
