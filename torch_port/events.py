"""TensorBoard event files (scalars and histograms) written with the `tensorboard` package's own
record framing (`RecordWriter`: length, masked CRC32C, data, CRC) and protos into a plain file.
`torch.utils.tensorboard` would do the same but imports TensorFlow whenever it is installed (~2 s
and ~500 MB per process, every DDP rank), and so does tensorboard's `EventFileWriter` (its
`tf.io.gfile` calls resolve to TensorFlow when it is importable); this never does."""
from __future__ import annotations

import contextlib
import itertools

import numpy as np

from ugatit_common.atomic import naming

FLUSH_SECONDS = 30  # events reach the file at least this often (and at close)
_FILE_NUMBERS = itertools.count()


class EventWriter:
    """`add_scalar(tag, value, step)`, `add_histogram(tag, values, step)`, `close()`: the part of
    SummaryWriter's interface the trainer uses; files open in TensorBoard as before. `purge_step`:
    the run's first step (SummaryWriter's `purge_step`): TensorBoard then hides the events of
    steps >= it in the folder's older files."""

    def __init__(self, log_dir: str, purge_step: int | None = None):
        import os
        import socket
        import time
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
        os.makedirs(log_dir, exist_ok=True)
        # the name tensorboard's EventFileWriter gives: events.out.tfevents.<time>.<host>.<pid>.<n>
        while True:
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                    f"{next(_FILE_NUMBERS)}")
            self.path = os.path.join(log_dir, name)
            try:
                handle = open(self.path, "xb")  # never over an earlier run's file
                break
            except FileExistsError:
                continue
        try:  # from the open on: an error or Ctrl-C anywhere below closes the file (no unclosed handle)
            self._handle = handle
            self._writer = RecordWriter(handle)
            with naming(self.path):  # a full disk's error names the file
                self._writer.write(event_pb2.Event(wall_time=time.time(),
                                                   file_version="brain.Event:2").SerializeToString())
                if purge_step is not None:
                    # TensorBoard drops the folder's earlier events at steps >= purge_step (what a killed
                    # run wrote after the checkpoint this run resumes from), as SummaryWriter(purge_step=...)
                    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
                    self._writer.write(event_pb2.Event(wall_time=time.time(), step=int(purge_step),
                                                       session_log=start).SerializeToString())
                self._writer.flush()
        except BaseException:  # no event file half written: it holds nothing yet
            with contextlib.suppress(OSError):  # closing flushes: on a full disk it fails too
                handle.close()
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise
        self._flushed = time.time()

    def _add(self, value, step: int) -> None:
        import time
        from tensorboard.compat.proto import event_pb2, summary_pb2
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value]))
        with naming(self.path):
            self._writer.write(event.SerializeToString())
        if time.time() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2
        self._add(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step)

    def add_histogram(self, tag: str, values, step: int, bins: int = 30) -> None:
        from tensorboard.compat.proto import summary_pb2
        v = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, np.float64).ravel()
        if v.size == 0:
            return
        counts, edges = np.histogram(v, bins=bins)
        # TensorBoard's histogram proto: right bucket edges and counts (empty leading buckets dropped)
        first = int(np.argmax(counts > 0)) if counts.any() else 0
        hist = summary_pb2.HistogramProto(min=float(v.min()), max=float(v.max()), num=float(v.size),
                                          sum=float(v.sum()), sum_squares=float(np.dot(v, v)),
                                          bucket_limit=[float(e) for e in edges[1 + first:]],
                                          bucket=[float(c) for c in counts[first:]])
        self._add(summary_pb2.Summary.Value(tag=tag, histo=hist), step)

    def flush(self, sync: bool = False) -> None:
        """Write what is buffered; `sync`: onto the disk too (before a checkpoint is saved)."""
        import os
        import time
        with naming(self.path):
            self._writer.flush()
            if sync:
                os.fsync(self._handle.fileno())
        self._flushed = time.time()

    def close(self) -> None:
        with naming(self.path):
            self._writer.close()
