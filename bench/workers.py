"""One benchmark worker process per framework, driven over stdin/stdout, so TF and torch never
share a process (their thread pools and allocators would skew each other) and can be timed
alternately in the same run. A worker script answers each request line with one JSON line;
its first JSON line (`hello`) describes it."""
from __future__ import annotations

import json
import subprocess
import sys


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
                return json.loads(line)

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
