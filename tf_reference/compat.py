"""TensorFlow 1 graph mode on TF 2.x: the official code ran with TF1 defaults (graph mode,
reference variables), and the golden bundle was produced that way.

Importing TF here also keeps its console honest: what TF prints as a matter of course (the
oneDNN banner, which C++ writes to stderr before its log settings apply, and the TF1
deprecation notices that `disable_v2_behavior` logs) is dropped; any other line TF prints while
loading is passed through, and errors at run time are not touched (`train_session_config`
removes the one that was a grappler defect, not by hiding it)."""
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# lines TF prints on every start that are not about the user's run
_NOISE = ("oneDNN custom operations are on",
          "All log messages before absl::InitializeLog() is called are written to STDERR",
          "This TensorFlow binary is optimized to use available CPU instructions",
          "To enable the following instructions",
          "rebuild TensorFlow with the appropriate compiler flags")


def _import_tensorflow():
    """`import tensorflow` with the C++ start-up banner filtered out of fd 2 (it is written
    before TF_CPP_MIN_LOG_LEVEL takes effect, so that variable cannot silence it)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): import as is
        import tensorflow
        return tensorflow
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [ln for ln in text.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    return tensorflow


_tf = _import_tensorflow()
tf = _tf.compat.v1
tf.logging.set_verbosity(tf.logging.ERROR)  # before disable_v2_behavior, which logs deprecations
tf.disable_v2_behavior()


def train_session_config():
    """Session options for graphs with gradients. Grappler's remapper tries to fuse a
    Conv2D + BiasAdd + LeakyRelu of the discriminator into one op although LeakyReluGrad still
    reads the BiasAdd output, fails ("Mutation::Apply error: fanout ... LeakyReluGrad exist for
    missing node ... BiasAdd") and grappler keeps the graph it had. Switching the remapper off
    for these graphs keeps exactly that graph (measured: the golden run's checkpoint and losses
    are bit-identical with and without it) and drops the error line. Inference graphs keep it."""
    from tensorflow.core.protobuf import rewriter_config_pb2
    config = tf.ConfigProto()
    config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return config


__all__ = ["tf", "train_session_config"]
