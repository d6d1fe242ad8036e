"""`python -m tf_reference`: a drop-in for the official `main.py` (same flags, defaults, layout)."""
import sys

from ugatit_common import options as opt


def main(argv=None) -> int:
    parser = opt.build_parser("TensorFlow implementation of U-GAT-IT (official model on TF 2.x)")
    args = parser.parse_args(argv)
    try:
        cfg = opt.validate(opt.config_from(args))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
