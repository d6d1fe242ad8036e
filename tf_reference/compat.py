"""TensorFlow 1 graph mode on TF 2.x: the official code ran with TF1 defaults (graph mode,
reference variables), and the golden bundle was produced that way.

Importing TF here also keeps its console honest: what TF prints as a matter of course (the
oneDNN banner, which C++ writes to stderr before its log settings apply, and the TF1
deprecation notices that `disable_v2_behavior` logs) is dropped; any other line TF prints while
loading is passed through, and errors at run time are not touched (`session_config`
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


# activations grappler's remapper fuses into Conv2D + BiasAdd (a _FusedConv2D)
_FUSED_ACTIVATIONS = {"Relu", "Relu6", "LeakyRelu", "Elu", "Tanh", "Sigmoid"}


def remapper_would_fail(graph) -> bool:
    """Whether `graph` has a BiasAdd that feeds a fusable activation AND something else (a
    LeakyReluGrad in a training graph, an Identity that records the layer's output). Grappler's
    remapper fuses such a BiasAdd away regardless, then fails ("Mutation::Apply error: fanout
    ... exist for missing node ... BiasAdd", printed as an E-line on every run) and keeps the
    graph it had, discarding all of its fusions for that graph."""
    for op in graph.get_operations():
        if op.type == "BiasAdd":
            consumers = [c for out in op.outputs for c in out.consumers()]
            if len(consumers) > 1 and any(c.type in _FUSED_ACTIVATIONS for c in consumers):
                return True
    return False


def session_config(graph=None, config=None):
    """Session options for `graph` (default: the current default graph), built complete: where
    the remapper would fail (remapper_would_fail), it is switched off, which keeps exactly the
    graph TF ends up running (measured: the golden 3-iteration run's checkpoint and losses are
    bit-identical with and without it) and drops the error line. Other graphs (the test phase)
    keep TF's defaults, fusions included."""
    config = tf.ConfigProto() if config is None else config
    if remapper_would_fail(graph if graph is not None else tf.get_default_graph()):
        from tensorflow.core.protobuf import rewriter_config_pb2
        config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return config


def train_session_config():
    """session_config() of the current (training) graph."""
    return session_config()


__all__ = ["tf", "session_config", "train_session_config", "remapper_would_fail"]
