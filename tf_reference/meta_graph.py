"""The `.meta` that the train phase's `tf.train.Saver` writes beside each checkpoint, made without
training: `weights_convert.py torch2tf` publishes it with the checkpoint it writes, so the folder
holds what an official one holds and its readers (`weights_convert.py tf2torch`, the port, the
train phase resuming) find the config recorded in the graph, as in any official checkpoint.

The graph is the train phase's own (`train.build_train_graph`, the graph `train` saves), its two
input pipelines listing the training files given (as the official `.meta` lists those its run
globbed; none given: empty lists, and its train op cannot run), and the Saver saves exactly the variables
the checkpoint holds (a weights-only or generators-only checkpoint then restores through
`import_meta_graph` too). The bytes are those `Saver.save` writes: `Saver.export_meta_graph`,
serialized as `graph_io.write_graph` serializes it. Building the graph takes seconds; the bytes
are kept per config and variable set for the life of the process."""
from __future__ import annotations

import functools
import json

from .compat import tf
from .train import build_train_graph

# the settings the train graph is built from (train_iterator's and UGATITGraph's)
GRAPH_KEYS = ("light", "ch", "n_res", "n_dis", "sn", "smoothing", "gan_type", "batch_size", "img_size", "img_ch",
              "augment_flag", "GP_ld", "adv_weight", "cycle_weight", "identity_weight", "cam_weight")


def train_meta_graph(cfg: dict, variables, files_A=(), files_B=()) -> bytes:
    """The serialized MetaGraphDef of the official train graph of `cfg`, its Saver saving
    `variables` (official variable names), its input pipelines reading `files_A` / `files_B`
    (the official train phase's data set size: the longer list). ValueError naming them when
    some are not variables of that graph."""
    key = json.dumps({k: cfg[k] for k in GRAPH_KEYS}, sort_keys=True)
    return _meta_graph(key, tuple(sorted(variables)), tuple(files_A), tuple(files_B))


@functools.lru_cache(maxsize=4)
def _meta_graph(cfg_json: str, variables: tuple, files_A: tuple, files_B: tuple) -> bytes:
    cfg = json.loads(cfg_json)
    with tf.Graph().as_default():
        # seed 0: the same graph on every build (the augmentation's build-time coin, its op seeds);
        # not the same bytes: TF names the data pipelines' functions with a per-process counter
        _, saver, _, _ = build_train_graph(cfg, list(files_A), list(files_B), max(len(files_A), len(files_B)),
                                           saved=variables, seed=0, force_augment=bool(cfg["augment_flag"]))
        return saver.export_meta_graph().SerializeToString(deterministic=True)
