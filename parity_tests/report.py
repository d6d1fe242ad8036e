"""Per-layer parity report of an official TF checkpoint: tf_reference vs torch_port.

    python -m parity_tests.report CKPT OUT_DIR [--img_size N] [--smoothing True|False] [--seed S]
                                               [--fast_paths bf16,fp16,fp32+compile | none] [--free_run N]

The config is inferred as `weights_convert.py tf2torch` does (ugatit_common.tf_checkpoint.config):
from the checkpoint's `.meta` graph, its official model_dir folder name, then its weights. The
flags are for what the checkpoint does not record (a flag that contradicts it is an error); a
setting still unknown is guessed (official default), printed on stderr and listed in the report.
Both frameworks run every network in the checkpoint on one random input in [-1, 1] (float32
and the float64 truth; criteria in parity_tests/harness.py), and OUT_DIR gets parity_report.md
and parity_report.html. The table has one more column per fast path of --fast_paths (default
bf16 on CPU, bf16,fp16 where CUDA is available, run there; `none`: no columns): each generator
tensor's error of that path (torch_port.optimize) against the float64 truth, joined to the
harness's rows by name (parity_tests/fast_paths.py: report_columns, harness_name); OUT_DIR
also gets fast_paths.md / .html, the same numbers for every generator layer (also those TF
does not record). The fast-path columns are information: they do not change the exit status.
`--free_run N` adds a section: TF and the port trained side by side in float64 for N iterations
from the checkpoint (parity_tests/free_run.py, parity_tests/free_run_report.py); a free run over
its budget counts as a failure.

OUT_DIR is checked and held before any work (parity_tests.harness.claim_report_outputs): never a
folder of a live training run, the checkpoint folder being read or a dataset's image folder; a
file there by one of the report's names that these commands did not write (the user's) is never
replaced (exit 2), an earlier report is; a second command writing the same report is refused.
An earlier run's files this run does not write (its free_run.json when this run has no
--free_run, its fast_paths.* with `--fast_paths none`) are moved into
OUT_DIR/earlier-report-<their time>/ once this report is written (said in one line): a folder
never shows two runs' files as one report (harness.set_earlier_aside).

Exit status: 0 every tensor within tolerance, 1 some over, 2 bad input (an `error:` line; a
checkpoint with NaN or inf in any network is bad input: nothing is compared or written).
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): a corrupt checkpoint, an unwritable OUT_DIR,
    ... -> one `error:` line, exit 2; --debug adds an internal error's traceback."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python -m parity_tests.report",
                          needs_tf="measure the fast paths' error without it: python -m parity_tests.fast_paths CKPT OUT_DIR")


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity_tests.report",
                                description="Per-layer tf_reference vs torch_port parity report of a TF checkpoint")
    from ugatit_common.options import path_value, seed_value
    p.add_argument("ckpt", type=path_value, help="checkpoint folder (with its `checkpoint` file) or prefix")
    p.add_argument("out_dir", metavar="OUT_DIR", type=path_value, help="folder for parity_report.md / .html (and fast_paths.md / .html, free_run.json); "
                                   "an earlier report there is replaced, any other file by those names never")
    p.add_argument("--img_size", type=int, help="image size (recorded in the .meta; a light model's weights do not fix it)")
    p.add_argument("--smoothing", choices=["True", "False"], help="AdaLIN smoothing (recorded in the .meta and the "
                                                                  "model_dir folder name, not in the weights)")
    p.add_argument("--n_dis", type=int, help="discriminator layers (only for a generators-only checkpoint)")
    p.add_argument("--sn", choices=["True", "False"], help="spectral norm (only for a generators-only checkpoint)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random input (default 0)")
    p.add_argument("--fast_paths", default=None,
                   help="one more report column per fast path: each generator layer's error against the float64 "
                        "truth (comma-separated: bf16, fp16, fp32+compile, bf16+compile; compiled paths: network "
                        "outputs only; parity_tests/fast_paths.py), also written as fast_paths.md / .html; "
                        "default: bf16 on CPU, bf16,fp16 where CUDA is available; `none`: no fast paths")
    p.add_argument("--free_run", type=int, metavar="N",
                   help="add the free-running float64 training curve of N iterations from the checkpoint, TF vs the "
                        "port (python -m parity_tests.free_run); over its budget counts as a failure")
    args = p.parse_args(argv)
    from parity_tests.harness import refuse_empty_out_dir
    refuse_empty_out_dir(args.out_dir)
    if args.free_run is not None and args.free_run < 1:
        print(f"error: --free_run={args.free_run}: must be >= 1", file=sys.stderr)
        return 2
    from parity_tests.fast_paths import parse_paths
    paths = fast_paths_arg(args.fast_paths)
    try:
        eager, compiled = parse_paths(paths)
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
    refuse_non_finite_networks(args.ckpt)  # every network is compared: NaN / inf anywhere is refused
    info.announce()
    names = (list(REPORT_FILES) + (list(FAST_PATH_FILES) if eager or compiled else [])
             + (["free_run.json"] if args.free_run else []))
    outputs = [os.path.join(args.out_dir, n) for n in names]
    from parity_tests.harness import claim_report_outputs, other_report_paths
    from ugatit_common.output_guard import release_claims
    others = other_report_paths(args.out_dir, outputs)  # an earlier run's: set aside once this report is written
    claim_report_outputs(outputs, args.ckpt, "OUT_DIR", others=others)  # before minutes of work, not after
    try:
        return _report(args, info, overrides, eager, compiled)
    finally:
        release_claims(outputs + others)  # and OUT_DIR itself when a failed run made it and wrote nothing


REPORT_FILES = ("parity_report.md", "parity_report.html")
FAST_PATH_FILES = ("fast_paths.md", "fast_paths.html")


def _report(args, info, overrides: dict, eager, compiled) -> int:
    """Everything is computed first and written at the end, every file as one write
    (harness.write_report's companions): a run that fails or is stopped (Ctrl-C, a full disk)
    part-way leaves OUT_DIR as it was, never a report without its free run or beside an earlier
    run's fast-path pages."""
    cfg = info.config
    if args.free_run:  # its bad input (e.g. a weights-only generator checkpoint) fails now, not after the table
        from parity_tests import free_run_report
        free_run_prepared = free_run_report.prepare_from_checkpoint(args.ckpt, args.free_run, overrides, args.seed)

    from tqdm import tqdm  # on a terminal: TF and the port in float32 and float64, then the fast paths
    from parity_tests.harness import compare_networks, failures, write_report
    with tqdm(total=4 + bool(eager or compiled), desc="parity report", unit="run", file=sys.stderr,
              disable=None) as bar:
        def done(label):
            bar.set_postfix_str(label)
            bar.update()
        rows = compare_networks(args.ckpt, cfg, seed=args.seed, progress=done)
        extra, sections = None, []
        if eager or compiled:  # the fast paths' per-layer error, as columns of the same table
            from parity_tests.fast_paths import checkpoint_sections, default_device, path_labels, report_columns
            device = default_device()
            sections = checkpoint_sections(args.ckpt, cfg.get("img_size"), eager, compiled, args.seed, overrides,
                                           device)
            extra = report_columns(sections, path_labels(eager, compiled), rows, device)
            done("fast paths")
    bad = failures(rows)
    n_out = sum(r["output"] for r in rows.values())
    print(f"config: {cfg}")
    for line in info.describe():
        print("  " + line)
    print(f"{len(rows)} tensors compared ({n_out} network outputs), {len(bad)} over tolerance")
    for line in bad:
        print("  " + line)
    if extra is not None:
        print(f"fast paths {', '.join(path_labels(eager, compiled))} (on {device}): {len(extra['cells'])} generator "
              f"tensors in the report's fast-path columns")
        if extra["unmatched"]:  # a generator row whose name has no fast-path counterpart (none in this port)
            print(f"  no fast-path counterpart: {', '.join(extra['unmatched'])}")
    free, appendix = None, []
    if args.free_run:
        free = free_run_report.run(free_run_prepared)
        appendix.append(free_run_report.section(free))
    # the results, all computed, written as one: a failure or Ctrl-C half way leaves OUT_DIR as it was
    fast_page, companions = None, {}
    if sections:  # every generator layer, also those TF does not record (the same numbers)
        from parity_tests.fast_paths import fast_path_report_files
        companions.update(fast_path_report_files(sections, args.ckpt))
        fast_page = os.path.join(args.out_dir, "fast_paths.html")
    if free is not None:
        companions["free_run.json"] = free_run_report.json_text(free)
    page = write_report(rows, cfg, args.out_dir, args.ckpt, provenance=info.describe(), extra=extra,
                        appendix=appendix, companions=companions)
    from parity_tests.harness import set_earlier_aside  # an earlier run's files this one did not replace
    set_earlier_aside(args.out_dir, list(companions) + ["parity_report.md", "parity_report.html"])
    print(f"report: {page}")
    if fast_page:
        print(f"fast paths, every layer: {fast_page}")
    return 1 if bad or (free and free["first_over"]) else 0


def refuse_non_finite_networks(ckpt: str) -> None:
    """NonFiniteWeights (exit 2) naming the first variable of the generators or discriminators
    holding NaN / inf: the report runs them all (read one tensor at a time, numpy only)."""
    from ugatit_common.finite import refuse_non_finite
    from ugatit_common.tf_checkpoint import BundleReader, selected
    with BundleReader(ckpt) as r:
        refuse_non_finite(((n, r.read(n)) for n in selected(r.keys(), False, False)), f"TF checkpoint {r.prefix}")


def fast_paths_arg(text: str | None) -> str:
    """--fast_paths as given, or its default (parity_tests.fast_paths.default_paths: bf16 on CPU,
    bf16,fp16 where CUDA is available); "none" (or "") -> "" (no fast paths)."""
    if text is None:
        from parity_tests.fast_paths import default_paths
        return default_paths()
    return "" if text.strip().lower() in ("", "none") else text


if __name__ == "__main__":
    sys.exit(main())
