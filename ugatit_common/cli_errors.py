"""One error path for every command line of the project.

    exit 0    done
    exit 1    an internal error (a bug): one line; `--debug` shows the traceback
    exit 2    bad input - a flag, a file, a folder, a checkpoint, a full or read-only disk:
              one `error: ...` line naming the flag or the file
    exit 130  Ctrl-C: `stopped at step N ...; resume with: <command>` for training runs
    exit 143  SIGTERM (`kill`, a scheduler's preemption, `docker stop`): the same clean stop and line

`--debug` (anywhere on the command line, or UGATIT_DEBUG=1) prints the traceback as well; it is
taken off the arguments before the command's own parser sees them. Training loops report their
position with `note_step` / `note_checkpoint`, which is what the Ctrl-C line quotes.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shlex
import signal
import sys
import traceback
import warnings

from .atomic import temp_prefix
from .machine_limits import limit_error, machine_limit, too_many_open_files

EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: every clean-up that Ctrl-C
    gets (a save in progress rolled back, temp files removed, the resume line) it gets too."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises Terminated in the main thread instead of ending the
    process at once (which left temp files and no line saying where a training run stopped).
    Only where SIGTERM has its default action (one a launcher set up, or ignores, is kept)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            yield
            return
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals go to the main thread's handlers only
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

# exception classes (by name, anywhere in the MRO) that mean "the input is bad", from libraries
# this module does not import: TF checkpoint reader/converter, safetensors, pickle, protobuf, TF ops
_BAD_INPUT_NAMES = {"OptionError", "CheckpointError", "ConversionError", "SafetensorError", "UnpicklingError",
                    "DecodeError", "OpError", "MetaGraphError", "ExportError", "ImageReadError",
                    "NoUsableCheckpoint", "CheckpointKindError", "PeerStopped"}

_state: dict = {}


def reset() -> None:
    _state.clear()


# libraries' notices about their own APIs (torch internals, TensorFlow, onnx): nothing a user of
# these commands can act on
LIBRARY_NOTICES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def plain_warnings() -> None:
    """Warnings as one line each, `warning: <message>` on stderr (not Python's `file:line:
    Category:` and the source line), each message once, under torchrun by rank 0 only;
    libraries' deprecation notices not at all - unless Python's -W / PYTHONWARNINGS says what to
    show. (A caller's `pytest.warns` around an in-process command does not see them.) For a
    command's run only: call inside `warnings.catch_warnings()`."""
    from .options import other_torchrun_rank
    if not sys.warnoptions:  # a user's -W / PYTHONWARNINGS (e.g. error) decides instead
        warnings.simplefilter("default")
        for category in LIBRARY_NOTICES:
            warnings.filterwarnings("ignore", category=category)
    said = set()
    quiet = other_torchrun_rank()  # under torchrun rank 0 says it: every rank runs the same code on the same files

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message) not in said and not quiet:  # e.g. the same note for each of two generators: once
            said.add(str(message))
            print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)
    warnings.showwarning = show


def note_step(step: int) -> None:
    """The last completed training step (counter)."""
    _state["step"] = int(step)


def note_loop_started() -> None:
    """This process entered its training loop: from here on an error may be its own (an image one
    rank alone reads), so every rank reports it (`quiet_rank`)."""
    _state["loop"] = True


def quiet_rank(e: BaseException) -> bool:
    """Under torchrun a rank other than 0 keeps quiet about an error that rank 0 reports too: one
    found before the training loop (the same flags, files and folders on every rank), or a lost
    peer (`torch_port.distributed.PeerStopped`: rank 0 has failed and said why, or says it lost a
    peer)."""
    from .options import other_torchrun_rank
    if not other_torchrun_rank():
        return False
    return not _state.get("loop") or any(c.__name__ == "PeerStopped" for c in type(e).__mro__)


def note_older_run_aside(done: bool) -> None:
    """`--resume False`: whether the older run has been moved aside (False while it is being moved,
    or when that was undone): until then the resume line keeps `--resume False` (a plain rerun would
    continue the older run)."""
    _state["older_run_aside"] = bool(done)


def note_checkpoint(name: str) -> None:
    """The newest checkpoint this run wrote or resumed from."""
    _state["checkpoint"] = str(name)


def note_checkpoint_folder(folder: str) -> None:
    """The run's checkpoint folder: the Ctrl-C / error line then names the newest complete
    checkpoint actually there (what a resume continues from), not the last one noted - a save
    that failed half-way may have left a newer one, or none."""
    _state["checkpoint_folder"] = str(folder)


def last_checkpoint() -> str | None:
    """The newest complete checkpoint in the noted folder (its name without the folder), else
    the one noted last, else None."""
    folder = _state.get("checkpoint_folder")
    if folder:
        try:
            from .checkpoint_policy import inventory
            for f in inventory(folder):
                if f.complete:
                    return os.path.basename(f.base)
        except OSError:
            pass
    return _state.get("checkpoint")


def is_bad_input(e: BaseException) -> bool:
    if isinstance(e, (ValueError, OSError, LookupError)):
        return True
    return any(c.__name__ in _BAD_INPUT_NAMES for c in type(e).__mro__)


_HOST_OOM = ("can't allocate memory", "not enough memory", "std::bad_alloc")  # torch's CPU allocator, in its words
# a GPU's: a CUDA library allocating for itself (cuDNN's / cuBLAS's workspace or handle) or the CUDA
# runtime, raised by torch as a RuntimeError (AcceleratorError in newer releases) with the status name
GPU_OOM_MARKS = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUFFT_ALLOC_FAILED",
                 "CUSOLVER_STATUS_ALLOC_FAILED", "CUSPARSE_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def gpu_library_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is a CUDA library's or the CUDA runtime's failed allocation (torch's caching
    allocator raises its own torch.OutOfMemoryError instead)."""
    return isinstance(e, RuntimeError) and any(m in str(e) for m in GPU_OOM_MARKS)


def out_of_memory(e: BaseException) -> BaseException | None:
    """The out-of-memory error `e` is or was raised from (Python's MemoryError, torch's CPU
    allocator's RuntimeError, a GPU's: torch.OutOfMemoryError or a CUDA library's), else None: a
    size the machine cannot hold (a huge --batches, a full model at a large --img_size), said as
    such rather than as an internal error. Training's and --batch's GPU lines
    (torch_port.train.GPUOutOfMemory, torch_port.batch_translate) name the settings themselves."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, MemoryError) or (type(e) is RuntimeError and any(m in str(e) for m in _HOST_OOM)) \
                or type(e).__name__ == "OutOfMemoryError" or gpu_library_out_of_memory(e):  # (no torch import here)
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def tf_error_text(raw: str) -> str:
    """A TensorFlow op error's cause alone (`path; File too large`): in graph mode TF puts the
    failing op's Python stack before it ("Detected at node ... defined at (most recent call
    last)", then "Node: ...") and the op's creation stack after it ("Original stack trace for"),
    dozens of `File ...` lines that an error line would otherwise flatten into itself."""
    if "defined at (most recent call last)" in raw:
        lines = raw.splitlines()
        node = max((i for i, line in enumerate(lines) if line.startswith("Node: ")), default=None)
        cause = [line for line in lines[node + 1:] if line.strip() and not line.strip().startswith("[[")] \
            if node is not None else []
        raw = "\n".join(cause) or raw
    return raw.split("Original stack trace for")[0]


def one_line(e: BaseException) -> str:
    folder = _unwritable_folder(e)
    if folder is not None:
        return folder
    text = " ".join(tf_error_text(str(e)).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text += f": {e.filename!r}"
    return text


def _unwritable_folder(e: BaseException) -> str | None:
    """A write refused in a folder (its permissions changed under a run, a read-only disk) said as
    the folder, not as the temp file the atomic write was creating there (`.tmp-<pid>@<host>-...`, a name
    the user never chose); None for any other error."""
    if not isinstance(e, OSError) or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not e.filename:
        return None
    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else str(e.filename)
    if not os.path.basename(name).startswith(".tmp-"):
        return None
    return f"the folder {os.path.dirname(name) or '.'!r} is not writable ({e.strerror}): a file could not be written there"


def _launcher(prog: str) -> str:
    """`prog` as this process was started: under torchrun (its environment: LOCAL_WORLD_SIZE,
    WORLD_SIZE), `python -m X` is `torchrun --nproc_per_node N -m X`, so that the resume command
    continues with the same processes (the global batch is their batches together)."""
    local, world = os.environ.get("LOCAL_WORLD_SIZE"), os.environ.get("WORLD_SIZE")
    if not (local and world and "TORCHELASTIC_RUN_ID" in os.environ and prog.startswith("python -m ")):
        return prog
    given = _torchrun_options(prog[len("python -m "):])
    if given is not None:  # torchrun's own options as given (--standalone, --rdzv_endpoint ...)
        return " ".join(["torchrun"] + [shlex.quote(o) for o in given] + ["-m", prog[len("python -m "):]])
    nodes = max(1, int(world) // max(1, int(local)))
    return (f"torchrun{f' --nnodes {nodes}' if nodes > 1 else ''} --nproc_per_node {local} -m "
            f"{prog[len('python -m '):]}")


def _torchrun_options(module: str) -> list[str] | None:
    """The options torchrun (this process's launcher: its parent) was given before `-m <module>`,
    from its command line (/proc), or None where it cannot be read or is not such a launch."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            args = [os.fsdecode(a) for a in fh.read().split(b"\0") if a]
    except OSError:
        return None
    for i, a in enumerate(args):
        if os.path.basename(a) == "torchrun" or (a == "torch.distributed.run" and args[i - 1:i] == ["-m"]):
            rest = args[i + 1:]
            for j in range(len(rest) - 1):
                if rest[j] == "-m" and rest[j + 1] == module:
                    return rest[:j]
            return None
    return None


def resume_command(prog: str, argv: list[str]) -> str:
    """The same command line, continuing: `--resume False` dropped (resuming is the default);
    under torchrun, through torchrun."""
    prog = _launcher(prog)
    if _state.get("older_run_aside") is False:  # --resume False has not taken effect: asked again
        return " ".join([prog] + [shlex.quote(a) for a in argv])
    def is_resume(name):  # --resume, or a prefix argparse reads as it (--resum: --resu is also --result_dir's)
        return name.startswith("--resum") and "--resume".startswith(name)
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if is_resume(a) and i + 1 < len(argv):
            skip = True
            continue
        if "=" in a and is_resume(a.split("=", 1)[0]):
            continue
        out.append(a)
    return " ".join([prog] + [shlex.quote(a) for a in out])


def _print_any_file_name() -> None:
    """A file name that is not UTF-8 (its bytes kept as surrogates by os.listdir) is printed as its
    bytes, as `ls` shows it, instead of stopping the command with UnicodeEncodeError on a stream
    whose error handler is strict (a UTF-8 locale's)."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict":
            try:
                stream.reconfigure(errors="surrogateescape")
            except (AttributeError, ValueError, OSError):  # not a TextIOWrapper: left as it is
                pass


def tensorflow_installed() -> bool:
    """Whether `import tensorflow` can find it, without importing it (a broken installation counts
    as installed: its failures are then shown, never taken for an absent package)."""
    import importlib.util
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # sys.modules holds None / a module without a spec
        return sys.modules.get("tensorflow") is not None


def tensorflow_missing(e: BaseException) -> bool:
    """Whether `e` (or the exception it was raised from) is `import tensorflow` failing because
    TensorFlow is not installed (a torch-only machine). A broken installation (a TF submodule or a
    dependency missing) is not this: it stays an internal error with its traceback."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, ModuleNotFoundError) and e.name == "tensorflow":
            return not tensorflow_installed()
        seen.add(id(e))
        e = e.__cause__
    return False


def needs_tensorflow_line(prog: str, instead: str = "") -> str:
    """The one line of a command that runs the official TF graph on a machine without TensorFlow."""
    return (f"{prog} runs the official TensorFlow graph, but TensorFlow is not installed here: install it "
            f"(pip install tensorflow-cpu)" + (f", or {instead}" if instead else ""))


def run(fn, argv=None, prog: str = "python", training=None, label: str = "error", needs_tf: str | None = None) -> int:
    """Call `fn(argv)` (argv without `--debug`) under the one error path and return the exit code.
    `training(argv) -> bool`: whether this command line trains (its Ctrl-C line offers a resume
    command); `label`: the prefix of the error line. `needs_tf`: set by commands that run the
    official TF graph (what to do without TensorFlow, may be ""): TensorFlow not installed is then
    bad input (one line, exit 2), not an internal error."""
    # the process's own command line (tests pass argv and keep their handlers; an interactive
    # session or a notebook that calls main() goes on after it, so its signals are left alone)
    whole_process = argv is None and not (hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules)
    rc = EXIT_INTERNAL
    try:
        rc = _run(fn, argv, prog, training, label, needs_tf)
    except KeyboardInterrupt as e:  # a second Ctrl-C / SIGTERM while _run said where the first one stopped
        rc = EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
        if not _state.get("stop_said"):
            _say_stopped(prog, _command_args(argv), training, e)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2)
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_INTERNAL)
        raise
    finally:
        if whole_process:
            try:
                exit_at_once_on_late_signals(rc)
            except KeyboardInterrupt as e:  # landed before the handler was set: the same end as after
                _late_signal_exit(rc, "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C")
    return rc


def _late_signal_exit(rc: int, how: str) -> None:
    """End the process at once with `rc` and the note of a signal after the command had ended."""
    try:
        sys.stdout.flush()
        if os.environ.get("RANK", "0") == "0":
            print(f"note: {how} after the run had ended: nothing was interrupted", file=sys.stderr, flush=True)
    finally:
        os._exit(rc)


def exit_at_once_on_late_signals(rc: int) -> None:
    """After the command has ended (its outputs complete, its line printed), Ctrl-C or SIGTERM in
    the process's teardown (atexit callbacks, library clean-up) ends it at once with the command's
    own code `rc` and one note, instead of a traceback from the interrupted clean-up and exit -2,
    or exit -15 and no line. Signals a launcher handles itself are left to it."""
    def handler(signum, frame):
        _late_signal_exit(rc, "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")
    installed = False
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        try:
            if signal.getsignal(sig) is default:
                signal.signal(sig, handler)
                installed = True
        except ValueError:  # not the main thread
            return
    if installed:
        atexit.register(_exit_after_the_atexit_callbacks, rc)


def _exit_after_the_atexit_callbacks(rc: int) -> None:
    """Run at the interpreter's exit: the other atexit callbacks (under the handler above), then
    exit with `rc`. After the atexit callbacks Python resets SIGINT / SIGTERM to their default
    action and finalizes the modules (torch's: most of a finished run's teardown), where a signal
    ended the finished run with -2 / -15 and no line; the outputs are complete by then, so that
    finalization is skipped."""
    atexit.unregister(_exit_after_the_atexit_callbacks)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):  # closed, or a pipe the reader closed
            pass
    os._exit(rc)


def _command_args(argv) -> list[str]:
    """The command's arguments (sys.argv's when `argv` is None) without --debug."""
    return [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]


def _say_stopped(prog, argv, training, e: KeyboardInterrupt) -> None:
    """The stop line (step, checkpoint, resume command) of a Ctrl-C / SIGTERM, said once."""
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks: it saves and knows the checkpoint
        print(interrupted_line(prog, argv, training, _signal_of(e)), file=sys.stderr, flush=True)
    _state["stop_said"] = True  # (a second Ctrl-C before this: `run` says it)


def _run(fn, argv, prog, training, label, needs_tf) -> int:
    _print_any_file_name()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv) or os.environ.get("UGATIT_DEBUG", "") not in ("", "0")
    argv = _command_args(argv)
    reset()
    try:
        with warnings.catch_warnings(), sigterm_as_interrupt():
            plain_warnings()
            rc = fn(argv)
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt as e:
        if debug:
            traceback.print_exc()
        _say_stopped(prog, argv, training, e)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the one error path
        if debug:
            traceback.print_exc()
        stop = _caused_by_interrupt(e)
        if stop:  # Ctrl-C inside a library call that re-raised it as its own error
            print(interrupted_line(prog, argv, training, _signal_of(stop)), file=sys.stderr, flush=True)
            return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
        if needs_tf is not None and tensorflow_missing(e):
            print(f"{label}: {needs_tensorflow_line(prog, needs_tf)}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        limit = machine_limit(e)
        if limit in (errno.EMFILE, errno.ENFILE) and "limit on open files" not in str(e) \
                and "open files in the system" not in str(e):
            # a bare [Errno 24], or a library's own error for it (the DataLoader's, TF's ResourceExhaustedError)
            e = too_many_open_files(workers=any(a.split("=")[0] == "--num_workers" for a in argv or ()), code=limit)
        oom = out_of_memory(e)
        if is_bad_input(e) or oom:
            if quiet_rank(e):
                return EXIT_BAD_INPUT
            where = ""
            if training and training(argv) and _state.get("step") is not None:  # e.g. the disk filled up
                where = (f" (stopped at step {_state['step']}; last checkpoint: {last_checkpoint() or 'none'}, "
                         f"intact; resume with: {resume_command(prog, argv)})")
            what = (f"out of memory ({one_line(oom)}): lower the sizes this command was given (e.g. --batch_size, "
                    f"--batch, --batches, --img_size, --ch) or free memory" if oom else one_line(e))
            print(f"{label}: {what}{where}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        print(f"{label}: internal error ({type(e).__name__}: {one_line(e)})"
              + ("" if debug else "; run again with --debug for the traceback"), file=sys.stderr, flush=True)
        return EXIT_INTERNAL


def _caused_by_interrupt(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C or SIGTERM's Terminated) that `e` was raised from, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _signal_of(e: BaseException) -> str:
    return "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"


def interrupted_line(prog: str, argv: list[str], training=None, how: str = "Ctrl-C") -> str:
    """The line a stopped command ends with; `how`: what stopped it (Ctrl-C, SIGTERM)."""
    trains = bool(training(argv)) if training else False
    if not trains:
        return f"interrupted ({how})"
    step = _state.get("step")
    ck = last_checkpoint()
    where = f"stopped at step {step}" if step is not None else "stopped before the first step"
    if _state.get("older_run_aside") is False:
        where += " (--resume False did not take effect: the older run's files are where they were)"
    elif ck:
        where += f" (last checkpoint: {ck})"
    else:
        where += " (no checkpoint written yet: a rerun starts over)"
    return ("" if how == "Ctrl-C" else f"{how}: ") + f"{where}; resume with: {resume_command(prog, argv)}"


def check_writable_folder(path: str, what: str) -> str:
    """Create `path` if needed and prove a file can be written there, before any long work: an
    unwritable output folder is bad input named with `what` (a flag or argument name)."""
    import tempfile
    from .options import OptionError
    blocked = no_folder_on_the_way(path)
    if blocked is not None:  # a file, or a link leading nowhere, where the folder or one above it goes
        raise OptionError(f"{what} {path!r} is not writable: {blocked}")
    try:
        os.makedirs(path, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), dir=path)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        limit = limit_error(e, f"cannot write a file in {what} {path!r}")
        if limit is not None:  # the machine's limit, not the folder's permissions
            raise limit from None
        raise OptionError(f"{what} {path!r} is not writable: {e.strerror or e}") from e
    return path


def no_folder_on_the_way(path: str) -> str | None:
    """What stops `path` being a folder: it or a folder above it (`--result_dir X` becomes
    `X/<model_dir>`) is a file or a link that leads to no folder - said as such, where the OS says
    only 'Not a directory' / 'No such file or directory' about the whole path. None: nothing."""
    chain, p = [], os.path.normpath(path)
    while p and p not in chain:
        chain.append(p)
        p = os.path.dirname(p)
    for p in reversed(chain):  # from the top down: the first one that is no folder
        if not os.path.lexists(p):
            return None  # made by makedirs from here on
        if not os.path.isdir(p):
            if os.path.islink(p) and not os.path.exists(p):
                return ("a link that leads to no folder is there" if p == chain[0]
                        else f"{p!r} is a link that leads to no folder")
            return "a file is there, not a folder" if p == chain[0] else f"{p!r} is a file, not a folder"
    return None
