"""python -m morph {train,interpolate,translate,demo,export} - Morph-UGATIT on the verified port.

  train        the official flags + --config A|B|C --idp_weight --g_cam --device --seed
               --init_from PATH --data_root DIR, and the port's --resume --keep_checkpoints
               --num_workers --threads --precision fp32|tf32|bf16|fp16 --compile True|False
               --cuda_graphs auto|True|False; runs the port's trainer
               (torch_port.train.Trainer): torchrun data parallelism, TensorBoard events,
               NaN / inf loss -> exit 3
  interpolate  --input FILE|FOLDER --steps N --samples K: per input <name>_strip.png,
               <name>.gif, <name>_smoothness.json and index.html in --result_dir (config C)
  translate    --input FILE|FOLDER --direction a2b|b2a --samples N
               (interpolate and translate: --precision fp32|tf32|bf16|fp16 --compile True|False
               --cuda_graphs auto|True|False --cudnn_benchmark True|False|auto, the generator's fast
               path, torch_port.fast; default fp32, the exact port)
  demo DIR     demo data set + a tiny config-C training + a morph strip / GIF / smoothness
  export CKPT OUT.onnx   ONNX export, verified (config C: inputs image and w; the two direction
               codes' w in OUT_w.npz and the metadata); see morph/export.py

The checkpoint folder is <checkpoint_dir>/<model_dir>_morph<config> (the official naming plus
the config), unless --checkpoint names a folder or one of its weights files directly. The model
flags typed on the command line must agree with the checkpoint (morph/loading.py: exit 2 naming
both values; --img_size is honoured where the weights do not fix it), and NaN / inf weights are
refused. Bad input (unknown direction, --steps outside 2..100, unreadable image, wrong checkpoint kind, bad
flags) -> a message on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from ugatit_common import options as opt

EXIT_USAGE = 2
MAX_TRANSLATE_SAMPLES = 100  # translate --samples: files per input, and tiles in one row of its grid


def _common(p: argparse.ArgumentParser) -> None:
    opt.add_official_flags(p)
    p.add_argument("--config", default="C", type=str.upper, choices=["A", "B", "C"],
                   help="ablation config: A = UGATIT, B = A + identity-preserving loss, C = B + latent MLP, "
                        "one generator (default: C)")
    p.add_argument("--idp_weight", type=float, default=1.0, help="identity-preserving loss weight (default: 1.0)")
    p.add_argument("--g_cam", type=opt.str2bool, default=True, help="generator-side CAM loss on/off (default: True)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--seed", type=opt.seed_value, default=0, help="random seed, 0..2**32-1 (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    p = opt.Parser(prog="python -m morph", description="Morph-UGATIT: progressive A->B morphs on the verified port")
    sub = p.add_subparsers(dest="command", required=True, parser_class=opt.Parser)

    t = sub.add_parser("train", help="train or resume a Morph-UGATIT run")
    _common(t)
    t.add_argument("--init_from", default=None, type=opt.path_value, help="start from a UGATIT checkpoint (torch_port .safetensors "
                                                     "file / folder, or an official TF checkpoint folder, "
                                                     "prefix or one of its .index / .data / .meta files)")
    t.add_argument("--data_root", default=".", type=opt.path_value, help="folder holding dataset/<name>/ (default: .)")
    from torch_port.train import add_training_flags  # the port's: --num_workers --threads --keep_checkpoints --resume
    add_training_flags(t, "continue from the newest checkpoint (default: True); False moves an older run in the "
                          "folder into previous-run-<time>/ and starts fresh")
    t.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16", "fp16"),
                   help="training precision: fp32 (the exact port), tf32 (CUDA), bf16 or fp16 (mixed precision, "
                        "float32 master weights; fp16 with loss scaling: torch_port.train_precision)")
    t.add_argument("--compile", type=opt.str2bool, default=False,
                   help="torch.compile the networks (torch_port.train_compile; default False)")

    for name, help_ in (("interpolate", "morph strips / GIFs between the B->A and A->B codes (config C)"),
                        ("translate", "translate inputs with N samples of the direction code")):
        s = sub.add_parser(name, help=help_)
        _common(s)
        s.add_argument("--input", required=True, type=opt.path_value, help="an image file or a folder of images")
        s.add_argument("--checkpoint", default=None, type=opt.path_value, help="a Morph checkpoint folder or one of its weights files "
                                                          "(<prefix>.model-N.safetensors), instead of the folder "
                                                          "--checkpoint_dir and the flags name")
        s.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16", "fp16"),
                       help="generator precision (torch_port.fast; default fp32, the exact port; tf32: CUDA only)")
        s.add_argument("--compile", type=opt.str2bool, default=False, help="torch.compile the generator(s)")
        from torch_port.infer_flags import add_gpu_inference_flags
        add_gpu_inference_flags(s)  # --cuda_graphs --cudnn_benchmark
        if name == "interpolate":
            s.add_argument("--steps", type=int, default=6,
                           help="morph frames per strip and GIF, t = 0 .. 1 in steps-1 equal steps, 2 .. 100; the "
                                "input is shown before them (default: 6)")
            s.add_argument("--samples", type=int, default=8,
                           help="z samples averaged per w code, 1 .. 4096 (default: 8)")
        else:
            s.add_argument("--direction", required=True, choices=("a2b", "b2a"), help="a2b | b2a")
            s.add_argument("--samples", type=int, default=1,
                           help="translations per input (each with a fresh z), 1 .. 100 (default: 1); configs "
                                "A / B have no z: 1")

    from .export import add_parser as add_export_parser
    add_export_parser(sub)

    d = sub.add_parser("demo", help="demo data + tiny config-C training + morph strip / GIF")
    d.add_argument("dir", type=opt.path_value, help="folder for the data set, checkpoint and results")
    d.add_argument("--iterations", type=int, default=150, help="training iterations (default: 150)")
    d.add_argument("--img_size", type=int, default=64)
    d.add_argument("--ch", type=int, default=4)
    d.add_argument("--steps", type=int, default=6, help="morph frames per strip and GIF, 2 .. 100 (default: 6)")
    d.add_argument("--seed", type=opt.seed_value, default=0)
    d.add_argument("--device", default="auto")
    return p


def _device(name: str) -> torch.device:
    from torch_port.train import pick_device
    return pick_device(name)


def _cfg(args) -> dict:
    skip = {"command", "config", "device", "seed", "init_from", "data_root", "input", "checkpoint", "steps",
            "samples", "direction", "precision", "compile", "num_workers", "threads", "keep_checkpoints", "resume",
            "cuda_graphs", "cudnn_benchmark"}
    cfg = opt.config_from({k: v for k, v in vars(args).items() if k not in skip})
    cfg["morph_config"] = args.config
    return cfg


def _checkpoint_folder(args, cfg) -> str:
    from .train import morph_paths
    return args.checkpoint or morph_paths(cfg).checkpoint


def cmd_train(args) -> int:
    """The port's trainer (torch_port.train): torchrun data parallelism, TensorBoard, exit 3 on NaN."""
    from torch_port.train import check_training_flags, exit_code_of, training_process

    from .train import train
    check_training_flags(args)
    from torch_port.train_precision import check_training_precision
    check_training_precision(args.precision)
    cfg = _cfg(args)
    with training_process(args.device, args.threads) as (device, dist_info):
        check_training_precision(args.precision, device)
        out = {}
        rc = exit_code_of(lambda: out.update(train(
            cfg, device=device, seed=args.seed, base=args.data_root, init_from=args.init_from, resume=args.resume,
            keep_checkpoints=args.keep_checkpoints, num_workers=args.num_workers, precision=args.precision,
            compile=args.compile, cuda_graphs=args.cuda_graphs)))
        h = out.get("history")
        if h and dist_info.is_main:
            # the official counter starts at 1: checkpoint model-N has done N - 1 iterations (this line
            # said "counter N - 1", read as the counter: one less than the checkpoint's name)
            from ugatit_common.cli_errors import last_checkpoint
            print(f" [*] done: {out['counter'] - 1} iteration(s) in all, last d_loss {h[-1]['d_loss']:.4f} "
                  f"g_loss {h[-1]['g_loss']:.4f}; checkpoint "
                  f"{os.path.join(out['checkpoint_dir'], last_checkpoint() or '')}")
    return rc


def typed_settings(args) -> dict:
    """{config key: value} of the model flags typed on the command line (`args.typed`), which
    must agree with the checkpoint (morph.loading)."""
    from .loading import CHECKED_KEYS, FLAG_OF
    flags = {FLAG_OF.get(k, k): k for k in CHECKED_KEYS}
    return {flags[d]: getattr(args, d) for d in getattr(args, "typed", ()) if d in flags}


def _load(args):
    from .loading import load
    cfg = _cfg(args)
    model, _ = load(_checkpoint_folder(args, cfg), _device(args.device), typed_settings(args))
    model.z_generator = torch.Generator().manual_seed(args.seed)
    from torch_port.fast import optimize_generators  # the generator(s) only; z -> w stays float32
    optimize_generators(model, args.precision, args.compile, cuda_graphs=args.cuda_graphs,
                        cudnn_benchmark=args.cudnn_benchmark)
    return model, cfg


def _result_dir(cfg) -> str:
    from .train import morph_model_dir
    return os.path.join(cfg["result_dir"], morph_model_dir(cfg))


def _out_dir(args) -> str:
    """Where interpolate / translate write: `<result_dir>/<model dir>`, or `--result_dir` itself
    with --checkpoint; checked before anything is loaded or written (output_guard: never in a live
    run's folder, the checkpoint folder read, or a dataset's image folder)."""
    from ugatit_common.output_guard import check_result_folders
    cfg = _cfg(args)
    out_dir = _result_dir(cfg) if args.checkpoint is None else cfg["result_dir"]
    check_result_folders([out_dir], checkpoint=_checkpoint_folder(args, cfg))
    return out_dir


def _check_writable(out_dir: str) -> None:
    """An output folder that cannot be made or written (a file in its place, no permission) is
    bad input named by its flag, as in the port's test phase, before the first picture."""
    from ugatit_common.cli_errors import check_writable_folder
    check_writable_folder(out_dir, "--result_dir")


def cmd_interpolate(args) -> int:
    from .interpolate import check_steps, check_w_samples, interpolate_images, list_inputs
    check_steps(args.steps)  # validate before loading anything
    check_w_samples(args.samples)
    inputs = list_inputs(args.input)
    out_dir = _out_dir(args)
    model, cfg = _load(args)
    if not model.single_generator:
        raise opt.OptionError(f"interpolation needs a config-C checkpoint (latent MLP); this one is config "
                              f"{model.morph_config}")
    from ugatit_common.made_folders import removed_on_failure
    with removed_on_failure() as made:  # a failed run leaves no empty folder it made (never one there before)
        made.make(out_dir, _check_writable)
        interpolate_images(model, inputs, out_dir, steps=args.steps, samples=args.samples)
    return 0


@torch.no_grad()
def cmd_translate(args) -> int:
    from .interpolate import list_inputs
    from .networks import check_direction
    check_direction(args.direction)
    if not 1 <= args.samples <= MAX_TRANSLATE_SAMPLES:
        raise ValueError(f"--samples={args.samples}: expected 1 .. {MAX_TRANSLATE_SAMPLES} translations per input "
                         f"(each one a file, all in one row of <name>_<direction>_samples.png)")
    inputs = list_inputs(args.input)
    out_dir = _out_dir(args)
    model, cfg = _load(args)
    if not model.single_generator and args.samples != 1:  # no code to draw: N copies of one picture
        raise opt.OptionError(f"--samples={args.samples}: config {model.morph_config} has no latent code, so each "
                              f"input has one translation (--samples > 1 draws codes of config C); leave it out")
    from ugatit_common.made_folders import removed_on_failure
    with removed_on_failure() as made:  # a failed run leaves no empty folder it made (never one there before)
        made.make(out_dir, _check_writable)
        return _translate_into(args, inputs, out_dir, model)


def _translate_into(args, inputs, out_dir, model) -> int:
    """translate's writing part: every input's translations and row picture into `out_dir`."""
    from ugatit_common.images import none_readable
    from ugatit_common.atomic import sweep_dead_temps
    from ugatit_common.output_names import OutputNames, OutputRecord
    from ugatit_common.output_guard import own_result_folder
    size = model.config["img_size"]
    with own_result_folder(out_dir):  # one command at a time writes into it (a second one is refused)
        # outputs never collide, never overwrite an input or a file no earlier run wrote (the folder's record)
        record = OutputRecord(out_dir)
        sweep_dead_temps(out_dir)  # what a killed earlier run left (never another running command's)
        names = OutputNames(inputs, record)
        try:
            done = _translate_each(args, inputs, names, record, model, out_dir, size)
        except BaseException:  # an error, Ctrl-C, SIGTERM: names recorded but not written are not claimed
            record.forget_missing()
            raise
    if not done:
        raise opt.OptionError(none_readable(inputs, "input images"))
    return 0


def _translate_each(args, inputs, names, record, model, out_dir, size) -> int:
    """Write each readable input's translations and their row picture; returns how many inputs."""
    from ugatit_common.finite import refuse_non_finite_output  # finite weights may still overflow: no black file
    from ugatit_common.results import save_grid, save_image

    from .interpolate import load_input
    from .loading import precision_of
    from torch_port.data import ImageReadError
    device = next(model.parameters()).device
    done = 0
    for path in inputs:
        try:  # unreadable inputs are skipped with a warning (as the port's test phase does)
            x = load_input(path, size).to(device)
        except ImageReadError as e:
            if len(inputs) == 1:  # a lone input: its error line alone names it and why
                raise
            print(f"warning: skipping {path}: {e.reason}", file=sys.stderr, flush=True)
            continue
        done += 1
        name = names.stem(out_dir, path, [f"_{args.direction}_{k}.png" for k in range(args.samples)]
                          + [f"_{args.direction}_samples.png"])
        files = [os.path.join(out_dir, f"{name}_{args.direction}_{k}.png") for k in range(args.samples)]
        grid = os.path.join(out_dir, f"{name}_{args.direction}_samples.png")
        # recorded as ours before they exist: a run killed mid-write leaves nothing a later run takes for a user's
        record.add(files + [grid])
        outs = []
        for k in range(args.samples):
            y = model.translate(x, args.direction)
            refuse_non_finite_output(y, f"the {args.direction} translation of {path}", precision_of(model))
            outs.append(y[0].permute(1, 2, 0).cpu().numpy())
            save_image(outs[-1], files[k])
        save_grid([x[0].permute(1, 2, 0).cpu().numpy()] + outs, grid, ncols=len(outs) + 1)
        print(f"{name}: {args.samples} sample(s) -> {grid}")
    return done


def _every(n: int):
    """A log function printing messages, but only every n-th progress line."""
    seen = [0]

    def log(msg: str):
        if msg.startswith("Epoch:"):
            seen[0] += 1
            if (seen[0] - 1) % n:
                return
        print(msg, flush=True)
    return log


def cmd_demo(args) -> int:
    from ugatit_common.demo_data import make_demo_dataset

    from .interpolate import check_steps, interpolate_images, list_inputs
    from .train import train
    check_steps(args.steps)  # before the training, not after it
    if args.iterations < 1:  # before the data set is written (the shared check names the trainer's --iteration)
        raise opt.OptionError(f"--iterations={args.iterations}: must be >= 1")
    from ugatit_common.cli_errors import check_writable_folder

    from .train import validate_morph
    root = os.path.abspath(args.dir)
    cfg = opt.config_from(
        dataset="demo", img_size=args.img_size, ch=args.ch, n_dis=5, light=True, epoch=1,
        iteration=args.iterations, print_freq=max(1, args.iterations), save_freq=max(1, args.iterations),
        decay_flag=False, lr=0.0002, checkpoint_dir=os.path.join(root, "checkpoint"),
        result_dir=os.path.join(root, "results"), log_dir=os.path.join(root, "logs"),
        sample_dir=os.path.join(root, "samples"), morph_config="C")
    validate_morph(dict(cfg, phase="train"))  # --img_size / --ch: before the data set is written
    device = _device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny model: one thread avoids oversubscription (measured ~5x faster)
    check_writable_folder(root, "DIR")
    make_demo_dataset(root, "demo", args.img_size)
    out = train(cfg, device=device, seed=args.seed, base=root,
                log=_every(25))
    h = out["history"]
    if h:
        k = max(1, min(10, len(h) // 4))
        first_g = sum(r["g_loss"] for r in h[:k]) / k
        last_g = sum(r["g_loss"] for r in h[-k:]) / k
        print(f" [*] trained {len(h)} iterations: mean G loss first {k}: {first_g:.2f}, last {k}: {last_g:.2f}")
    else:  # a rerun: the checkpoint in DIR has done its iterations already
        done = out["counter"] - 1  # the official counter starts at 1: checkpoint model-N has done N - 1
        why = ("" if done >= args.iterations else
               f" (its one epoch is over: a rerun with more --iterations resumes after it, as the official loop "
               f"does; give another DIR to train {args.iterations})")
        print(f" [*] no iteration left to train: the checkpoint in {out['checkpoint_dir']} has done {done} "
              f"iteration(s){why}; the morphs below are its")
    model = out["model"].eval()
    res = os.path.join(root, "results", "morph")
    rows = interpolate_images(model, list_inputs(os.path.join(root, "dataset", "demo", "testA")), res,
                              steps=args.steps, samples=8)
    print(f" [*] morph strips, GIFs and smoothness figures in {res} (open {os.path.join(res, 'index.html')})")
    for r in rows:
        print(f"     {r['strip']}  smoothness {r['smoothness']:.4f}")
    return 0


def cmd_export(args) -> int:
    from .export import run
    return run(args)


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): bad input -> one error line, exit 2; Ctrl-C
    -> exit 130 (training: the step and the resume command); --debug adds the traceback."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python -m morph",
                          training=lambda a: bool(a) and a[0] in ("train", "demo"))


PHASE_OF = {"train": "train", "interpolate": "test", "translate": "test"}  # the official --phase each command is


def _check_phase(args) -> None:
    """The official `--phase` is taken (as in all three commands) but the subcommand is the phase: a
    typed one that contradicts it (`train --phase test`, which trained) is refused before any work."""
    want = PHASE_OF.get(args.command)
    if not want or "phase" not in getattr(args, "typed", ()) or args.phase == want:
        return
    if args.phase not in PHASE_OF.values():
        raise opt.OptionError(f"--phase={args.phase!r}: expected 'train' or 'test'; python -m morph {args.command} "
                              f"is the {want} phase (leave --phase out)")
    instead = "python -m morph interpolate or translate" if args.phase == "test" else "python -m morph train"
    raise opt.OptionError(f"--phase={args.phase!r}: python -m morph {args.command} is the {want} phase; for the "
                          f"{args.phase} phase use {instead} (or leave --phase out)")


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def _main(argv=None) -> int:
    from torch_port.data import ImageReadError

    from .train import CheckpointKindError
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.typed = opt.typed_flags(_subparser(parser, args.command), argv)  # what the user typed, not defaults
    handlers = {"train": cmd_train, "interpolate": cmd_interpolate, "translate": cmd_translate, "demo": cmd_demo,
                "export": cmd_export}
    try:
        _check_phase(args)
        if getattr(args, "dataset", None) is not None:  # a name under <--data_root>/dataset/, never a path
            opt.check_dataset_name(args.dataset, getattr(args, "data_root", "."))
        return handlers[args.command](args)
    except (opt.OptionError, CheckpointKindError, ImageReadError, ValueError) as e:
        from ugatit_common import cli_errors
        if not cli_errors.quiet_rank(e):  # under torchrun: rank 0 alone says what every rank found
            print(f"python -m morph {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
