"""Batched test-phase translation (`python -m torch_port --phase test --batch N`): images are read,
stacked N at a time, translated in one generator call each and written under the same names, on
the same results page, as the official one-image path (`translate._translate_files`) writes
them; a progress bar (tqdm, on stderr when it is a terminal) replaces the per-image lines.

Each image is translated on its own (instance and layer norms are per sample), so an image's
result is that of the one-image path up to float32 rounding (batched convolutions may sum in
another order). With a compiled generator or CUDA graphs the last, partial batch is padded to N
(with copies of its last image, whose results are dropped) so that one compiled graph serves
every call.

Overlap (`overlap=True`, the default): a reader thread decodes and resizes the next batches
(with a pool of decoder threads: OpenCV and numpy release the GIL; on CUDA into pinned memory,
copied to the GPU without blocking) while
the generator runs, and writer threads encode and write the PNGs of the previous batch; file
names are given out, and page rows added, in input order on the calling thread, so the files and
the page are those of the serial path (`overlap=False`), byte for byte. On CUDA the generator
call of batch k+1 is queued before the host waits for batch k's pictures.

A GPU out of memory: one `error:` line naming --batch and a smaller value to try (exit 2).
"""
from __future__ import annotations

import collections
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from ugatit_common.cores import usable_cores
from ugatit_common.options import OptionError
from ugatit_common.results import save_image

from .data import ImageReadError, test_image
from .host_device import stream_event
from .out_of_memory import is_out_of_memory
from .translate import check_finite_result, precision_of, write_result

__all__ = ["translate_batches", "out_of_memory_error", "fixed_shape"]

READ_AHEAD = 2  # batches the reader prepares ahead of the generator


def _threads() -> int:
    """Decoder / writer threads: one per core, at most 8 (PNG coding of 256 px pictures)."""
    return max(1, min(8, usable_cores()))


def _batches(files, size):
    for i in range(0, len(files), size):
        yield files[i:i + size]


def fixed_shape(model) -> bool:
    """Whether a generator of `model` is compiled or replayed as CUDA graphs: then one input shape
    serves every call, and a partial last batch is padded."""
    from .fast import OptimizedModule
    return any(isinstance(g, OptimizedModule) and (g.compiled or g.cuda_graphs) for g in model.children())


def out_of_memory_error(batch: int, img_size: int, device) -> OptionError:
    """The one line for a generator call that ran out of device memory."""
    lower = f"e.g. --batch {max(1, batch // 2)}" if batch > 1 else "--batch 1 is already the least: use a smaller " \
                                                                   "--img_size or another device"
    return OptionError(f"--batch={batch}: out of {torch.device(device).type.upper()} memory translating {batch} "
                       f"image(s) of {img_size} px per generator call; lower --batch ({lower})")


def _read_one(f, img_size):
    try:
        return test_image(f, img_size)
    except ImageReadError as e:
        return e


def _read_chunk(chunk, img_size, warn, pool=None):
    """The chunk's readable images (in order) and their files; `pool`: decode them in parallel
    (OpenCV and numpy release the GIL), the results still in input order."""
    xs, ok = [], []
    results = pool.map(_read_one, chunk, [img_size] * len(chunk)) if pool is not None else \
        (_read_one(f, img_size) for f in chunk)
    for f, r in zip(chunk, results):
        if isinstance(r, ImageReadError):
            warn(f, r.reason)
        else:
            xs.append(r)
            ok.append(f)
    return xs, ok


def _stack(xs, n, batch, pad, pin):
    if pad and n < batch:
        xs = xs + [xs[-1]] * (batch - n)
    x = torch.cat(xs)
    return x.pin_memory() if pin else x


def translate_batches(model, files, direction, cfg, device, result_dir, page, counts, names, batch: int,
                      pad: bool = False, progress: bool = True, overlap: bool = True,
                      writers: int | None = None, warn_skips: bool = True) -> None:
    """`files` translated `batch` at a time with `model.translate(x, direction)`; unreadable files
    are skipped with a warning (`warn_skips` False: silently, for a lone input whose caller's
    error line names it). `pad`: pad a partial last batch to `batch` images. `overlap`:
    read, translate and write concurrently (the same files and page); `writers`: writer threads
    (default: up to 8, one per core)."""
    from tqdm import tqdm
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    # on a terminal only (as training's and the data check's bars): in a log file its redraws put
    # "\ra2b:  41%|..." before each `warning:` line
    bar = tqdm(total=len(files), desc=direction, unit="img", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True)

    def warn(f, reason):
        if warn_skips:
            bar.write(f"warning: skipping {f}: {reason}", file=sys.stderr)
        bar.update(1)
    try:
        if overlap:
            _overlapped(model, files, direction, cfg, device, result_dir, page, counts, names, batch, pad, bar, warn,
                        writers)
        else:
            _serial(model, files, direction, cfg, device, result_dir, page, counts, names, batch, pad, bar, warn)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory error is turned into the one line
        if not is_out_of_memory(e):
            raise
        raise out_of_memory_error(batch, cfg["img_size"], device) from e
    finally:
        bar.close()


def _serial(model, files, direction, cfg, device, result_dir, page, counts, names, batch, pad, bar, warn):
    for chunk in _batches(files, batch):
        xs, ok = _read_chunk(chunk, cfg["img_size"], warn)
        if not xs:
            continue
        n = len(xs)
        x = _stack(xs, n, batch, pad, False).to(device)
        with torch.no_grad():
            y = model.translate(x, direction)[:n].permute(0, 2, 3, 1).float().cpu().numpy()
        for f, img in zip(ok, y):
            write_result(img, f, direction, result_dir, page, counts, names, precision_of(model, direction))
            bar.update(1)


class _Reader(threading.Thread):
    """Reads and stacks batches ahead into a bounded queue; (None, exc) on failure, None at the end."""

    def __init__(self, files, batch, img_size, pad, pin, warn):
        super().__init__(daemon=True, name="ugatit-batch-reader")
        self.files, self.batch, self.img_size, self.pad, self.pin, self.warn = files, batch, img_size, pad, pin, warn
        self.out = queue.Queue(maxsize=READ_AHEAD)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self):
        pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="ugatit-decoder")
        try:
            for chunk in _batches(self.files, self.batch):
                xs, ok = _read_chunk(chunk, self.img_size, self.warn, pool)
                if xs and not self._put((ok, _stack(xs, len(xs), self.batch, self.pad, self.pin))):
                    return
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread, raised there
            self._put((None, e))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _overlapped(model, files, direction, cfg, device, result_dir, page, counts, names, batch, pad, bar, warn,
                writers):
    device = torch.device(device)
    cuda = device.type == "cuda"
    reader = _Reader(files, batch, cfg["img_size"], pad, cuda, warn)
    precision = precision_of(model, direction)
    pool = ThreadPoolExecutor(max_workers=writers or _threads(), thread_name_prefix="ugatit-png-writer")
    pending = collections.deque()  # (future, input file, output path), in input order
    in_flight = None  # (ok files, pictures on the host, event) of the batch whose copy may still run

    def finish_ready(block: bool):
        while pending and (block or pending[0][0].done()):
            fut, f, out = pending.popleft()
            fut.result()  # a write error is raised here, in input order
            page.add(os.path.relpath(out, result_dir).replace(os.sep, "/"), f, out)
            counts[direction] = counts.get(direction, 0) + 1
            bar.update(1)

    def hand_over(item):
        ok, host, event = item
        if event is not None:
            event.synchronize()
        for f, img in zip(ok, host.numpy()):
            check_finite_result(img, f, direction, precision)  # as write_result: no black picture
            out = names.path(os.path.join(result_dir, direction), f)  # in input order, as write_result
            page.before_output(out)  # an earlier run's page never lists this run's pictures
            pending.append((pool.submit(save_image, img, out), f, out))
        finish_ready(False)

    reader.start()
    try:
        while True:
            item = reader.out.get()
            if item is None:
                break
            ok, x = item
            if ok is None:
                raise x
            n = len(ok)
            x = x.to(device, non_blocking=True)
            with torch.no_grad():
                y = model.translate(x, direction)[:n].permute(0, 2, 3, 1).float()
            if cuda:
                host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
                host.copy_(y, non_blocking=True)
                event = stream_event(y.device)  # where the copy runs (not the current GPU: --device cuda:N)
            else:
                host, event = y.cpu(), None
            if in_flight is not None:
                hand_over(in_flight)
            in_flight = (ok, host, event)
        if in_flight is not None:
            hand_over(in_flight)
            in_flight = None
        finish_ready(True)
    finally:
        reader.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        reader.join(timeout=5)
        # stopped (an error, a NaN picture, Ctrl-C) while writes were in flight: the pictures they
        # wrote are on the page the stopped run leaves (the caller's page.stopped()), those not
        # written (cancelled or failed) are not
        for fut, f, out in pending:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                page.add(os.path.relpath(out, result_dir).replace(os.sep, "/"), f, out)
                counts[direction] = counts.get(direction, 0) + 1
        pending.clear()
