"""Moved to `ugatit_common.tf_checkpoint.bundle` (the TF checkpoint format is the ground floor that
torch_port, parity_tests and weights_convert import); this name stays for existing code."""
from ugatit_common.tf_checkpoint.bundle import *  # noqa: F401,F403
from ugatit_common.tf_checkpoint.bundle import __all__  # noqa: F401
