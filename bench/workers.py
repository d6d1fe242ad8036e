"""One benchmark worker process per framework, driven over stdin/stdout, so TF and torch never
share a process (their thread pools and allocators would skew each other) and can be timed
alternately in the same run. A worker script answers each request line with one JSON line
(`reply`: strict JSON, a NaN / inf as null named in `non_finite`, put back by `Worker`); its first
JSON line (`hello`) describes it."""
from __future__ import annotations

import json
import subprocess
import sys


def strict_json():
    """ugatit_common.strict_json (the project root put on sys.path: a bench script runs with bench/
    as sys.path[0]): the one rule for NaN / inf in the JSON the project writes."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from ugatit_common import strict_json as module
    return module


def reply(obj) -> None:
    """A worker's answer to its parent: one line of strict JSON on stdout, flushed (a NaN timing or
    loss as null, named in `non_finite`; Worker puts it back)."""
    print(strict_json().dumps(obj), flush=True)


class Worker:
    def __init__(self, script: str, name: str, args: list[str], env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, script, "--worker", name] + list(args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                self._close_pipes()
                raise RuntimeError(f"{self.name} worker exited (code {code})")
            if line.startswith("{"):
                return strict_json().restore(json.loads(line))

    def ask(self, what: str) -> dict:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def time(self, what: str) -> float:
        return self.ask(what)["seconds"]

    def close(self) -> None:
        """Ask the worker to quit and wait for it; also for a worker that has died already (its
        pipes closed by `_read`, or broken), so a caller's clean-up after a dead worker goes on."""
        try:
            if not self.proc.stdin.closed:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # gone mid-write / its pipe closed meanwhile
            pass
        self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # a worker gone mid-write: its pipe is broken
                pass


# issue 17's targets were measured and set on an H200; a lent GPU may be an H100 (or another card)
TARGETS_GPU = "H200"


def measured_on(device=None) -> dict:
    """What a CUDA result was measured on, from torch (the GPU's own name, never assumed): name,
    compute capability, memory, torch and CUDA versions. {"gpu": "cpu"} without CUDA."""
    import torch
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return {"gpu": "cpu", "torch": torch.__version__}
    index = torch.device(device).index if device is not None else None
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    return {"gpu": torch.cuda.get_device_name(index), "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2 ** 30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def targets_note(gpu: str) -> str:
    """A note where the measured GPU is not the one issue 17's targets were set on."""
    if TARGETS_GPU.lower() in gpu.lower():
        return ""
    return (f"measured on {gpu}; the targets were set on an {TARGETS_GPU} (issue 17): a verdict here is this "
            f"GPU's, not the {TARGETS_GPU}'s")


# -- the results file (--json / --out) -------------------------------------------------------------

def check_json_out(path: str, flag: str = "--json") -> str | None:
    """Why the benchmark cannot write its results to `path` (checked before any work, so that
    minutes of measurement never end in a traceback), or None: a folder, a folder that is missing
    or not writable, or an existing file that is not a benchmark's results (a user's file, JSON or
    not, a run record: never replaced; an earlier results file, stamped `written_by` by
    `write_json`, or an empty file, is)."""
    import os
    if os.path.isdir(path) or path.endswith(("/", os.sep)):  # `new/`: a folder meant
        return f"{flag} {path!r} is a folder: give a file name"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag} {path!r}: its folder {folder!r} is missing or not writable"
    if os.path.lexists(path):
        if not os.path.isfile(path):
            return f"{flag} {path!r} exists and is not a regular file: it is never replaced"
        try:
            if os.path.getsize(path) > (64 << 20):
                raise ValueError("larger than any results file")
            with open(path, "rb") as fh:
                text = fh.read()
            data = json.loads(text.decode("utf-8")) if text.strip() else {"written_by": RESULTS_STAMP}
        except (OSError, ValueError):
            return f"{flag} {path!r} exists and is not a JSON file: it is never replaced; give another file name"
        if not (isinstance(data, dict) and str(data.get("written_by", "")).startswith(RESULTS_STAMP)):
            return (f"{flag} {path!r} exists and is not a benchmark's results file (no \"written_by\": "
                    f"\"{RESULTS_STAMP}...\"): it is never replaced; give another file name")
    return None


RESULTS_STAMP = "bench/"  # a results file's `written_by` starts so: the files a benchmark may replace


def write_json(path: str, data, **dump) -> str:
    """`data` as JSON at `path`, atomically (a temp file beside it, then renamed; a symlink there
    is replaced, not written through): a run stopped while writing (a step's timeout, Ctrl-C)
    leaves the previous results whole, never half a file. Stamped `written_by: bench/<script>`
    (a list is wrapped as `results`), so that a next run knows it may replace this file and no other."""
    import os
    strict = strict_json()  # NaN / inf (a failed timing) as null, named in `non_finite`
    from ugatit_common.atomic import write_bytes_atomic
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    stamp = {"written_by": RESULTS_STAMP + (script if script.endswith(".py") else "")}
    data = {**stamp, **data} if isinstance(data, dict) else {**stamp, "results": data}
    return write_bytes_atomic(path, strict.dumps(data, **dump).encode("utf-8"))
