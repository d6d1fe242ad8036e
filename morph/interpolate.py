"""Progressive A -> B morphs with a config-C `MorphUGATIT`: w codes, lerp, strip / GIF, smoothness.

w codes: w_ab = mean over K samples of MLP(z_a2b), w_ba likewise (the generator never saw mixed z,
so interpolation happens in w).

Frames (our choice, documented): frame i of `steps` uses w = lerp(w_ba, w_ab, t_i) with
t_i = i / (steps - 1). Frame 0 is therefore the B->A code applied to the input (for an A input:
its own domain, ~ the identity mapping the training asks of G(x_A, z_ba)), the last frame is the
A->B translation with the averaged code; both endpoints equal `model.translate_w(x, w_ba)` /
`model.translate_w(x, w_ab)` exactly. The strip and GIF show the input itself first, captioned
`input`, then the frames captioned with their t, so a viewer sees what was preserved; the
smoothness figure covers the frames only.

Smoothness figure: d_i = mean |frame_{i+1} - frame_i| (pixel values in [-1, 1]);
figure = max(d) / mean(d). 1.0 means every step changes the image by the same amount; larger
means the change bunches up in fewer steps. (If no frame changes at all, the figure is 1.0.)
"""
from __future__ import annotations

import html
import os
import sys
import time

import numpy as np
import torch

from torch_port.data import ImageReadError, test_image
from ugatit_common import strict_json
from ugatit_common.atomic import sweep_dead_temps, write_bytes_atomic
from ugatit_common.images import no_such_input, none_readable
from ugatit_common.options import IMAGE_EXTENSIONS, OptionError, skipped_not_a_file
from ugatit_common.output_names import OutputNames, OutputRecord
from ugatit_common.results import PAGE_HEAD, page_link, page_text, save_grid, to_uint8

__all__ = ["w_codes", "lerp", "morph_frames", "smoothness", "labelled_frames", "write_strip", "write_gif",
           "list_inputs", "interpolate_images", "write_index"]


# what a folder's images are: the extensions OpenCV writes, and GIF, which it reads (as the port's
# test phase does)
INPUT_EXTENSIONS = IMAGE_EXTENSIONS + (".gif",)


@torch.no_grad()
def w_codes(model, samples: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_ab, w_ba), each [1, w_dim]: the mean of MLP(z) over `samples` draws of each direction's z."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    w_ab = model.w_code("a2b", samples).mean(dim=0, keepdim=True)
    w_ba = model.w_code("b2a", samples).mean(dim=0, keepdim=True)
    return w_ab, w_ba


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """a + t * (b - a); t = 0 gives a exactly, t = 1 gives b exactly."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    return a + t * (b - a)


MAX_STEPS = 100       # frames of one strip / GIF: captions t=0.00..1.00 stay distinct; 101 tiles in a row
MAX_W_SAMPLES = 4096  # z draws averaged per w code (the mean is settled long before; more only costs memory)


def check_steps(steps: int, flag: str = "--steps") -> int:
    """`steps` if a strip / GIF can show it (2 .. MAX_STEPS), else ValueError naming the flag."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 2 <= steps <= MAX_STEPS:
        raise ValueError(f"{flag}={steps!r}: expected 2 .. {MAX_STEPS} frames per strip and GIF (the two endpoints "
                         f"t=0 and t=1 and the steps between)")
    return steps


def check_w_samples(samples: int, flag: str = "--samples") -> int:
    """`samples` if 1 .. MAX_W_SAMPLES z draws per w code, else ValueError naming the flag."""
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_W_SAMPLES:
        raise ValueError(f"{flag}={samples!r}: expected 1 .. {MAX_W_SAMPLES} z draws averaged per w code")
    return samples


def frame_ts(steps: int) -> list[float]:
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the two endpoints), got {steps}")
    return [i / (steps - 1) for i in range(steps)]


@torch.no_grad()
def morph_frames(model, x: torch.Tensor, w_ba: torch.Tensor, w_ab: torch.Tensor, steps: int):
    """Frames [steps] of [B, C, H, W]: G(x, lerp(w_ba, w_ab, t_i)), t_i = i / (steps - 1)."""
    return [model.translate_w(x, lerp(w_ba, w_ab, t)) for t in frame_ts(steps)]


def smoothness(frames) -> dict:
    """{"smoothness": max(d) / mean(d), "changes": d} with d_i = mean |f_{i+1} - f_i|."""
    d = [float((frames[i + 1].float() - frames[i].float()).abs().mean()) for i in range(len(frames) - 1)]
    if not d:
        raise ValueError("smoothness needs at least two frames")
    mean = sum(d) / len(d)
    figure = 1.0 if mean == 0 else max(d) / mean
    return {"smoothness": figure, "changes": d, "mean_change": mean, "steps": len(frames)}


def _hwc(frame: torch.Tensor) -> np.ndarray:
    a = frame.detach().cpu().float().numpy()
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError("strip / GIF frames must be single images")
        a = a[0]
    return a.transpose(1, 2, 0)


def _caption(image_uint8: np.ndarray, text: str) -> np.ndarray:
    """The image with a black band above it holding `text` (white), so a strip says what each
    frame is."""
    import cv2
    h, w = image_uint8.shape[:2]
    band = max(12, w // 6)
    top = np.zeros((band, w, 3), np.uint8)  # drawn apart, so no stroke touches the picture
    scale = band / 32.0
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(top, text, (max(0, (w - tw) // 2), (band + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([top, np.asarray(image_uint8, np.uint8)], axis=0)


def labelled_frames(frames, x: torch.Tensor | None = None, ts: list[float] | None = None) -> list[np.ndarray]:
    """uint8 HWC frames, each captioned (`t=0.00` ... `t=1.00`), the input `x` first as `input`."""
    ts = frame_ts(len(frames)) if ts is None else ts
    out = [] if x is None else [_caption(to_uint8(_hwc(x)), "input")]
    return out + [_caption(to_uint8(_hwc(f)), f"t={t:.2f}") for f, t in zip(frames, ts)]


def write_strip(frames, path: str, x: torch.Tensor | None = None) -> str:
    """The frames side by side (one row), atomically; with `x`, the input first and every frame
    captioned."""
    if x is None:
        return save_grid([_hwc(f) for f in frames], path, ncols=len(frames))
    from ugatit_common.results import write_rgb
    return write_rgb(path, np.concatenate(labelled_frames(frames, x), axis=1))


def write_gif(frames, path: str, duration_ms: int = 250, x: torch.Tensor | None = None) -> str:
    """An animated GIF of the frames (looping), via PIL, written atomically; with `x`, the input
    (captioned) is the first frame."""
    import io

    from PIL import Image

    tiles = labelled_frames(frames, x) if x is not None else [to_uint8(_hwc(f)) for f in frames]
    images = [Image.fromarray(t) for t in tiles]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(duration_ms), loop=0)
    return write_bytes_atomic(path, buf.getvalue())


def list_inputs(path: str) -> list[str]:
    """An image file, or the sorted image files (by extension) of a folder; not the outputs an
    earlier interpolate / translate wrote there (its OutputRecord)."""
    if os.path.isdir(path):
        ours = OutputRecord(path, forget=False).names  # read only: not (yet) the folder this command writes
        files = []
        for f in sorted(os.listdir(path)):
            full = os.path.join(path, f)
            if not f.lower().endswith(INPUT_EXTENSIONS) or f in ours:
                continue
            if os.path.isfile(full):
                files.append(full)
            else:  # a folder or a dead link named like a picture: said, as the port's test phase says it
                skipped_not_a_file(full)
        if not files:
            raise ImageReadError(path, f"folder holds no images ({', '.join(INPUT_EXTENSIONS)})")
        return files
    if not os.path.exists(path):
        raise ImageReadError(path, no_such_input(path))
    return [path]


def load_input(path: str, img_size: int) -> torch.Tensor:
    """The port's test preprocessing ([-1, 1], NCHW); unreadable files raise ImageReadError."""
    try:
        return test_image(path, img_size)
    except ImageReadError:
        raise
    except Exception as e:  # cv2 errors on odd files
        raise ImageReadError(path, e) from e


INCOMPLETE = ("<p><b>Incomplete</b>: the run writing this page had written the %d input(s) below when this "
              "was saved (it is rewritten when the run ends).</p>")
REFRESH_S = 2.0  # a running interpolate rewrites its page at most this often


def write_index(result_dir: str, rows: list[dict], filename: str = "index.html",
                names: OutputNames | None = None, page: str | None = None, final: bool = True) -> str:
    """`index.html` listing each input's strip, GIF and smoothness figure (relative links); with
    `names`, the page takes the first of index.html, index_1.html, ... that it may write; `page`:
    this path. `final=False`: the page of a run still writing (or stopped), marked incomplete."""
    if page is None:
        page = os.path.join(result_dir, filename)
        if names is not None:
            stem, ext = os.path.splitext(filename)
            page = names.path(result_dir, stem, ext=ext)

    def src(p):
        return page_link(p, page)

    def row(r):
        changes = " ".join(f"{c:.3f}" for c in r.get("changes", []))
        inp = f"<img src='{src(r['input'])}' width='{r['size']}'>" if r.get("input") and r.get("size") else ""
        return ("<tr><td>%s</td><td>%s</td><td><img src='%s'></td><td><img src='%s'></td>"
                "<td>%.4f</td><td>%s</td></tr>" % (page_text(r["name"]), inp, src(r["strip"]), src(r["gif"]),
                                                   r["smoothness"], html.escape(changes)))

    body = "\n".join(row(r) for r in rows)
    text = (PAGE_HEAD + "<h3>Morph-UGATIT: the input, then the B-&gt;A code (t=0) to the A-&gt;B code (t=1)</h3>"
            + ("" if final else INCOMPLETE % len(rows)) +
            "<p>smoothness = max / mean of the per-step change mean|f[i+1] - f[i]| (1.0 = even steps); "
            "the per-step changes are listed beside it.</p>"
            "<table><tr><th>name</th><th>input</th><th>strip</th><th>gif</th><th>smoothness</th>"
            "<th>per-step change</th></tr>\n"
            f"{body}\n</table></body></html>\n")
    return write_bytes_atomic(page, text.encode("utf-8"))


@torch.no_grad()
def interpolate_images(model, inputs: list[str], result_dir: str, steps: int = 6, samples: int = 8,
                       img_size: int | None = None, device=None, log=print) -> list[dict]:
    """For each input: `<name>_strip.png`, `<name>.gif`, `<name>_smoothness.json`; then
    `index.html`. Returns one dict per input (name, strip, gif, json, smoothness, changes).
    Frames holding NaN / inf (finite weights that overflow) stop it before anything is written
    for that input (ugatit_common.finite.NonFiniteOutput, exit 2)."""
    # frames from finite weights may overflow: exit 2, never a black strip or a NaN smoothness figure
    from ugatit_common.finite import refuse_non_finite_output

    from .loading import precision_of
    check_steps(steps, "steps")
    check_w_samples(samples, "samples")
    img_size = int(img_size or model.config["img_size"])
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        w_ab, w_ba = w_codes(model, samples)
        from ugatit_common.output_guard import own_result_folder
        with own_result_folder(result_dir):  # one command at a time writes these files and this page
            rows = []
            # a.png and a.jpg get distinct outputs; no output is an input or a file an earlier run did not write
            record = OutputRecord(result_dir)
            sweep_dead_temps(result_dir)  # what a killed earlier run left (never another running command's)
            names = OutputNames(inputs, record)
            # the page: chosen now, and written (replacing an earlier run's, whose files this run is about
            # to write over) before the first output, then as inputs are done: it never lists two runs' files
            page, saved_at = names.path(result_dir, "index", ext=".html"), None
            earlier = []  # the page before this run's replaced it ([None]: none), put back if no output is written
            announced = []  # (the first input's outputs, their files' states before), until its row

            def save_page(final=False):
                nonlocal saved_at
                if saved_at is None:
                    earlier.append(_bytes_or_none(page))
                    record.add([page])  # ours before it exists: a later run replaces it, never takes index_1
                write_index(result_dir, rows, page=page, final=final)
                saved_at = time.monotonic()
            try:
                for path in inputs:
                    try:  # an unreadable input is skipped with a warning, as in the port's test phase
                        x = load_input(path, img_size).to(device)
                    except ImageReadError as e:
                        if len(inputs) == 1:  # a lone input: its error line alone names it and why
                            raise
                        print(f"warning: skipping {path}: {e.reason}", file=sys.stderr, flush=True)
                        continue
                    frames = morph_frames(model, x, w_ba, w_ab, steps)
                    refuse_non_finite_output(torch.stack(frames), f"the morph strip of {path}", precision_of(model))
                    if saved_at is None:
                        save_page()
                    _one_input(path, x, frames, names, record, result_dir, steps, samples, img_size, rows, log,
                               announced)
                    if time.monotonic() - saved_at >= REFRESH_S:
                        save_page()
            except BaseException:  # Ctrl-C, an overflowing frame, a full disk: the page lists what was written
                from ugatit_common.results import file_state
                if saved_at is not None and not rows and all(file_state(p) == st for p, st in announced):
                    _put_back(page, earlier[0])  # no output written (the first one's write failed): as it was
                elif saved_at is not None:
                    try:
                        save_page()
                    except Exception:  # noqa: BLE001 - the run's own error is the one to report
                        pass
                record.forget_missing()  # and names recorded but not written are not claimed
                raise
            if not rows:  # the previous index.html stays as it was
                raise OptionError(none_readable(inputs, "input images"))
            save_page(final=True)
            if log:
                log(f"index: {page}")
            return rows
    finally:
        model.train(was_training)


def _bytes_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # none (or not a readable file: the page's write says so)
        return None


def _put_back(page: str, earlier: bytes | None) -> None:
    """The page as it was before this run replaced it (`earlier` None: none, so this run's goes)."""
    try:
        if earlier is None:
            os.remove(page)
        else:
            write_bytes_atomic(page, earlier)
    except OSError:  # a full disk: the run's own error is the one to report
        pass


def _one_input(path, x, frames, names, record, result_dir, steps, samples, img_size, rows, log, announced=None):
    """Write one input's strip, GIF and smoothness figure; append its page row to `rows`.
    `announced`: gets (output, its file's state) of each output before it is written, while
    `rows` is empty (a run whose first writes all failed puts the earlier page back)."""
    from ugatit_common.results import file_state
    name = names.stem(result_dir, path, ("_strip.png", ".gif", "_smoothness.json"))
    outputs = [os.path.join(result_dir, name + sfx) for sfx in ("_strip.png", ".gif", "_smoothness.json")]
    if announced is not None and not rows:
        announced.extend((p, file_state(p)) for p in outputs)
    # recorded as ours before they exist: a run killed mid-write leaves nothing a later run takes for a user's
    record.add(outputs)
    strip = write_strip(frames, os.path.join(result_dir, f"{name}_strip.png"), x=x)
    gif = write_gif(frames, os.path.join(result_dir, f"{name}.gif"), x=x)
    fig = smoothness(frames)
    fig.update({"input": os.path.abspath(path), "samples": samples,
                "t": frame_ts(steps), "strip": os.path.basename(strip), "gif": os.path.basename(gif),
                "definition": "max_i mean|f[i+1]-f[i]| / mean_i mean|f[i+1]-f[i]|; 1.0 = even"})
    js = write_bytes_atomic(os.path.join(result_dir, f"{name}_smoothness.json"),
                            (strict_json.dumps(fig, indent=2) + "\n").encode("utf-8"))
    if log:
        log(f"{name}: strip {strip}  gif {gif}  smoothness {fig['smoothness']:.4f}")
    rows.append({"name": name, "strip": strip, "gif": gif, "json": js, "input": os.path.abspath(path),
                 "size": img_size,
                 "smoothness": fig["smoothness"], "changes": fig["changes"]})
