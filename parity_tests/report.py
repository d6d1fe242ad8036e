"""Per-layer parity report of an official TF checkpoint: tf_reference vs torch_port.

    python -m parity_tests.report CKPT OUT_DIR [--img_size N] [--smoothing True|False] [--seed S]

The config is inferred as `weights_convert.py tf2torch` does (ugatit_common.tf_checkpoint.config):
from the checkpoint's `.meta` graph, its official model_dir folder name, then its weights. The
flags are for what the checkpoint does not record (a flag that contradicts it is an error); a
setting still unknown is guessed (official default), printed on stderr and listed in the report.
Both frameworks run every network in the checkpoint on one random input in [-1, 1] (float32
and the float64 truth; criteria in parity_tests/harness.py), and OUT_DIR gets parity_report.md
and parity_report.html; with --fast_paths bf16,fp16 also fast_paths.md / .html, the per-layer error of
those fast paths (torch_port.optimize) against the float64 truth (parity_tests/fast_paths.py).

Exit status: 0 every tensor within tolerance, 1 some over, 2 bad input (an `error:` line).
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): a corrupt checkpoint, an unwritable OUT_DIR,
    ... -> one `error:` line, exit 2; --debug adds the traceback."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python -m parity_tests.report")


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity_tests.report",
                                description="Per-layer tf_reference vs torch_port parity report of a TF checkpoint")
    p.add_argument("ckpt", help="checkpoint folder (with its `checkpoint` file) or prefix")
    p.add_argument("out_dir", help="folder for parity_report.md and parity_report.html")
    p.add_argument("--img_size", type=int, help="image size (recorded in the .meta; a light model's weights do not fix it)")
    p.add_argument("--smoothing", choices=["True", "False"], help="AdaLIN smoothing (recorded in the .meta and the "
                                                                  "model_dir folder name, not in the weights)")
    p.add_argument("--n_dis", type=int, help="discriminator layers (only for a generators-only checkpoint)")
    p.add_argument("--sn", choices=["True", "False"], help="spectral norm (only for a generators-only checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--fast_paths", default="", help="also write fast_paths.md / .html: each generator layer's error "
                   "of these fast paths against the float64 truth (comma-separated: bf16, fp16, fp32+compile, ...; "
                   "parity_tests/fast_paths.py)")
    args = p.parse_args(argv)
    if args.fast_paths:
        from parity_tests.fast_paths import parse_paths
        try:
            parse_paths(args.fast_paths)
        except ValueError as e:
            print(f"error: --fast_paths: {e}", file=sys.stderr)
            return 2

    from ugatit_common.options import config_from, validate
    from ugatit_common.tf_checkpoint import CheckpointError, ConversionError, read_config
    overrides = {"img_size": args.img_size, "n_dis": args.n_dis,
                 "smoothing": None if args.smoothing is None else args.smoothing == "True",
                 "sn": None if args.sn is None else args.sn == "True"}
    try:
        info = read_config(args.ckpt, overrides)
        cfg = info.config
        validate(config_from(cfg))
    except (ConversionError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info.announce()
    from ugatit_common.cli_errors import check_writable_folder
    check_writable_folder(args.out_dir, "OUT_DIR")  # before minutes of work, not after

    from parity_tests.harness import compare_networks, failures, write_report
    rows = compare_networks(args.ckpt, cfg, seed=args.seed)
    page = write_report(rows, cfg, args.out_dir, args.ckpt, provenance=info.describe())
    bad = failures(rows)
    n_out = sum(r["output"] for r in rows.values())
    print(f"config: {cfg}")
    for line in info.describe():
        print("  " + line)
    print(f"{len(rows)} tensors compared ({n_out} network outputs), {len(bad)} over tolerance")
    for line in bad:
        print("  " + line)
    print(f"report: {page}")
    if args.fast_paths:  # the fast paths' per-layer table beside the report (parity_tests/fast_paths.py)
        from parity_tests.fast_paths import checkpoint_sections, parse_paths, write_fast_path_report
        eager, compiled = parse_paths(args.fast_paths)
        sections = checkpoint_sections(args.ckpt, cfg.get("img_size"), eager, compiled, args.seed, overrides)
        print(f"fast paths: {write_fast_path_report(sections, args.out_dir, args.ckpt)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
