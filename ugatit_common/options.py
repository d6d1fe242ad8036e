"""The official U-GAT-IT options: flags, defaults, `model_dir` naming and dataset layout.

One definition serves `python -m tf_reference`, `python -m torch_port` and `python -m morph`;
it imports neither TensorFlow nor torch. Flag names, defaults and meanings are those of the
official `main.py`, so commands written for the official repository keep working.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from dataclasses import dataclass

GAN_TYPES = ("gan", "lsgan", "wgan-gp", "wgan-lp", "dragan", "hinge")
DOMAIN_FOLDERS = ("trainA", "trainB", "testA", "testB")

_TRUE = ("true", "t")
_FALSE = ("false", "f", "0", "no", "n")
# the official main.py reads these as False (True only for a part of 'true'): never silently True
_OFFICIALLY_FALSE = ("1", "yes", "y")


def str2bool(value: str) -> bool:
    """Parse a boolean flag. The official parser treats any substring of 'true' as True and
    everything else as False; we accept the spellings on which both agree (True/t, False/f/0/no/n,
    any case) and refuse the rest instead of guessing: `1` / `yes` would be True to a reader and
    False to the official main.py, so a command line never means two different models."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if v in _OFFICIALLY_FALSE:
        raise argparse.ArgumentTypeError(f"{value!r} is ambiguous: the official main.py reads it as False (only "
                                         f"'true' is True there); write True or False")
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def _dotdot_resolved(path: str) -> str:
    """`path` with a `..` in it spelled from its real folder: the OS takes `link/..` as the
    parent of the link's target, while os.path.abspath (every check of the project) drops both
    lexically - `link/../x.json` was checked as `./x.json` and written beside the target (into
    the checkpoint folder being read, or onto another disk: the temp file's rename failed there).
    The last name stays as given (a link there is the output's own)."""
    if ".." not in path.split(os.sep):
        return path
    trail = os.sep if path.endswith(os.sep) else ""
    stripped = path.rstrip(os.sep)
    head, tail = os.path.split(stripped)
    if tail in ("..", "."):
        return os.path.realpath(stripped) + trail
    return os.path.join(os.path.realpath(head or "."), tail) + trail


def path_value(text) -> str:
    """The argparse type of every file or folder flag and argument: the path as given, a `~` or
    `~user` at its start expanded as a shell does (`--result_dir=~/x` and a quoted '~/x' reach us
    unexpanded: they made a folder named `~` in the current one; `./~` names such a folder), and
    one with a `..` spelled from its real folder, as the OS reads it (`_dotdot_resolved`). Empty
    or spaces only is refused, naming the flag (`argument --json: ...`): most often an unset shell
    variable, and never a file name meant (it would read or write the current folder)."""
    text = str(text)
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file or folder path, got {text!r} (empty: an unset shell "
                                         f"variable?); `.` names the current folder")
    return _dotdot_resolved(os.path.expanduser(text) if text.startswith("~") else text)


# name, type, default, help — exactly the official main.py flags (the folders' type path_value: a str
# that is never empty).
OFFICIAL_FLAGS = (
    ("phase", str, "train", "[train / test]"),
    ("light", str2bool, False, "[U-GAT-IT full version / U-GAT-IT light version]"),
    ("dataset", str, "selfie2anime", "dataset_name"),
    ("epoch", int, 100, "The number of epochs to run"),
    ("iteration", int, 10000, "The number of training iterations"),
    ("batch_size", int, 1, "The size of batch size"),
    ("print_freq", int, 1000, "The number of image_print_freq"),
    ("save_freq", int, 1000, "The number of ckpt_save_freq"),
    ("decay_flag", str2bool, True, "The decay_flag"),
    ("decay_epoch", int, 50, "decay epoch"),
    ("lr", float, 0.0001, "The learning rate"),
    ("GP_ld", int, 10, "The gradient penalty lambda"),
    ("adv_weight", int, 1, "Weight about GAN"),
    ("cycle_weight", int, 10, "Weight about Cycle"),
    ("identity_weight", int, 10, "Weight about Identity"),
    ("cam_weight", int, 1000, "Weight about CAM"),
    ("gan_type", str, "lsgan", "[gan / lsgan / wgan-gp / wgan-lp / dragan / hinge]"),
    ("smoothing", str2bool, True, "AdaLIN smoothing effect"),
    ("ch", int, 64, "base channel number per layer"),
    ("n_res", int, 4, "The number of resblock"),
    ("n_dis", int, 6, "The number of discriminator layer"),
    ("n_critic", int, 1, "The number of critic"),
    ("sn", str2bool, True, "using spectral norm"),
    ("img_size", int, 256, "The size of image"),
    ("img_ch", int, 3, "The size of image channel"),
    ("augment_flag", str2bool, True, "Image augmentation use or not"),
    ("checkpoint_dir", path_value, "checkpoint", "Directory name to save the checkpoints"),
    ("result_dir", path_value, "results", "Directory name to save the generated images"),
    ("log_dir", path_value, "logs", "Directory name to save training logs"),
    ("sample_dir", path_value, "samples", "Directory name to save the samples on training"),
)

DEFAULTS = {name: default for name, _, default, _ in OFFICIAL_FLAGS}

# Keys that fix the architecture (and so the checkpoint's variables).
MODEL_KEYS = ("light", "ch", "n_res", "n_dis", "img_size", "img_ch", "sn", "smoothing")


class OptionError(ValueError):
    """A flag value the official model cannot run with; the message names the flag."""


SEED_MAX = 2 ** 32 - 1  # numpy's seed range; every seeded draw of the project accepts it


def seed_value(text) -> int:
    """The argparse type of every `--seed` (and `--z_seed`): an integer in [0, 2**32-1], else an
    error naming the flag (`argument --seed: must be an integer in ...`), never numpy's text later."""
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32-1 = {SEED_MAX}], got {text!r}")
    return value


def typed_flags(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the options typed in `argv` (`--x V`, `--x=V`, or an unambiguous
    prefix of `--x`, as argparse accepts them), as opposed to those left at their defaults."""
    table = parser._option_string_actions  # {"--ch": action, ...}
    out = set()
    for arg in argv:
        if arg == "--":
            break
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        action = table.get(name)
        if action is None and parser.allow_abbrev:
            hits = {id(a): a for o, a in table.items() if o.startswith(name)}
            if len(hits) == 1:
                action = next(iter(hits.values()))
        if action is not None:
            out.add(action.dest)
    return out


def add_official_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for name, typ, default, help_ in OFFICIAL_FLAGS:
        parser.add_argument(f"--{name}", type=typ, default=default, help=f"{help_} (default: {default})")
    return parser


def command_name() -> str | None:
    """How the user ran this command, for usage and error lines: `python -m torch_port` where
    argparse would say `__main__.py`; None (argparse's own: the script's name) otherwise."""
    arg0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(arg0) == "__main__.py":
        return "python -m " + os.path.basename(os.path.dirname(os.path.abspath(arg0)))
    return None


def other_torchrun_rank() -> bool:
    """A process of a torchrun run other than rank 0 (which says what all ranks would say)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK", "0") != "0"


class Parser(argparse.ArgumentParser):
    """argparse, but under torchrun a bad flag is said once (by rank 0); every rank exits 2."""

    def error(self, message):
        if other_torchrun_rank():
            self.exit(2)
        super().error(message)


def build_parser(description: str = "U-GAT-IT") -> argparse.ArgumentParser:
    return add_official_flags(Parser(prog=command_name(), description=description))


def config_from(args=None, **overrides) -> dict:
    """A complete option dict: official defaults, updated from an argparse namespace or dict,
    then from keyword overrides."""
    cfg = dict(DEFAULTS)
    if args is not None:
        src = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        cfg.update(src)
    cfg.update(overrides)
    return cfg


N_RES_RULE = "the official MLP width is ch*n_res and must equal the residual width ch*4, so n_res must be 4"


def min_img_size(n_dis: int) -> int:
    """The smallest image the official graph builds with for `n_dis`: the global discriminator's
    n_dis-1 stride-2 convs halve it (rounding down), then conv_last and D_logit reflect-pad it by
    1 and 2 (kernel 4, stride 1), which TF's MirrorPad (and torch's reflection pad) allow only on
    at least 3 pixels: 3 * 2^(n_dis-1) (24 for n_dis 4, 96 for n_dis 6; a multiple of 4)."""
    return 3 * 2 ** (int(n_dis) - 1)


GENERATOR_MIN_IMG_SIZE = 8  # halved twice: the residual blocks' reflect pads by 1 need 2 pixels


def img_size_problem(size, n_dis, discriminators: bool = True) -> str | None:
    """Why the official graph cannot build at `size` with `n_dis` (None: it can). The generator
    halves the image twice and doubles it back, so the size is a multiple of 4. `discriminators`
    False: the test phase's graph, which builds the generators alone (as the official test
    graph does), so n_dis sets no least size there (a generators-only checkpoint's is a guess)."""
    if not discriminators:
        if int(size) % 4 or int(size) < GENERATOR_MIN_IMG_SIZE:
            return (f"must be a multiple of 4 and at least {GENERATOR_MIN_IMG_SIZE} (the generator halves it twice "
                    f"and then reflect-pads by 1, which needs 2 pixels)")
        return None
    least = min_img_size(n_dis)
    if int(size) % 4 or int(size) < least:
        return (f"must be a multiple of 4 and at least {least} for n_dis={n_dis} (the global discriminator "
                f"halves it n_dis-1 times and then reflect-pads by 2, which needs 3 pixels)")
    return None


def validate(cfg: dict) -> dict:
    """Reject configurations the official graph cannot build, before any work starts."""
    def need(cond, flag, msg):
        if not cond:
            raise OptionError(f"--{flag}={cfg.get(flag)!r}: {msg}")

    need(cfg["phase"] in ("train", "test"), "phase", "expected 'train' or 'test'")
    need(cfg["gan_type"] in GAN_TYPES, "gan_type", f"expected one of {', '.join(GAN_TYPES)}")
    for flag in ("epoch", "iteration", "batch_size", "ch", "n_res", "n_critic", "print_freq", "save_freq"):
        need(int(cfg[flag]) >= 1, flag, "must be >= 1")
    need(cfg["n_dis"] >= 4, "n_dis", "the local discriminator needs n_dis >= 4")
    need(cfg["img_ch"] == 3, "img_ch", "the official model reads RGB images (3 channels)")
    need(math.isfinite(cfg["lr"]) and cfg["lr"] > 0, "lr", "must be a finite number > 0")
    for flag in ("GP_ld", "adv_weight", "cycle_weight", "identity_weight", "cam_weight"):
        need(math.isfinite(cfg[flag]) and cfg[flag] >= 0, flag, "must be a finite number >= 0")
    # AdaLIN's gamma/beta come from an MLP of width ch * n_res, applied to feature maps of width
    # ch * 4: the official graph only builds when n_res == 4.
    need(cfg["n_res"] == 4, "n_res", N_RES_RULE)
    problem = img_size_problem(cfg["img_size"], cfg["n_dis"], discriminators=cfg["phase"] != "test")
    need(problem is None, "img_size", problem)
    need(cfg["decay_epoch"] >= 0, "decay_epoch", "must be >= 0")
    return cfg


def check_dataset_name(name: str, root: str = ".") -> str:
    """`--dataset` is the NAME of a folder under ./dataset/ (the official code globs
    ./dataset/<name>/trainA/*.* and names the run folders after it): a path (`/abs/x`, `a/b`,
    `..`) would train on data the official code cannot find and nest the run folders
    (checkpoint/UGATIT_light_/abs/x_lsgan.../): OptionError saying how to use data elsewhere.
    `root`: the folder holding dataset/ (Morph's --data_root; the official layout: the working directory)."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if name and name not in (".", "..") and not any(s in name for s in seps) and "\0" not in name:
        return name
    base = os.path.basename(os.path.normpath(name)) if name else ""
    link = base if base and base not in (".", "..", os.sep) else "<name>"
    under = os.path.join(root, "dataset") if root not in ("", ".") else "./dataset"
    where = "relative to the working directory" if root in ("", ".") else f"under --data_root {root}"
    raise OptionError(f"--dataset={name!r}: expected the name of a folder under {under}/ (the official layout "
                      f"dataset/<name>/{{{','.join(DOMAIN_FOLDERS)}}} {where}; the run "
                      f"folders are named after it), not a path; for data elsewhere, link it there: "
                      f"ln -s {os.path.abspath(name) if name else '/path/to/data'} {os.path.join(root if root not in ('', '.') else '', 'dataset', link)}, then "
                      f"--dataset {link}")


def model_name(cfg: dict) -> str:
    return "UGATIT_light" if cfg["light"] else "UGATIT"


def model_dir(cfg: dict) -> str:
    """Official checkpoint/result sub-folder name (all weights printed as given, e.g. `1_10_10_1000`)."""
    sn = "_sn" if cfg["sn"] else ""
    smoothing = "_smoothing" if cfg["smoothing"] else ""
    return "{}_{}_{}_{}resblock_{}dis_{}_{}_{}_{}_{}{}{}".format(
        model_name(cfg), cfg["dataset"], cfg["gan_type"], cfg["n_res"], cfg["n_dis"], cfg["n_critic"],
        cfg["adv_weight"], cfg["cycle_weight"], cfg["identity_weight"], cfg["cam_weight"], sn, smoothing)


def learning_rate(cfg: dict, epoch: int) -> float:
    """Official schedule: constant until decay_epoch, then linear to 0 at `epoch`."""
    lr = cfg["lr"]
    if cfg["decay_flag"] and epoch >= cfg["decay_epoch"]:
        lr = cfg["lr"] * (cfg["epoch"] - epoch) / (cfg["epoch"] - cfg["decay_epoch"])
    return lr


def resume_position(counter: int, iteration: int) -> tuple[int, int]:
    """(start_epoch, start_batch_id) for a checkpoint saved at `counter`, as the official loop."""
    start_epoch = counter // iteration
    return start_epoch, counter - start_epoch * iteration


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def dataset_root(cfg: dict, base: str = ".") -> str:
    return os.path.join(base, "dataset", cfg["dataset"])


def readable_folder(path: str, what: str = "dataset folder") -> None:
    """OptionError naming `what` when the folder `path` cannot be listed, or its files not looked
    at, by this user (no r or no x permission): glob then finds nothing, silently (a test phase
    translated the other domain alone, exit 0), or every file seems a dangling link."""
    try:
        with os.scandir(path) as entries:
            first = next(entries, None)
        if first is not None:
            os.stat(first.path)
    except PermissionError as e:
        raise OptionError(f"{what} {path!r} is not readable by this user ({e.strerror}): it needs read and "
                          f"search permission (chmod u+rx)") from None
    except OSError as e:
        from .machine_limits import limit_error
        limit = limit_error(e, f"cannot list {what} {path!r}")
        if limit is not None:
            raise limit from None
        # anything else: the listing below says what it finds


def domain_files(cfg: dict, folder: str, base: str = ".", required: bool = True) -> list[str]:
    """Sorted image files of `dataset/<name>/<folder>`; the official code globs `*.*` there."""
    path = os.path.join(dataset_root(cfg, base), folder)
    if not os.path.isdir(path):
        if os.path.lexists(path):  # a file, or a link that leads nowhere / to itself: said as such
            why = "is not a folder" if os.path.exists(path) else "is a link that leads to no folder"
            raise OptionError(f"dataset folder {path!r} {why}: expected dataset/<name>/"
                              f"{{{','.join(DOMAIN_FOLDERS)}}} holding the images")
        if required:
            raise OptionError(
                f"dataset folder {path!r} does not exist: expected dataset/<name>/{{{','.join(DOMAIN_FOLDERS)}}} "
                f"relative to " + (f"the working directory {os.path.abspath(base)!r}" if os.path.abspath(base) == os.getcwd()
                                   else f"{os.path.abspath(base)!r}"))
        return []
    readable_folder(path)
    # the folder read literally: a name holding glob characters ("photos [2020]") is no pattern
    files = []
    for f in sorted(glob.glob(os.path.join(glob.escape(path), "*.*"))):
        if os.path.isfile(f):
            files.append(f)
        else:  # the official code would stop (or, on a FIFO, block) on it mid-run; said here, as unreadable images are
            skipped_not_a_file(f)
    if required and not files:
        unnamed = sorted(n for n in os.listdir(path) if "." not in n and os.path.isfile(os.path.join(path, n)))
        if unnamed:  # files there, but the official `*.*` glob reads names with an extension only
            raise OptionError(f"dataset folder {path!r} holds no file named *.* (expected images, e.g. *.png, *.jpg): "
                              f"its {len(unnamed)} file(s) without an extension (e.g. {unnamed[0]!r}) are not read, "
                              f"as the official code globs *.*; give them their extension")
        raise OptionError(f"dataset folder {path!r} holds no files (expected images, e.g. *.png, *.jpg)")
    return files


def skipped_not_a_file(path: str) -> None:
    """The one `warning:` line for an entry read as a picture that is no regular file (skipped):
    the data set's, the test phase's and Morph's input folders."""
    print(f"warning: skipping {path!r}: {not_a_file(path)}, not an image", file=sys.stderr)


def not_a_file(path: str) -> str:
    """What a dataset entry that is no regular file is: a folder, a link leading nowhere, or a
    FIFO / socket / device (named as such: it is no link)."""
    import stat
    if os.path.isdir(path):
        return "a folder"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a link that leads to no file"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "another kind of entry")
    return f"not a regular file ({kind})"


@dataclass
class Paths:
    """Where a run writes: the official `<dir>/<model_dir>` folders."""
    checkpoint: str
    result: str
    log: str
    sample: str


def run_paths(cfg: dict) -> Paths:
    md = model_dir(cfg)
    return Paths(os.path.join(cfg["checkpoint_dir"], md), os.path.join(cfg["result_dir"], md),
                 os.path.join(cfg["log_dir"], md), os.path.join(cfg["sample_dir"], md))


def iteration_line(epoch: int, idx: int, iteration: int, elapsed: float, d_loss: float, g_loss: float) -> str:
    """The official per-iteration progress line."""
    return "Epoch: [%2d] [%5d/%5d] time: %4.4f d_loss: %.8f, g_loss: %.8f" % (
        epoch, idx, iteration, elapsed, d_loss, g_loss)


def information(cfg: dict, dataset_num: int) -> str:
    """The official start-of-training summary (the same block both command lines print)."""
    lines = ["", "##### Information #####"]
    lines += [f"# {label} :  {cfg[k]}" for label, k in (("light", "light"), ("gan type", "gan_type"),
                                                          ("dataset", "dataset"))]
    lines.append(f"# max dataset number :  {dataset_num}")
    lines += [f"# {label} :  {cfg[k]}" for label, k in (("batch_size", "batch_size"), ("epoch", "epoch"),
                                                          ("iteration per epoch", "iteration"),
                                                          ("smoothing", "smoothing"))]
    lines += ["", "##### Generator #####", f"# residual blocks :  {cfg['n_res']}",
              "", "##### Discriminator #####", f"# discriminator layer :  {cfg['n_dis']}",
              f"# the number of critic :  {cfg['n_critic']}", f"# spectral normalization :  {cfg['sn']}",
              "", "##### Weight #####"]
    lines += [f"# {k} :  {cfg[k]}" for k in ("adv_weight", "cycle_weight", "identity_weight", "cam_weight")]
    return "\n".join(lines)


def checkpoint_mismatch(source: str, wanted: dict, stored: dict, unexpected_is_error: bool = True,
                        hint: str = "check --light, --ch, --n_res, --n_dis, --img_size, --sn") -> str | None:
    """A message naming what differs between a checkpoint's {name: shape} (`stored`) and the
    configured model's (`wanted`), or None when it fits. TF's Saver restores past extra
    checkpoint variables, hence `unexpected_is_error=False` there (they are still listed, as skipped)."""
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    shapes = [f"{n}: checkpoint {list(stored[n])} vs model {list(wanted[n])}" for n in sorted(wanted)
              if n in stored and tuple(stored[n]) != tuple(wanted[n])]
    if not (missing or shapes or (unexpected and unexpected_is_error)):
        return None
    # one line (every command's error is one `error:` line): what differs, a few examples of each
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches, e.g. " + "; ".join(shapes[:3]))
    if missing:
        parts.append(f"{len(missing)} variables missing from the checkpoint, e.g. " + ", ".join(missing[:3]))
    if unexpected and unexpected_is_error:
        parts.append(f"{len(unexpected)} unexpected variables, e.g. " + ", ".join(unexpected[:3]))
    elif unexpected:  # not the problem (e.g. a train checkpoint's Adam slots in the test phase): said as such
        parts.append(f"{len(unexpected)} checkpoint variables the model has not, skipped as TF's Saver skips them "
                     f"(e.g. " + ", ".join(unexpected[:3]) + ")")
    return f"checkpoint {source} does not match the configured model ({hint}): " + " | ".join(parts)
