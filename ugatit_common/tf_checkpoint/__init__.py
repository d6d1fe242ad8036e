"""The TF checkpoint format of U-GAT-IT, the ground floor every other part imports.

numpy only (no torch, no TensorFlow):
- `bundle`    TF V2 checkpoints ("tensor bundles"): BundleReader / BundleWriter, CRC32C-checked.
- `names`     the naming rule TF variable path <-> torch state-dict key, the layout transposes,
              Adam slot and power names.
- `metagraph` the `.meta` MetaGraphDef parsed without TensorFlow, and what an official graph
              records (smoothing, image size, GAN loss, loss weights).
- `config`    the config inference: .meta, then the official model_dir folder name, then the
              weights' shapes; explicit flags on top; every setting with its source.
- `read`      a whole checkpoint in one pass: config + tensors in torch naming and layout.
`torch_port`, `parity_tests` and `weights_convert.py` import this; it imports none of them.
"""
from .bundle import (BundleReader, BundleWriter, CheckpointError, prefix_of_file, read_checkpoint_state,
                     resolve_prefix, tensor_info, write_checkpoint_state)
from .config import (MODEL_KEYS, TRAINING_KEYS, CheckpointConfig, ConfigConflict, Setting, infer, infer_config,
                     parse_model_dir)
from .metagraph import MetaGraphError, read_meta_graph, recognise
from .names import (NETWORKS, POWER_NAMES, SLOT_SUFFIXES, ConversionError, checkpoint_step, selected, split_slot,
                    tf_to_torch_name, to_tf_layout, to_torch_layout, torch_layout_shape, torch_layout_view,
                    torch_to_tf_name)
from .read import is_tf_checkpoint_folder, read_arrays, read_config, read_training_arrays

__all__ = [
    "BundleReader", "BundleWriter", "CheckpointError", "prefix_of_file", "read_checkpoint_state", "resolve_prefix",
    "tensor_info",
    "write_checkpoint_state", "MODEL_KEYS", "TRAINING_KEYS", "CheckpointConfig", "ConfigConflict", "Setting",
    "infer", "infer_config", "parse_model_dir", "MetaGraphError", "read_meta_graph", "recognise", "NETWORKS",
    "POWER_NAMES", "SLOT_SUFFIXES", "ConversionError", "checkpoint_step", "selected", "split_slot",
    "tf_to_torch_name", "to_tf_layout", "to_torch_layout", "torch_layout_shape", "torch_layout_view",
    "torch_to_tf_name", "is_tf_checkpoint_folder", "read_arrays", "read_config", "read_training_arrays",
]
