"""`python -m tf_reference`: a drop-in for the official `main.py` (same flags, defaults, layout)."""
import sys

from ugatit_common import options as opt
from ugatit_common.finite import EXIT_NON_FINITE, NonFiniteLoss


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): bad input (flags, data, checkpoints, a full or
    read-only disk, TF's own errors) -> one `error:` line, exit 2; Ctrl-C -> exit 130 with the
    step and the resume command; --debug adds the traceback."""
    from ugatit_common import cli_errors

    def trains(args):
        return "test" not in [a.split("=", 1)[-1] for i, a in enumerate(args)
                              if a.startswith("--phase=") or (i and args[i - 1] == "--phase")]
    return cli_errors.run(_main, argv, prog="python -m tf_reference", training=trains,
                          needs_tf="train and test the PyTorch port with the same flags: python -m torch_port")


def _main(argv=None) -> int:
    parser = opt.build_parser("TensorFlow implementation of U-GAT-IT (official model on TF 2.x)")
    args = parser.parse_args(argv)
    try:
        cfg = opt.validate(opt.config_from(args))
        opt.check_dataset_name(cfg["dataset"])  # a name under ./dataset/, as the official glob reads it
        from . import train as phases  # TF is imported only once the flags are valid
        if cfg["phase"] == "train":
            phases.train(cfg)
            print(" [*] Training finished!")
        else:
            phases.test(cfg)
            print(" [*] Test finished!")
    except opt.OptionError as e:  # bad flags, dataset folders, or a checkpoint of another model
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:  # a loss or weight became NaN / inf: exit 3, as the port
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
