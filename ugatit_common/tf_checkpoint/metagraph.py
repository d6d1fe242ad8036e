"""Read a `.meta` MetaGraphDef without TensorFlow, and recognise what an official U-GAT-IT graph
records beyond its weights.

`tf.train.Saver.save` writes `<prefix>.meta` beside every checkpoint: the MetaGraphDef of the
graph that was trained. Only the GraphDef (MetaGraphDef field 2) is read: its NodeDefs (name, op,
inputs, and the attrs of the few op types looked at). Recognition goes by structure, never by
exact node names: op types, inputs traced through Identity / ReadVariableOp to the variable they
read, and constant values. The structures are those the official `UGATIT.py` / `ops.py` build
(and tf_reference builds the same graph):

- img_size: the generator's `up_sample` is `ResizeNearestNeighbor(x, size=[h*2, w*2])` with a
  constant size, twice per generator; the larger size is the image size. Corroborated by the
  input shapes where the graph records them: the train iterators' `IteratorGetNext`
  `output_shapes` ([batch, size, size, ch], batches of fixed size: `drop_remainder=True`) and the
  test phase's placeholders ([1, size, size, ch]).
- smoothing: AdaLIN with smoothing reads its `rho` variable into `Sub(rho, Const 0.1)` followed
  by a clip (`clip_by_value`: Minimum/Maximum, or ClipByValue). Without smoothing, `rho` feeds
  the mixing directly and no such Sub exists; LIN's rho never has it. So: the Sub present ->
  smoothing True; norm layers' rho read by the forward computation but no such Sub -> False.
- gan_type (train graphs): lsgan `SquaredDifference(x, 1.0)`; hinge `Relu(1.0 - x)`; the
  gradient penalty `norm(grad) - 1.0` of wgan-gp / wgan-lp / dragan (wgan-lp wraps it in
  `Maximum(0.0, .)`, dragan draws its noise `RandomUniform(tf.shape(real))`, a 4-D image shape,
  where the interpolation weight is [batch, 1, 1, 1]); none of these in a train graph -> gan.
- loss weights (train graphs): the official summaries `G_A_gan`, `G_A_cycle`, `G_A_identity`,
  `G_A_cam` (`ScalarSummary`, identified by their tag strings) take `weight * term`: a `Mul`
  with one scalar constant, the weight.
- the graph's variables (VariableV2 / VarHandleOp `shape` attrs), to check the .meta belongs to
  the checkpoint beside it.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .wire import _first, _parse_proto, _signed64, repeated_fixed, repeated_varints

# TF DataType codes used by the constants we read
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_STRING, _DT_HALF = 1, 2, 3, 9, 7, 19
_NP = {_DT_FLOAT: "<f4", _DT_DOUBLE: "<f8", _DT_INT32: "<i4", _DT_INT64: "<i8", _DT_HALF: "<f2"}

# op types whose attrs are decoded (everything else keeps only name, op and inputs)
_ATTR_OPS = {"Const", "Placeholder", "PlaceholderWithDefault", "VariableV2", "Variable", "VarHandleOp",
             "IteratorGetNext", "IteratorGetNextSync", "FunctionBufferingResourceGetNext",
             "MultiDeviceIteratorGetNextFromShard"}
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}
_PASS_THROUGH = {"Identity", "ReadVariableOp", "Snapshot", "StopGradient"}
_CLIP_OPS = {"Minimum", "Maximum", "ClipByValue"}
_ADD_OPS = {"Add", "AddV2"}
LOSS_WEIGHT_SUMMARIES = {"adv_weight": "G_A_gan", "cycle_weight": "G_A_cycle",
                         "identity_weight": "G_A_identity", "cam_weight": "G_A_cam"}


class MetaGraphError(ValueError):
    """A .meta file that cannot be parsed as a MetaGraphDef."""


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]          # data inputs, without ":N" output indices; control inputs dropped
    attr: dict = field(default_factory=dict)  # decoded attrs (only for _ATTR_OPS)


# -- decoding ----------------------------------------------------------------------------------

def _shape(buf: bytes) -> tuple[int, ...] | None:
    """TensorShapeProto -> tuple of sizes (-1 unknown), or None for an unknown rank."""
    f = _parse_proto(buf)
    if _first(f, 3, 0):
        return None
    return tuple(_signed64(_first(_parse_proto(d), 1, 0)) for d in f.get(2, []))


def _tensor(buf: bytes):
    """TensorProto -> numpy array (numeric and string types), or None when not decodable."""
    f = _parse_proto(buf)
    dtype = _first(f, 1, 0)
    shape = _shape(_first(f, 2, b"")) or ()
    shape = tuple(max(0, s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype == _DT_STRING:
        vals = [v.decode("utf-8", "replace") for v in f.get(8, [])]
        if len(vals) == 1 and n > 1:
            vals = vals * n
        return np.array(vals, dtype=object).reshape(shape) if len(vals) == n else None
    if dtype not in _NP:
        return None
    content = _first(f, 4, b"")
    if content:
        arr = np.frombuffer(content, _NP[dtype])
    elif dtype == _DT_FLOAT:
        arr = np.array(repeated_fixed(f.get(5, []), "<f4"), np.float32)
    elif dtype == _DT_DOUBLE:
        arr = np.array(repeated_fixed(f.get(6, []), "<f8"), np.float64)
    elif dtype == _DT_INT32:
        arr = np.array(repeated_varints(f.get(7, [])), np.int64).astype(np.int32)
    elif dtype == _DT_INT64:
        arr = np.array(repeated_varints(f.get(10, [])), np.int64)
    else:  # half_val: uint16 bit patterns in an int field
        arr = np.array(repeated_varints(f.get(13, [])), np.uint16).view(np.float16)
    if arr.size == n:
        return arr.reshape(shape)
    if arr.size == 0:
        return np.zeros(shape, _NP[dtype])
    if n > arr.size:  # TF stores a repeated last value once: fill
        return np.concatenate([arr, np.full(n - arr.size, arr[-1], arr.dtype)]).reshape(shape)
    return None


def _attr_value(buf: bytes):
    """AttrValue -> python value: list, s (str), i, f, b, type, shape, tensor."""
    f = _parse_proto(buf)
    if 1 in f:  # ListValue
        lf = _parse_proto(_first(f, 1, b""))
        if 7 in lf:
            return [_shape(s) for s in lf[7]]
        if 3 in lf:
            return repeated_varints(lf[3])
        if 6 in lf:
            return repeated_varints(lf[6])
        if 2 in lf:
            return [s.decode("utf-8", "replace") for s in lf[2]]
        return []
    if 2 in f:
        return _first(f, 2, b"").decode("utf-8", "replace")
    if 3 in f:
        return _signed64(_first(f, 3, 0))
    if 4 in f:
        return repeated_fixed([_first(f, 4, 0)], "<f4")[0]
    if 5 in f:
        return bool(_first(f, 5, 0))
    if 6 in f:
        return _first(f, 6, 0)
    if 7 in f:
        return _shape(_first(f, 7, b""))
    if 8 in f:
        return _tensor(_first(f, 8, b""))
    return None


def _node(buf: bytes) -> Node:
    f = _parse_proto(buf)
    name = _first(f, 1, b"").decode("utf-8", "replace")
    op = _first(f, 2, b"").decode("utf-8", "replace")
    inputs = []
    for raw in f.get(3, []):
        s = raw.decode("utf-8", "replace")
        if s.startswith("^"):
            continue
        head, sep, tail = s.rpartition(":")
        inputs.append(head if sep and tail.isdigit() else s)
    attr = {}
    if op in _ATTR_OPS:
        for entry in f.get(5, []):
            ef = _parse_proto(entry)
            key = _first(ef, 1, b"").decode("utf-8", "replace")
            if key in ("value", "shape", "dtype", "output_shapes", "shapes"):
                attr[key] = _attr_value(_first(ef, 2, b""))
    return Node(name, op, inputs, attr)


class MetaGraph:
    """The nodes of a MetaGraphDef's GraphDef, with each node's consumers."""

    def __init__(self, nodes: list[Node], path: str = ""):
        self.path = path
        self.nodes = {n.name: n for n in nodes}
        self.consumers: dict[str, list[Node]] = {}
        for n in nodes:
            for i in n.inputs:
                self.consumers.setdefault(i, []).append(n)

    def of_type(self, *ops: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.op in ops]

    def trace(self, name: str) -> Node | None:
        """The node that produces `name`, looking through Identity / ReadVariableOp / Snapshot."""
        seen = set()
        node = self.nodes.get(name)
        while node is not None and node.op in _PASS_THROUGH and node.inputs and node.name not in seen:
            seen.add(node.name)
            node = self.nodes.get(node.inputs[0])
        return node

    def const(self, name: str):
        """The value of `name` when it traces to a Const, else None."""
        node = self.trace(name)
        if node is None or node.op != "Const":
            return None
        return node.attr.get("value")

    def scalar_const(self, name: str) -> float | None:
        v = self.const(name)
        if isinstance(v, np.ndarray) and v.dtype != object and v.size == 1:
            return float(v.reshape(()))
        return None

    def variables(self) -> dict[str, tuple[int, ...]]:
        return {n.name: tuple(n.attr["shape"]) for n in self.of_type(*_VARIABLE_OPS)
                if n.attr.get("shape") is not None}


def read_meta_graph(path: str) -> MetaGraph:
    """Parse `path` (a MetaGraphDef written by tf.train.Saver / export_meta_graph)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise MetaGraphError(f"{path}: cannot read the MetaGraphDef ({e})") from e
    try:
        graph_def = _first(_parse_proto(data), 2, None)
        if not isinstance(graph_def, bytes):
            raise ValueError("no graph_def (MetaGraphDef field 2)")
        nodes = [_node(b) for b in _parse_proto(graph_def).get(1, [])]
    except (ValueError, IndexError, struct.error) as e:
        raise MetaGraphError(f"{path}: not a readable MetaGraphDef ({e})") from e
    if not nodes:
        raise MetaGraphError(f"{path}: the MetaGraphDef's graph has no nodes")
    return MetaGraph(nodes, path)


def meta_path_for(prefix: str) -> str:
    """`tf.train.Saver.save(..., global_step=N)` writes `<prefix>.meta` beside `<prefix>.index`."""
    return prefix + ".meta"


def find_meta(prefix: str) -> str | None:
    path = meta_path_for(prefix)
    return path if os.path.isfile(path) else None


# -- recognition -------------------------------------------------------------------------------

@dataclass
class Finding:
    value: object
    detail: str  # what in the graph shows it (node names given as examples)


def _is_rho_read(g: MetaGraph, name: str) -> Node | None:
    """The rho variable node when `name` reads a variable called .../rho, else None."""
    node = g.trace(name)
    if node is not None and node.op in _VARIABLE_OPS and node.name.rsplit("/", 1)[-1] == "rho":
        return node
    return None


def _near(value: float | None, target: float, tol: float = 1e-6) -> bool:
    return value is not None and abs(value - target) <= tol


def find_smoothing(g: MetaGraph) -> Finding | None:
    """AdaLIN smoothing: Sub(rho, Const 0.1) feeding a clip -> True; rho used by the forward
    computation (Mul / Sub consumers of its read) without any such Sub -> False; else None."""
    smoothed, used = [], []
    for sub in g.of_type("Sub"):
        if len(sub.inputs) != 2:
            continue
        var = _is_rho_read(g, sub.inputs[0])
        if var is None or not _near(g.scalar_const(sub.inputs[1]), 0.1):
            continue
        if any(c.op in _CLIP_OPS for c in g.consumers.get(sub.name, [])):
            smoothed.append((var.name, sub.name))
    if smoothed:
        var, sub = smoothed[0]
        return Finding(True, f"{len(smoothed)} AdaLIN clip(rho - 0.1) subtractions in the graph, e.g. {sub!r} "
                             f"reading {var!r}")
    for node in g.of_type("Mul"):
        for i in node.inputs:
            var = _is_rho_read(g, i)
            if var is not None:
                used.append((var.name, node.name))
                break
    if used:
        var, mul = used[0]
        return Finding(False, f"the norm layers' rho variables feed the mixing directly (e.g. {mul!r} reads "
                              f"{var!r}) and no clip(rho - 0.1) subtraction exists")
    return None


def _input_shapes(g: MetaGraph) -> list[tuple[str, tuple]]:
    out = []
    for n in g.of_type("IteratorGetNext", "IteratorGetNextSync", "FunctionBufferingResourceGetNext",
                       "MultiDeviceIteratorGetNextFromShard"):
        for shape in n.attr.get("output_shapes") or []:
            if shape is not None and len(shape) == 4:
                out.append((n.name, shape))
    for n in g.of_type("Placeholder", "PlaceholderWithDefault"):
        shape = n.attr.get("shape")
        if shape is not None and len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] == shape[2] and shape[1] > 1:
            out.append((n.name, shape))
    return out


def find_img_size(g: MetaGraph) -> Finding | None:
    """The generator's up-sampling sizes (the larger one is the image size), corroborated by the
    input shapes; None when the graph has neither. Raises MetaGraphError when they disagree."""
    sizes = {}
    for n in g.of_type("ResizeNearestNeighbor"):
        if len(n.inputs) < 2:
            continue
        v = g.const(n.inputs[1])
        if isinstance(v, np.ndarray) and v.dtype != object and v.shape == (2,) and v[0] == v[1] and v[0] > 0:
            sizes.setdefault(int(v[0]), n.name)
    inputs = [(name, shape) for name, shape in _input_shapes(g) if shape[1] > 0 and shape[1] == shape[2]]
    if sizes:
        size = max(sizes)
        if any(s not in (size, size // 2) for s in sizes):
            raise MetaGraphError(f"{g.path}: the up-sampling sizes {sorted(sizes)} are not the official "
                                 f"generator's two (image size / 2 and image size)")
        bad = [(name, shape) for name, shape in inputs if shape[1] != size]
        if bad:
            raise MetaGraphError(f"{g.path}: the generator up-samples to {size} px ({sizes[size]!r}) but the input "
                                 f"{bad[0][0]!r} has shape {list(bad[0][1])}")
        detail = f"the generator's last up-sampling resizes to {size}x{size} ({sizes[size]!r})"
        if inputs:
            detail += f"; input {inputs[0][0]!r} has shape {list(inputs[0][1])}"
        return Finding(size, detail)
    found = {shape[1] for _, shape in inputs}
    if len(found) == 1:
        name, shape = inputs[0]
        return Finding(found.pop(), f"input {name!r} has shape {list(shape)}")
    if len(found) > 1:
        raise MetaGraphError(f"{g.path}: input shapes disagree on the image size: "
                             + ", ".join(f"{n} {list(s)}" for n, s in inputs))
    return None


def is_train_graph(g: MetaGraph) -> bool:
    """The official train graph: Adam updates of the networks' variables."""
    return any(n.op in ("ApplyAdam", "ResourceApplyAdam") for n in g.nodes.values())


def _traces_to(g: MetaGraph, name: str, ops: set[str], through=("Squeeze", "Identity")) -> bool:
    node = g.nodes.get(name)
    seen = 0
    while node is not None and node.op in through and node.inputs and seen < 8:
        node, seen = g.nodes.get(node.inputs[0]), seen + 1
    return node is not None and node.op in ops


def find_gan_type(g: MetaGraph, img_size: int | None = None) -> Finding | None:
    """The adversarial loss of a train graph (see the module docstring); None for other graphs.
    `img_size` (when known) pins dragan's noise shape to the images'."""
    if not is_train_graph(g):
        return None
    for n in g.of_type("SquaredDifference"):
        if len(n.inputs) == 2 and _near(g.scalar_const(n.inputs[1]), 1.0):
            return Finding("lsgan", f"least-squares loss SquaredDifference(x, 1.0) ({n.name!r})")
    for n in g.of_type("Relu"):
        src = g.nodes.get(n.inputs[0]) if n.inputs else None
        if src is not None and src.op == "Sub" and len(src.inputs) == 2 and _near(g.scalar_const(src.inputs[0]), 1.0):
            return Finding("hinge", f"hinge loss Relu(1.0 - x) ({n.name!r})")
    penalties = []
    for n in g.of_type("Sub"):
        if len(n.inputs) == 2 and _near(g.scalar_const(n.inputs[1]), 1.0) and _traces_to(g, n.inputs[0], {"Sqrt"}):
            penalties.append(n)
    if penalties:
        for p in penalties:
            for c in g.consumers.get(p.name, []):
                if c.op == "Maximum" and any(_near(g.scalar_const(i), 0.0) for i in c.inputs if i != p.name):
                    return Finding("wgan-lp", f"gradient penalty max(0, |grad| - 1) ({c.name!r})")
        for n in g.of_type("RandomUniform"):
            # dragan's noise has the data's shape (`tf.shape(real)`: a Shape op, or the constant it
            # folds to when the shape is static); the interpolation alpha is [batch, 1, 1, 1]
            src = g.trace(n.inputs[0]) if n.inputs else None
            shape = g.const(n.inputs[0]) if n.inputs else None
            if (src is not None and src.op == "Shape") or (
                    isinstance(shape, np.ndarray) and shape.dtype != object and shape.shape == (4,)
                    and shape[1] == shape[2] and shape[1] > 1 and (img_size is None or shape[1] == img_size)):
                return Finding("dragan", f"gradient penalty |grad| - 1 ({penalties[0].name!r}) around noise drawn "
                                         f"in the data's shape ({n.name!r})")
        return Finding("wgan-gp", f"gradient penalty (|grad| - 1)^2 ({penalties[0].name!r})")
    return Finding("gan", "a train graph with no least-squares, hinge or gradient-penalty loss: the "
                          "logistic (sigmoid cross-entropy) GAN loss")


def find_loss_weights(g: MetaGraph) -> dict[str, Finding]:
    """{adv_weight, cycle_weight, identity_weight, cam_weight: Finding} from the official
    summaries of `weight * term` (ScalarSummary tags G_A_gan, G_A_cycle, G_A_identity, G_A_cam)."""
    by_tag = {}
    for n in g.of_type("ScalarSummary"):
        if len(n.inputs) != 2:
            continue
        tag = g.const(n.inputs[0])
        if isinstance(tag, np.ndarray) and tag.dtype == object and tag.size == 1:
            by_tag[str(tag.reshape(()))] = n
    out = {}
    for key, tag in LOSS_WEIGHT_SUMMARIES.items():
        n = by_tag.get(tag)
        if n is None:
            continue
        mul = g.nodes.get(n.inputs[1])
        if mul is None or mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        consts = [v for v in (g.scalar_const(i) for i in mul.inputs) if v is not None]
        if len(consts) == 1:
            v = consts[0]
            out[key] = Finding(int(v) if float(v).is_integer() else v,
                               f"summary {tag!r} records {v:g} * term ({mul.name!r})")
    return out


def recognise(g: MetaGraph) -> dict[str, Finding]:
    """Every setting the graph records: {key: Finding}."""
    out = {}
    for key, fn in (("smoothing", find_smoothing), ("img_size", find_img_size)):
        f = fn(g)
        if f is not None:
            out[key] = f
    gan = find_gan_type(g, out["img_size"].value if "img_size" in out else None)
    if gan is not None:
        out["gan_type"] = gan
    out.update(find_loss_weights(g))
    return out
