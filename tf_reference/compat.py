"""TensorFlow 1 graph mode on TF 2.x: the official code ran with TF1 defaults (graph mode,
reference variables), and the golden bundle was produced that way."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as _tf  # noqa: E402

tf = _tf.compat.v1
tf.disable_v2_behavior()
tf.logging.set_verbosity(tf.logging.ERROR)

__all__ = ["tf"]
