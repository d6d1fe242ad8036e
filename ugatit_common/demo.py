"""The README's main job on the built-in demo data set, one command:

    python -m ugatit_common.demo [DIR]

1. builds the procedural two-domain demo set in DIR/dataset/demo;
2. trains the official model (`python -m tf_reference`) a few iterations, saving an
   official-format checkpoint, and runs its test phase (translated images + index.html);
3. converts that checkpoint to PyTorch (`weights_convert.py tf2torch --verify --report`):
   the per-layer parity report of the port against the reference;
4. trains and tests the PyTorch port (`python -m torch_port --demo`), if present;
5. trains Morph-UGATIT config C briefly and writes a morph strip (`python -m morph demo`), if present.
Each step is a separate process running the same command lines a user would type.
"""
import argparse
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--light", "True", "--dataset", "demo", "--img_size", "64", "--ch", "4", "--n_dis", "5",
        "--augment_flag", "False", "--epoch", "1", "--print_freq", "4", "--save_freq", "4"]


STEP_STOP_WAIT = 60  # seconds a stopped step gets for its own clean-up before it is killed


def run(cmd, cwd):
    print("\n$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    try:
        rc = proc.wait()
    except KeyboardInterrupt as e:
        _stop_step(proc, e)
        raise
    if rc:  # the step printed its own error line; say which step failed, no traceback
        print(f"error: demo step failed with exit code {rc}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        raise SystemExit(rc)


def _stop_step(proc, e: KeyboardInterrupt) -> None:
    """The demo was stopped (Ctrl-C, SIGTERM) while step `proc` ran: let the step stop its own way
    (its stop line, its clean-up: its run lock, the folders it made) instead of killing it at once
    (subprocess.run's SIGKILL after 0.25 s). A terminal's Ctrl-C reached the step too (one process
    group): it is waited for; a signal sent to the demo alone is passed on (SIGTERM at once, Ctrl-C
    after a few seconds without an end). Killed only when it has not ended after STEP_STOP_WAIT s."""
    import signal

    from ugatit_common.cli_errors import Terminated
    try:
        if isinstance(e, Terminated):
            proc.send_signal(signal.SIGTERM)
        else:
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STEP_STOP_WAIT)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # (another Ctrl-C: no more waiting)
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): an unwritable DIR -> one error line, exit 2."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python -m ugatit_common.demo")


def _main(argv=None) -> int:
    from ugatit_common.options import path_value
    p = argparse.ArgumentParser(prog="python -m ugatit_common.demo", description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="demo_run", type=path_value, help="working folder (default: demo_run)")
    p.add_argument("--iteration", type=int, default=8,
                   help="training iterations of the official TF model (steps 2-3; the port's and Morph's demo steps "
                        "train their own fixed tiny models)")
    args = p.parse_args(argv)
    if args.iteration < 1:  # before any work (the data set, a TF step failing with its own line)
        from ugatit_common.options import OptionError
        raise OptionError(f"--iteration={args.iteration}: must be >= 1")
    work = os.path.abspath(args.dir)
    from ugatit_common.cli_errors import check_writable_folder, needs_tensorflow_line, tensorflow_installed
    if not tensorflow_installed():  # steps 2-3 run the official TF model: say so before any work
        print("error: " + needs_tensorflow_line(
            "the demo (its first steps train and test the official model)",
            f"run its PyTorch steps alone: python -m torch_port --demo {os.path.join(args.dir, 'torch_port')} and "
            f"python -m morph demo {os.path.join(args.dir, 'morph')}"), file=sys.stderr, flush=True)
        return 2
    check_writable_folder(work, "DIR")
    py = sys.executable
    from ugatit_common.demo_data import make_demo_dataset
    from ugatit_common.options import config_from, model_dir
    print("demo data set: " + make_demo_dataset(work, name="demo", size=64))

    tiny = TINY + ["--iteration", str(args.iteration)]
    run([py, "-m", "tf_reference", "--phase", "train"] + tiny, work)
    run([py, "-m", "tf_reference", "--phase", "test"] + tiny, work)
    cfg = config_from(light=True, dataset="demo", n_dis=5)
    ckpt = os.path.join(work, "checkpoint", model_dir(cfg))
    run([py, os.path.join(ROOT, "weights_convert.py"), "tf2torch", ckpt, os.path.join(work, "converted.safetensors"),
         "--img_size", "64", "--verify", "--report", os.path.join(work, "parity"),
         "--overwrite"], work)  # the demo's own output: a rerun replaces it
    outputs = [("TF reference results page", os.path.join(work, "results", model_dir(cfg), "index.html")),
               ("parity report (TF vs torch, per layer)", os.path.join(work, "parity", "parity_report.html"))]
    if importlib.util.find_spec("torch_port.__main__") is not None:
        run([py, "-m", "torch_port", "--demo", os.path.join(work, "torch_port")], work)
        port_cfg = config_from(light=True, dataset="demo", n_dis=5)  # torch_port.__main__.DEMO_FLAGS
        outputs.append(("PyTorch port results page",
                        os.path.join(work, "torch_port", "results", model_dir(port_cfg), "index.html")))
    if importlib.util.find_spec("morph.__main__") is not None:
        run([py, "-m", "morph", "demo", os.path.join(work, "morph")], work)
        outputs.append(("Morph-UGATIT strips and GIFs page", os.path.join(work, "morph", "results", "morph",
                                                                          "index.html")))
    missing = [path for _, path in outputs if not os.path.isfile(path)]
    if missing:  # a step said it succeeded without writing its page
        print("error: the demo did not write " + ", ".join(missing), file=sys.stderr, flush=True)
        return 1
    print("\nDone. Look at:\n  " + "\n  ".join(f"{label}: {path}" for label, path in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
