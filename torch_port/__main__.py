"""`python -m torch_port`: a drop-in for the official `main.py` running the PyTorch port.

Official flags (same names, defaults, meanings) plus:
  --device cpu|cuda|auto   (default auto: CUDA when available)
  --num_workers N          data-loader worker processes (default 0)
  --threads N              CPU threads per process (default: torch's, one per core; fewer on a
                           busy machine: OpenMP threads that wait for a taken core slow down 3-5x)
  --seed N                 seed of every random draw, 0..2**32-1 (default 0)
  --keep_checkpoints K     torch checkpoints kept (default 5, as the official tf.train.Saver)
  --resume True|False      continue from the newest checkpoint (default True, as officially)
  --input PATH             test phase: translate this image or folder instead of testA/testB
  --direction a2b|b2a      direction for --input (default a2b)
  --demo DIR               write the demo data set in DIR, train a tiny model, run the test phase
  --precision fp32|tf32|bf16|fp16  the fast path (default fp32, the exact port): the test phase's
                           generators (torch_port.fast; tf32: CUDA only); training: mixed precision with float32
                           master weights, fp16 with loss scaling (torch_port.train_precision)
  --compile True|False     torch.compile the networks (default False): the test phase's generators;
                           training: every network, compiled in the first iteration
                           (torch_port.train_compile)
  --batch N                test phase: N images per generator call, with a progress bar
                           (default: the official one image at a time)
  --cuda_graphs auto|True|False  replay CUDA graphs (default auto: on CUDA devices; True on a CPU is
                           refused): the test phase's generators; training: the captured D and G
                           steps (torch_port.train_graphs; not under a multi-process torchrun)
  --cudnn_benchmark True|False|auto  test phase on CUDA: cuDNN's benchmark mode (default auto: off
                           for fp32, on for tf32 / bf16 / fp16; README "Translating on a GPU")
  --checkpoint PATH        test phase: the weights and model settings from this checkpoint (an
                           official TF checkpoint folder or prefix, a port checkpoint folder, a
                           .safetensors file) instead of <checkpoint_dir>/<model_dir>
`python -m torch_port export CKPT OUT.onnx --direction a2b|b2a`: ONNX export (torch_port/export.py).
Under torchrun (WORLD_SIZE > 1) training is data-parallel (gloo on CPU, NCCL on CUDA).
Bad flags or inputs (a missing, unreadable or unwritable file or folder, a full disk, a checkpoint
that cannot be used): one `error: ...` line on stderr, exit code 2; Ctrl-C: exit 130 with
"stopped at step N ...; resume with: <command>"; --debug adds the traceback. Checkpoints follow
the policy in ugatit_common/checkpoint_policy.py (README "Checkpoint policy").
"""
from __future__ import annotations

import os
import sys

from ugatit_common import options as opt

DEMO_FLAGS = ["--light", "True", "--dataset", "demo", "--img_size", "64", "--ch", "4", "--n_dis", "5",
              "--iteration", "20", "--epoch", "1", "--augment_flag", "False", "--print_freq", "10",
              "--save_freq", "10"]


def build_parser():
    p = opt.build_parser("PyTorch port of the official U-GAT-IT")
    p.add_argument("--device", default="auto", help="cpu / cuda / cuda:N / auto (default: auto)")
    p.add_argument("--seed", type=opt.seed_value, default=0, help="random seed, 0..2**32-1 (default: 0)")
    from .train import add_training_flags
    add_training_flags(p)  # --num_workers --threads --keep_checkpoints --resume (python -m morph train has them too)
    p.add_argument("--input", default=None, type=opt.path_value, help="test phase: an image or folder to translate")
    p.add_argument("--direction", default="a2b", choices=("a2b", "b2a"), help="direction for --input: a2b (the default) or b2a")
    p.add_argument("--demo", default=None, type=opt.path_value, metavar="DIR", help="train and test a tiny demo model in DIR")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16", "fp16"),
                   help="fp32 (default, the exact port) | tf32 (CUDA) | bf16 | fp16: the test phase's generators; "
                        "training: mixed precision, float32 master weights (fp16: with loss scaling)")
    p.add_argument("--compile", type=opt.str2bool, default=False,
                   help="torch.compile the test phase's generators / the training networks (default False)")
    p.add_argument("--batch", type=int, default=None, help="test phase: images per generator call (progress bar)")
    from .infer_flags import add_gpu_inference_flags
    add_gpu_inference_flags(p)  # --cuda_graphs --cudnn_benchmark (python -m morph interpolate / translate too)
    p.add_argument("--checkpoint", default=None, type=opt.path_value, metavar="PATH",
                   help="test phase: translate with this checkpoint (an official TF checkpoint folder or prefix, a "
                        "port checkpoint folder or a .safetensors file); the model settings are read from it")
    return p


EXTRA_KEYS = ("device", "num_workers", "threads", "seed", "keep_checkpoints", "resume", "input", "direction", "demo",
              "precision", "compile", "batch", "checkpoint", "given_flags", "cuda_graphs", "cudnn_benchmark")


def given_flags(argv) -> set:
    """The official flags typed on the command line (`--x V`, `--x=V` or an unambiguous prefix),
    as opposed to defaults."""
    names = {name for name, *_ in opt.OFFICIAL_FLAGS}
    return opt.typed_flags(build_parser(), argv) & names


def _validate_extra(a, typed=frozenset()):
    """The port's own flags checked before any work; `typed`: the flags typed on the command line."""
    from .train import check_device_name, check_training_flags
    check_training_flags(a)
    check_device_name(a.device)
    opt.check_dataset_name(a.dataset)  # a name under ./dataset/, never a path (both phases: it names the run folder)
    if a.batch is not None and a.batch < 1:
        raise opt.OptionError(f"--batch={a.batch}: must be >= 1")
    if a.phase == "train" and a.batch is not None:  # training would ignore it: say so, never train at another batch
        raise opt.OptionError(f"--batch={a.batch} applies to the test phase (images per generator call); training's "
                              f"batch is --batch_size")
    if a.phase == "train" and a.input is not None:
        raise opt.OptionError("--input applies to the test phase (the images to translate); training reads "
                              "dataset/<--dataset>/trainA and trainB")
    if "direction" in typed and a.demo is None and (a.phase == "train" or a.input is None):
        # it would be ignored: the whole test phase translates testA -> B and testB -> A
        raise opt.OptionError(f"--direction={a.direction} applies to --input (the images to translate one way); "
                              + ("training reads dataset/<--dataset>/trainA and trainB" if a.phase == "train" else
                                 "without --input the test phase translates testA -> B and testB -> A; for one "
                                 "direction give --input, e.g. --input dataset/<--dataset>/testB --direction b2a"))
    from .infer_flags import check_gpu_inference_flags
    check_gpu_inference_flags(a)
    if a.phase == "train":
        from .train_precision import check_training_precision
        check_training_precision(a.precision)
    if a.checkpoint is not None and a.phase != "test":
        raise opt.OptionError("--checkpoint applies to the test phase (training resumes from --checkpoint_dir)")
    if a.checkpoint is not None and not (os.path.exists(a.checkpoint) or os.path.isfile(a.checkpoint + ".index")):
        raise opt.OptionError(f"--checkpoint={a.checkpoint!r}: no such checkpoint file or folder")
    if a.input is not None and not os.path.exists(a.input):
        from ugatit_common.images import no_such_input
        raise opt.OptionError(f"--input={a.input!r}: {no_such_input(a.input)}")


def run(a) -> int:
    from .train import exit_code_of, train, training_process
    cfg = opt.config_from({k: v for k, v in vars(a).items() if k not in EXTRA_KEYS})
    if getattr(a, "checkpoint", None) is None:  # with --checkpoint the model settings come from it, then validated
        cfg = opt.validate(cfg)
    # --threads, the device, torchrun's process group (closed at the end); python -m morph train too
    with training_process(a.device, a.threads) as (device, dist_info):
        if cfg["phase"] == "train":
            from .train_precision import check_training_precision
            check_training_precision(a.precision, device)  # e.g. bf16 on a GPU without it
            rc = exit_code_of(lambda: train(cfg, device, num_workers=a.num_workers, seed=a.seed,
                                            keep_checkpoints=a.keep_checkpoints, resume=a.resume,
                                            precision=a.precision, compile=a.compile,
                                            cuda_graphs=a.cuda_graphs))
            if rc:  # 3: a loss became NaN / inf
                return rc
            if dist_info.is_main:
                print(" [*] Training finished!")
        else:
            if dist_info.is_main:
                from .translate import test
                given = getattr(a, "given_flags", None) or set()
                explicit = {k: cfg[k] for k in opt.MODEL_KEYS + ("dataset",) if k in given}
                test(cfg, device, a.input, a.direction, precision=a.precision, compile=a.compile, batch=a.batch,
                     checkpoint=a.checkpoint, explicit=explicit, cuda_graphs=a.cuda_graphs,
                     cudnn_benchmark=a.cudnn_benchmark)
                print(" [*] Test finished!")
    return 0


DEMO_OWN_FLAGS = ("demo", "device", "seed", "threads")  # what --demo takes; DEMO_FLAGS fix the rest


def _check_demo_flags(typed: set) -> None:
    """--demo trains and tests the fixed tiny model of DEMO_FLAGS: any other flag typed with it
    would be ignored, so it is refused (one error line, exit 2) instead."""
    other = sorted(f"--{d}" for d in typed if d not in DEMO_OWN_FLAGS)
    if other:
        raise opt.OptionError(f"{', '.join(other)}: --demo trains and tests a fixed tiny model "
                              f"({' '.join(DEMO_FLAGS)}) and takes only --device, --seed and --threads; leave "
                              f"{'it' if len(other) == 1 else 'them'} out, or train with the flags instead of --demo")


def demo(a) -> int:
    from ugatit_common.demo_data import make_demo_dataset
    from ugatit_common.cli_errors import check_writable_folder
    root = check_writable_folder(os.path.abspath(a.demo), "--demo")
    make_demo_dataset(root, name="demo", size=64)
    os.chdir(root)
    parser = build_parser()
    common = DEMO_FLAGS + ["--device", a.device, "--seed", str(a.seed)]
    if a.threads is not None:
        common += ["--threads", str(a.threads)]
    print(f" [*] demo: data set in {os.path.join(root, 'dataset', 'demo')}", flush=True)
    rc = run(parser.parse_args(common + ["--phase", "train"]))
    if rc:
        return rc
    rc = run(parser.parse_args(common + ["--phase", "test"]))
    if rc:
        return rc
    cfg = opt.config_from(parser.parse_args(common))
    page = os.path.join(root, opt.run_paths(cfg).result, "index.html")
    print(f" [*] demo finished: results page {page}")
    return 0


def _trains(argv) -> bool:
    """Whether a command line trains (its Ctrl-C line then offers the resume command)."""
    if argv and argv[0] == "export":
        return False
    phase = "train"
    for i, a in enumerate(argv):
        if a == "--phase" and i + 1 < len(argv):
            phase = argv[i + 1]
        elif a.startswith("--phase="):
            phase = a.split("=", 1)[1]
    return phase == "train" or any(a == "--demo" or a.startswith("--demo=") for a in argv)


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): exit 2 + one line for bad input, 130 on
    Ctrl-C with the resume command, a traceback only with --debug."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python -m torch_port", training=_trains)


def _main(argv) -> int:
    argv = list(argv)
    if argv and argv[0] == "export":  # python -m torch_port export CKPT OUT.onnx --direction ...
        from .export import main as export_main
        return export_main(argv[1:])
    parser = build_parser()
    a = parser.parse_args(argv)
    a.given_flags = given_flags(argv)
    try:
        _validate_extra(a, opt.typed_flags(parser, argv))
        if a.demo is not None:
            _check_demo_flags(opt.typed_flags(parser, argv))
            return demo(a)
        return run(a)
    except opt.OptionError as e:
        from ugatit_common import cli_errors
        if not cli_errors.quiet_rank(e):  # under torchrun: rank 0 alone says what every rank found
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
