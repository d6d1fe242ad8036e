"""Free-running float64 training equivalence: tf_reference and torch_port trained side by side,
never re-synchronised.

    python -m parity_tests.free_run [--checkpoint CKPT | --seed S] [--iterations N] [--budget B]
                                    [--device cpu|cuda] [--json FILE] [--dataset FOLDER] [--perturb REL]
                                    [--kinks] [--threads N] [--quiet]
                                    [--light --img_size --ch --n_res --n_dis --sn --smoothing --gan_type
                                     --n_critic --adv_weight --cycle_weight --identity_weight --cam_weight
                                     --GP_ld --lr --batch_size --augment_flag --epoch --iteration
                                     --decay_flag --decay_epoch]

Both sides start from one state (an official TF checkpoint, its config inferred as the rest of
the project does and checked against the flags; or the port's seeded initialisation with fresh
Adam state) and train N iterations of the official loop: a D run every iteration, a G run when
(counter - 1) % n_critic == 0, each on its own batch, the official learning-rate schedule. The
batches, the augmentation and the gradient-penalty draws are drawn once in numpy and fed to
both. Reference and candidate: TF's float64 training graph and the port in float64 on the CPU
(parity_tests/free_run_sides.py); with `--device cuda` the port on the CPU and the port on CUDA;
with `--perturb REL` the port and itself started REL (relative) away, the training's own
sensitivity to a rounding-size difference (neither needs TensorFlow). `--kinks` looks for kink
flips between the two states before every run (parity_tests/free_run_kinks.py).

Per iteration it prints the worst relative difference of the losses, the weights (and `u`),
the Adam state and the generators' outputs on fixed probe inputs, each with the tensor that
has it (parity_tests/free_run_compare.py; the conv biases that feed an instance norm are judged
by those outputs, not elementwise). Exit 0 when every iteration is within `--budget` (1e-9),
1 when one is over (the first such iteration, tensor and element are named), 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys
import time

from ugatit_common import options as opt

from parity_tests.free_run_inputs import FreeRunInputError

CATEGORIES = ("losses", "weights", "slots", "outputs")  # parity_tests/free_run_compare.py

PROG = "python -m parity_tests.free_run"
DEFAULT_BUDGET = 1e-9
# the official flags a free run takes, and the defaults of a seeded run where they differ from the
# official ones (a size that trains in a fraction of a second per iteration on a laptop CPU)
CONFIG_FLAGS = ("light", "img_size", "ch", "n_res", "n_dis", "sn", "smoothing", "gan_type", "n_critic", "adv_weight",
                "cycle_weight", "identity_weight", "cam_weight", "GP_ld", "lr", "batch_size", "augment_flag", "epoch",
                "iteration", "decay_flag", "decay_epoch")
SEEDED_DEFAULTS = {"light": True, "img_size": 32, "ch": 2, "n_dis": 4, "augment_flag": False}
CHECKED_KEYS = ("light", "ch", "n_res", "n_dis", "sn", "smoothing", "img_size", "gan_type", "n_critic",
                "adv_weight", "cycle_weight", "identity_weight", "cam_weight")
JUDGED = ("judged per tensor relative to its scale (parity_tests/free_run_compare.py): weights, u and Adam's v "
          "max|port - ref| / max|ref|; Adam's m the same over max(max|m|, max sqrt(v)), the gradients' scale; a CAM "
          "layer's bias (added to every kernel entry) on its layer's scale; the Adam powers by the bias correction "
          "they give; losses |port - ref| / max(|ref|, 1). The conv biases that feed an instance norm (exact "
          "gradient 0: their updates are float noise through Adam) are judged by their effect, each generator's image "
          "and CAM logits on fixed probe inputs, not elementwise")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False,
                                description="Train tf_reference and torch_port side by side in float64, without "
                                            "re-synchronising, and report how far they drift apart")
    p.add_argument("--checkpoint", type=opt.path_value, help="official TF checkpoint (folder or prefix) both start from")
    p.add_argument("--seed", type=opt.seed_value, default=0,
                   help="seed of the initialisation (without --checkpoint) and of the data and gradient-penalty draws "
                        "(default 0)")
    p.add_argument("--iterations", type=int, default=50, help="iterations to train (default 50)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="largest relative difference allowed "
                                                                        f"(default {DEFAULT_BUDGET:g})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: TF float64 vs the port on the CPU; cuda: the port on the CPU vs the port on CUDA")
    p.add_argument("--json", type=opt.path_value, help="write the per-iteration curve to this file (an earlier curve there is replaced; "
                                  "any other existing file is never replaced: exit 2)")
    p.add_argument("--dataset", type=opt.path_value, help="folder with trainA/ and trainB/ (default: the built-in procedural data set)")
    p.add_argument("--images", type=int, default=4, help="images per domain of the built-in data set (default 4)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of each framework (default 1: at these sizes more threads only add "
                        "synchronisation, and on a busy machine spinning threads slow a step 30-fold)")
    p.add_argument("--perturb", type=float, metavar="REL",
                   help="the training's own sensitivity instead of TF: the port against itself, the candidate's start "
                        "weights multiplied by 1 + REL * N(0, 1) (seeded; REL 1e-15 is a few ulps); with --device cuda "
                        "the CUDA port is the perturbed one")
    p.add_argument("--kinks", action="store_true",
                   help="before every run, look for kink flips: the port's run from the reference's state and from "
                        "its own, branch by branch (relu, leaky_relu, |x|, max pooling, clips); about triples the time")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    types = {name: typ for name, typ, _, _ in opt.OFFICIAL_FLAGS}
    for name in CONFIG_FLAGS:
        default = SEEDED_DEFAULTS.get(name, opt.DEFAULTS[name])
        p.add_argument(f"--{name}", type=types[name], default=None,
                       help=f"official flag (seeded default {default}; with --checkpoint: what it records)")
    return p


def resolve_config(args) -> tuple[dict, object]:
    """(validated config, CheckpointConfig or None)."""
    given = {k: getattr(args, k) for k in CONFIG_FLAGS}
    info = None
    if args.checkpoint:
        from parity_tests.free_run_inputs import checkpoint_config
        recorded, info = checkpoint_config(args.checkpoint, {k: given[k] for k in CHECKED_KEYS})
        cfg = opt.config_from({k: v for k, v in recorded.items() if v is not None})
    else:
        cfg = opt.config_from(SEEDED_DEFAULTS)
    cfg.update({k: v for k, v in given.items() if v is not None})
    try:
        opt.validate(cfg)
    except opt.OptionError as e:
        raise FreeRunInputError(f"{e} (the TF float64 training graph cannot be built for it)") from e
    return cfg, info


def start(args, cfg):
    """(state, counter of the first iteration, schedule position of the first iteration, what it is)."""
    from parity_tests import free_run_inputs as inputs
    if args.checkpoint:
        state, step, had_adam = inputs.checkpoint_state(args.checkpoint)
        what = f"checkpoint {args.checkpoint} (step {step}{'' if had_adam else ', weights only: fresh Adam state'})"
        return state, step, step, what  # the official loop resumes with counter = the checkpoint's step
    return inputs.seeded_state(cfg, args.seed), 1, 0, f"seeded initialisation (seed {args.seed})"


def make_trainers(args, cfg, probe_shape):
    from parity_tests.free_run_sides import PortTrainer64
    if args.device == "cuda" or args.perturb is not None:
        import torch
        if args.device == "cuda" and not torch.cuda.is_available():
            raise FreeRunInputError("--device cuda: no CUDA device is available to torch")
        cand = PortTrainer64(cfg, args.device)
        if args.perturb is not None:
            cand.name += f" started {args.perturb:g} (relative) away"
        return PortTrainer64(cfg, "cpu"), cand
    from parity_tests.free_run_sides import TFTrainer64
    return TFTrainer64(cfg, probe_shape, args.threads), PortTrainer64(cfg, "cpu")


def check_same_variables(state: dict, ref, cand) -> None:
    for side in (ref, cand):
        names = side.variable_names()
        if names != set(state):
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise FreeRunInputError(f"the start state does not fit {side.name}: missing {missing[:5]}, "
                                    f"unexpected {extra[:5]}")


def line(k: int, runs: str, lr: float, row: dict) -> str:
    parts = [f"it {k:4d} {runs:2s} lr {lr:.3g}"]
    for c in CATEGORIES:
        w = row[c]
        parts.append(f"{c} {w.value:.2e} {w.name}{list(w.index) if w.index else ''}")
    parts.append(f"norm-fed biases {row['norm_fed_bias_lr']:.2g} lr apart (not judged)")
    return " | ".join(parts)


def free_run(args, cfg, state, counter0, pos0, log=print, observe=None) -> dict:
    """Train both sides `args.iterations` iterations; returns the curve (JSON-able).
    `observe(k, ref_state, cand_state)`, when given, sees both states after iteration k."""
    from parity_tests import free_run_inputs as inputs
    from parity_tests.free_run_compare import compare
    from parity_tests.free_run_kinks import flips as kink_flips
    images = inputs.folder_images(args.dataset) if args.dataset else inputs.demo_images(cfg["img_size"], args.images)
    draws = inputs.Draws(images, cfg, args.seed)
    probes = inputs.probe_inputs(images, cfg)
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored below (the caller may be a test session)
    ref = cand = None
    try:
        ref, cand = make_trainers(args, cfg, probes["A"].shape)
        check_same_variables(state, ref, cand)
        ref.load(state)
        cand.load(state if args.perturb is None else inputs.perturbed(state, args.perturb, args.seed))
        curve, held, first_over = [], 0, None
        pre_ref = pre_cand = state
        t0 = time.time()
        from tqdm import tqdm  # --quiet prints no line per iteration: a progress bar on a terminal instead
        bar = tqdm(total=args.iterations, desc="free run", unit="it", file=sys.stderr,
                   disable=True if not args.quiet else None)
        for k in range(1, args.iterations + 1):
            counter, pos = counter0 + k - 1, pos0 + k - 1
            lr = opt.learning_rate(cfg, pos // cfg["iteration"])
            batch, gp = draws.batch(), draws.gradient_penalty()
            ref_loss, cand_loss = ref.d_run(batch, lr, gp), cand.d_run(batch, lr, gp)
            flipped = []
            if args.kinks:
                flipped.append(kink_flips(cfg, pre_ref, pre_cand, "D", batch, lr, gp))
            runs = "D"
            if (counter - 1) % cfg["n_critic"] == 0:
                batch = draws.batch()
                if args.kinks:
                    pre_ref, pre_cand = ref.state(), cand.state()
                ref_loss.update(ref.g_run(batch, lr))
                cand_loss.update(cand.g_run(batch, lr))
                if args.kinks:
                    flipped.append(kink_flips(cfg, pre_ref, pre_cand, "G", batch, lr, {}))
                runs = "DG"
            ref_state, cand_state = ref.state(), cand.state()
            pre_ref, pre_cand = ref_state, cand_state
            if observe is not None:
                observe(k, ref_state, cand_state)
            row = compare(ref_state, cand_state, ref_loss, cand_loss, ref.probe(probes), cand.probe(probes), lr)
            worst = max(row[c].value for c in CATEGORIES)
            if worst <= args.budget and first_over is None:
                held = k
            elif first_over is None:
                over = max(CATEGORIES, key=lambda c: row[c].value)
                first_over = {"iteration": k, "category": over, **row[over].as_json()}
            curve.append({"iteration": k, "counter": counter, "runs": runs, "lr": lr, "worst": worst,
                          **{c: row[c].as_json() for c in CATEGORIES}, "norm_fed_bias_lr": row["norm_fed_bias_lr"]})
            if args.kinks:
                curve[-1]["kink_flips"] = {"count": sum(f["count"] for f in flipped),
                                           "elements": [e for f in flipped for e in f["elements"]]}
            if not args.quiet:
                log(line(k, runs, lr, row), flush=True)
            bar.set_postfix_str(f"worst {worst:.2e}", refresh=False)
            bar.update()
            if args.kinks and curve[-1]["kink_flips"]["count"]:
                log(f"  kink flips: {curve[-1]['kink_flips']['count']}; " + "; ".join(
                    f"{e['run']} run, {e['kind']} in {e['module']} at {e['index']}: x {e['x_a']:.3g} from the "
                    f"reference's state, {e['x_b']:.3g} from the port's" for e in curve[-1]["kink_flips"]["elements"]),
                    flush=True)
        seconds = time.time() - t0
        bar.close()
    finally:
        for side in (ref, cand):
            if side is not None:
                side.close()
        torch.set_num_threads(threads)
    return {"reference": ref.name, "candidate": cand.name, "budget": args.budget, "iterations": args.iterations,
            "held": held, "first_over": first_over, "seconds": seconds, "curve": curve}


def summary_lines(result: dict) -> list[str]:
    curve, n = result["curve"], result["iterations"]
    worst = max(curve, key=lambda r: r["worst"])
    out = [f"{result['candidate']} vs {result['reference']}: within {result['budget']:g} for {result['held']} of "
           f"{n} iterations; worst {worst['worst']:.2e} (iteration {worst['iteration']}); "
           f"{result['seconds']:.1f} s"]
    for k in (1, 10, 50, 100, 200):
        if k <= len(curve):
            r = curve[k - 1]
            out.append(f"  at iteration {k}: " + ", ".join(f"{c} {r[c]['value']:.2e}" for c in CATEGORIES))
    f = result["first_over"]
    if f:
        out.append(f"  first over the budget: iteration {f['iteration']}, {f['category']} {f['value']:.3g} at "
                   f"{f['name']}{f['index'] if f['index'] else ''}")
    return out


SHOWN_KEYS = ("light", "img_size", "ch", "n_dis", "sn", "smoothing", "gan_type", "n_critic", "adv_weight",
              "cycle_weight", "identity_weight", "cam_weight", "GP_ld", "lr", "batch_size", "augment_flag")


def check_args(args) -> None:
    for flag, value, low in (("iterations", args.iterations, 1), ("threads", args.threads, 1),
                             ("images", args.images, 1)):
        if value < low:
            raise FreeRunInputError(f"--{flag}={value}: must be >= {low}")
    if not 0 < args.budget < float("inf"):  # inf: "within inf", a run that checks nothing
        raise FreeRunInputError(f"--budget={args.budget}: must be > 0 and finite")
    if args.kinks and args.device != "cpu":
        raise FreeRunInputError("--kinks: only with --device cpu (the branches are recorded in a CPU port)")
    if args.perturb is not None and not 0 <= args.perturb < 1:
        raise FreeRunInputError(f"--perturb={args.perturb}: expected a relative size in [0, 1), e.g. 1e-15")


def prepare(args) -> dict:
    """Everything before the training, no TensorFlow needed: the flags checked, the config, the
    start state. Bad input raises FreeRunInputError (exit 2) here, before any long work."""
    check_args(args)
    cfg, info = resolve_config(args)
    state, counter0, pos0, what = start(args, cfg)
    if pos0 + args.iterations > cfg["epoch"] * cfg["iteration"]:
        raise FreeRunInputError(f"--iterations={args.iterations} from position {pos0} runs past the official loop's "
                                f"end, --epoch {cfg['epoch']} x --iteration {cfg['iteration']}")
    return {"cfg": cfg, "info": info, "state": state, "counter0": counter0, "pos0": pos0, "what": what}


def run(args, prepared: dict | None = None, log=print) -> dict:
    """The whole command without its file output; the result (free_run's curve plus "config" and
    "start")."""
    p = prepared or prepare(args)
    cfg = p["cfg"]
    if p["info"] is not None:
        p["info"].announce()
    log(f"free run from {p['what']}: " + " ".join(f"{k}={cfg[k]}" for k in SHOWN_KEYS))
    log(f"budget {args.budget:g}; {JUDGED}", flush=True)
    result = free_run(args, cfg, p["state"], p["counter0"], p["pos0"], log=log)
    result["config"] = {k: cfg[k] for k in SHOWN_KEYS + ("epoch", "iteration", "decay_flag", "decay_epoch")}
    result["start"] = p["what"]
    for text in summary_lines(result):
        log(text)
    return result


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.json:
        return _run(args)
    # checked and held before the run: never a checkpoint's or the user's file, a folder, a live
    # run's folder, or a file another command is writing (parity_tests.harness.claim_report_outputs)
    from parity_tests.harness import claim_report_outputs
    from ugatit_common.output_guard import release_claims
    claim_report_outputs([args.json], args.checkpoint, "--json", curves=True)  # a curve, never a page
    try:
        return _run(args)
    finally:
        release_claims([args.json])


def _run(args) -> int:
    result = run(args, prepare(args))
    if args.json:
        from ugatit_common.atomic import write_bytes_atomic
        from ugatit_common import strict_json  # NaN / inf (a blown-up run) as null, named in `non_finite`
        write_bytes_atomic(args.json, strict_json.dumps(result, indent=1).encode())
        print(f"curve: {args.json}")
    return 1 if result["first_over"] else 0


def main(argv=None) -> int:
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog=PROG,
                          needs_tf="compare the port with itself without it: --perturb 1e-15 (or --device cuda)")


if __name__ == "__main__":
    sys.exit(main())
