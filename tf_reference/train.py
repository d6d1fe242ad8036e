"""The official train and test phases: D run then G run per iteration (each pulling a new
batch), the official learning-rate schedule, tf.train.Saver checkpoints in
`checkpoint/<model_dir>/<model_name>.model-N`, resume from the newest one, and the test phase
writing translated images and `index.html`."""
import contextlib
import os
import time

import numpy as np

import sys

from ugatit_common import checkpoint_policy as policy
from ugatit_common import cli_errors
from ugatit_common import options as opt
from ugatit_common.finite import NonFiniteLoss
from ugatit_common.images import ImageReadError, none_readable, readable_train_images
from ugatit_common.made_folders import removed_on_failure
from ugatit_common.output_guard import check_result_folders, own_result_folder
from ugatit_common.output_names import DIRECTIONS, OutputNames
from ugatit_common.results import ResultsPage, save_grid, save_image

from .compat import session_config, tf, train_session_config
from .data import load_test_image, train_iterator
from .model import UGATITGraph


class CheckpointMismatch(opt.OptionError):
    """The checkpoint's variables are not the configured model's (a flag disagrees with it)."""


def check_checkpoint_matches(ckpt_path: str, graph_vars) -> None:
    """Compare names and shapes before restoring, so a wrong --light/--ch/... names the variables."""
    wanted = {v.op.name: v.shape.as_list() for v in graph_vars}
    stored = dict(tf.train.list_variables(ckpt_path))
    missing = set(wanted) - set(stored)
    if missing and all("/Adam" in n or n.startswith(("beta1_power", "beta2_power")) for n in missing) \
            and not opt.checkpoint_mismatch(ckpt_path, {k: v for k, v in wanted.items() if k not in missing}, stored,
                                            unexpected_is_error=False):
        raise CheckpointMismatch(f"checkpoint {ckpt_path} holds the weights without the optimizer state "
                                 f"({len(missing)} Adam slots and powers missing): it serves --phase test, but "
                                 f"training cannot resume from it (weights_convert.py torch2tf carries the state "
                                 f"when the port checkpoint's .state.pt is beside it and --weights_only is not given)")
    message = opt.checkpoint_mismatch(ckpt_path, wanted, stored, unexpected_is_error=False)
    if message:
        raise CheckpointMismatch(message)


def refuse_other_image_size(f, folder: str, img_size) -> None:
    """CheckpointMismatch when the run of checkpoint `f` (policy.Found) trained at another image
    size than `img_size` (None: no check), as its .meta or - that .meta lost - the run's other
    checkpoints record it (checkpoint_policy.other_image_size); the port refuses it too."""
    message = policy.other_image_size(f, folder, img_size)
    if message:
        raise CheckpointMismatch(message)


def restore(sess, saver, folder: str, graph_vars, need: str = "train", owner=None, img_size: int | None = None):
    """The checkpoint policy (ugatit_common.checkpoint_policy): the newest usable checkpoint in
    the folder; a newer incomplete or unreadable one is named (and, by a training run holding the
    folder, `owner`, moved to unusable/); a newer PyTorch one stops the run with the command that
    converts it; checkpoints that exist but none readable stop it (exit 2); one holding NaN / inf
    stops it too (exit 2 naming the variable). (False, 0) only when there is no checkpoint.
    `img_size` (training): a checkpoint of a run at another image size is refused
    (`refuse_other_image_size`)."""
    def load(f):
        if f.framework != "tf":
            tf_ones = [g.name for g in policy.inventory(folder) if g.framework == "tf"]
            raise opt.OptionError(
                f"the newest checkpoint in {folder!r} is {f.name}, written by the PyTorch port, which "
                f"tf_reference cannot read (TensorFlow checkpoints there: {', '.join(tf_ones) or 'none'}); "
                f"convert it first: python -m weights_convert torch2tf {f.weights} "
                f"{os.path.join(folder, f.prefix + '.model')} --continue_run  (or continue with python -m torch_port)")
        check_checkpoint_matches(f.base, graph_vars)
        refuse_other_image_size(f, folder, img_size)
        saver.restore(sess, f.base)
        refuse_non_finite_variables(sess, graph_vars, f"checkpoint {f.name} in {folder!r}")
        return f.step
    print(" [*] Reading checkpoints...")  # the official load's first line
    chosen = policy.choose(folder, load, need, owner=owner, prefer="tf")
    if chosen is None:
        print(" [*] Failed to find a checkpoint")
        return False, 0
    f, counter = chosen
    cli_errors.note_checkpoint(f.name)
    print(f" [*] Success to read {os.path.basename(f.base)}")
    return True, counter


_STOPPED = "training stopped, the last checkpoint is left as it was"


def _stop_if_non_finite(losses: dict, counter: int) -> None:
    for k, v in losses.items():
        if not np.isfinite(v):
            raise NonFiniteLoss(f"loss {k} is {float(v)} at step {counter} (counter {counter}); {_STOPPED}")


@contextlib.contextmanager
def _histogram_nan_stops(counter: int):
    """The official summaries hold histograms of rho: TF stops the step with InvalidArgumentError
    ("Nan in summary histogram") once an update made a weight non-finite (the losses of the run
    that did it were still finite). That is the NaN stop, not bad input."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        if "Nan in summary histogram" not in str(e):
            raise
        name = str(e).split("Nan in summary histogram for:", 1)[-1].split()[0] if "for:" in str(e) else "a weight"
        raise NonFiniteLoss(f"{name} holds a non-finite value (NaN or inf) at step {counter} (counter {counter}); "
                            f"{_STOPPED}") from None


def non_finite_counts(graph_vars):
    """(float variables, one op per variable counting its NaN / inf values): built once, with the
    graph, so that the check before every save adds nothing to it."""
    floats = [v for v in graph_vars if v.dtype.base_dtype.is_floating]
    return floats, [tf.math.count_nonzero(tf.logical_not(tf.math.is_finite(v))) for v in floats]


def _stop_if_weights_non_finite(sess, counts, counter: int) -> None:
    """Before a save: finite losses may still leave a non-finite weight or Adam slot (the update
    after the loss); no checkpoint ever holds one."""
    floats, ops = counts
    for v, n in zip(floats, sess.run(ops)):
        if n:
            raise NonFiniteLoss(f"{v.op.name!r} holds {int(n)} non-finite value(s) (NaN or inf) after step "
                                f"{counter - 1} (counter {counter}); {_STOPPED}")


def refuse_non_finite_variables(sess, graph_vars, source: str) -> None:
    """The restored variables hold no NaN / inf (ugatit_common.finite.NonFiniteWeights, exit 2,
    naming the first one and how many of its values are non-finite). Counted in the graph: one
    integer per variable comes back, not the weights."""
    from ugatit_common.finite import NonFiniteWeights
    floats, ops = non_finite_counts(graph_vars)
    for v, n in zip(floats, sess.run(ops)):
        if n:
            raise NonFiniteWeights(f"{source}: variable {v.op.name!r} holds {int(n)} non-finite value(s) (NaN or "
                                   f"inf) of {v.shape.num_elements()}; the checkpoint cannot be used")


def save(sess, saver, cfg: dict, folder: str, step: int, owner) -> str:
    """tf.train.Saver (V2) writes the bundle under a temporary name and renames it; the `checkpoint`
    index file is replaced atomically, so an interrupted save never hides the last good one. A save
    that fails (a full disk) or is interrupted leaves TF's temp files behind (`<name>.tmp<hex>` of
    the `.meta` or `checkpoint` file, the bundle's `_temp` folder): removed here, by the folder's
    owner, before the error goes on; the error line then names the newest checkpoint on disk
    (cli_errors.note_checkpoint_folder)."""
    os.makedirs(folder, exist_ok=True)
    try:
        path = saver.save(sess, os.path.join(folder, opt.model_name(cfg) + ".model"), global_step=step)
    except BaseException:
        try:
            policy.sweep_temp(folder, log=lambda msg: None, owner=owner)
        except OSError:
            pass
        raise
    cli_errors.note_checkpoint(f"{opt.model_name(cfg)}.model-{step}")
    return path


def readable_images(files: list) -> list:
    """Drop files the official tf.data pipeline would stop on mid-run (not JPEG/PNG/GIF, or not
    decoding completely: ugatit_common.images, the same rule as torch_port), with one warning
    each on stderr. Error if none are left."""
    good = readable_train_images(files, lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    if not good:
        raise opt.OptionError(f"no readable image in {os.path.dirname(files[0])!r}: "
                              f"no readable image among {len(files)} file(s)")
    return good


def build_train_graph(cfg: dict, files_A, files_B, dataset_num: int, max_to_keep: int = 5, saved=None,
                      seed=None, force_augment=None):
    """The training graph, built into the current default graph as the train phase builds it
    before its first save (so a checkpoint's `.meta` is this graph): the two input pipelines, the
    official model (`UGATITGraph.build_train`), the `tf.train.Saver` (over the variables named in
    `saved`; default: all of them), the NaN stop's check and the initializer. Returns (model,
    saver, non-finite counts, init op). `seed` / `force_augment`: train_iterator's."""
    domain_A = train_iterator(files_A, cfg["img_size"], cfg["img_ch"], cfg["augment_flag"], cfg["batch_size"],
                              dataset_num, seed=seed, force_augment=force_augment)
    domain_B = train_iterator(files_B, cfg["img_size"], cfg["img_ch"], cfg["augment_flag"], cfg["batch_size"],
                              dataset_num, seed=seed, force_augment=force_augment)
    m = UGATITGraph(cfg).build_train(domain_A, domain_B)
    var_list = None
    if saved is not None:
        wanted, names = set(saved), {v.op.name for v in tf.global_variables()}
        missing = sorted(wanted - names)
        if missing:
            raise ValueError(f"{len(missing)} variable(s) not in the official graph of this config: "
                             + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if wanted != names:  # in the graph's order, as the Saver of all variables takes them
            var_list = [v for v in tf.global_variables() if v.op.name in wanted]
    saver = tf.train.Saver(var_list=var_list, max_to_keep=max_to_keep)
    counts = non_finite_counts(tf.global_variables())  # the NaN stop's check before each save
    return m, saver, counts, tf.global_variables_initializer()


def train(cfg: dict, max_to_keep: int = 5) -> dict:
    paths = opt.run_paths(cfg)
    files_A = readable_images(opt.domain_files(cfg, "trainA"))
    files_B = readable_images(opt.domain_files(cfg, "trainB"))
    # one owner per run folder: taken before anything in them is read, swept or moved, held to the end
    with policy.own_run(paths) as owner:
        cli_errors.note_checkpoint_folder(paths.checkpoint)
        return _train(cfg, paths, files_A, files_B, owner, max_to_keep)


def _train(cfg: dict, paths, files_A: list, files_B: list, owner, max_to_keep: int) -> dict:
    dataset_num = max(len(files_A), len(files_B))
    print_information(cfg, dataset_num)
    for p, flag in ((paths.sample, "--sample_dir"), (paths.log, "--log_dir"), (paths.checkpoint, "--checkpoint_dir")):
        cli_errors.check_writable_folder(p, flag)  # fail now, not at the first save
    policy.sweep_temp(paths.checkpoint, owner=owner)
    policy.sweep_temp(paths.sample, owner=owner)

    graph = tf.Graph()
    with graph.as_default():
        m, saver, counts, init = build_train_graph(cfg, files_A, files_B, dataset_num, max_to_keep)
        history = []
        with tf.Session(config=train_session_config()) as sess:
            sess.run(init)
            could_load, checkpoint_counter = restore(sess, saver, paths.checkpoint, tf.global_variables(),
                                                     owner=owner, img_size=cfg["img_size"])
            if not could_load:  # an older run's samples and event files: moved aside (as the port and Morph
                # do), never overwritten by samples of the same names or shown by TensorBoard as one run with these
                policy.move_outputs_of_an_older_run([paths.sample, paths.log], owner)
            # the event file after the restore (the official order is the reverse): a refused
            # checkpoint (non-finite, mismatched) leaves no new file in the log folder
            writer = tf.summary.FileWriter(paths.log, sess.graph)
            if could_load:
                start_epoch, start_batch_id = opt.resume_position(checkpoint_counter, cfg["iteration"])
                counter = checkpoint_counter
                print(" [*] Load SUCCESS")
            else:
                start_epoch, start_batch_id, counter = 0, 0, 1
                print(" [!] Load failed...")
                # before the first checkpoint: its .meta (the Saver writes it last) may be lost
                policy.write_run_record(paths.checkpoint, cfg, "tf_reference", owner)

            start_time = time.time()
            past_g_loss = -1.
            real_A = fake_B = None  # the batch of the newest G step (none yet: a resumed run may begin with a D-only step)
            for epoch in range(start_epoch, cfg["epoch"]):
                lr = opt.learning_rate(cfg, epoch)
                for idx in range(start_batch_id, cfg["iteration"]):
                    feed = {m.lr: lr}
                    with _histogram_nan_stops(counter):
                        _, d_loss, summary = sess.run([m.D_optim, m.Discriminator_loss, m.D_summary], feed)
                    _stop_if_non_finite({"d_loss": d_loss}, counter)
                    writer.add_summary(summary, counter)
                    g_loss = None
                    if (counter - 1) % cfg["n_critic"] == 0:
                        with _histogram_nan_stops(counter):
                            real_A, fake_B, _, g_loss, summary = sess.run(
                                [m.real_A, m.fake_B, m.G_optim, m.Generator_loss, m.G_summary], feed)
                        _stop_if_non_finite({"g_loss": g_loss}, counter)
                        writer.add_summary(summary, counter)
                        past_g_loss = g_loss
                    counter += 1
                    cli_errors.note_step(counter - 1)
                    if g_loss is None:
                        g_loss = past_g_loss
                    print(opt.iteration_line(epoch, idx, cfg["iteration"], time.time() - start_time, d_loss, g_loss),
                          flush=True)
                    history.append({"d_loss": float(d_loss), "g_loss": float(g_loss)})
                    # the official samples: the newest G step's whole batch, one column ([batch_size, 1]); before
                    # any G step of this run (resumed with n_critic > 1) the official loop stops on a NameError:
                    # here that sample is skipped
                    if (idx + 1) % cfg["print_freq"] == 0 and real_A is not None:
                        save_grid(real_A, os.path.join(paths.sample, f"real_A_{epoch:03d}_{idx + 1:05d}.png"), ncols=1)
                        save_grid(fake_B, os.path.join(paths.sample, f"fake_B_{epoch:03d}_{idx + 1:05d}.png"), ncols=1)
                    if (idx + 1) % cfg["save_freq"] == 0:
                        _stop_if_weights_non_finite(sess, counts, counter)
                        save(sess, saver, cfg, paths.checkpoint, counter, owner)
                start_batch_id = 0  # only the first epoch after loading starts mid-way
                _stop_if_weights_non_finite(sess, counts, counter)
                save(sess, saver, cfg, paths.checkpoint, counter, owner)
            writer.close()
    return {"steps": history, "checkpoint_dir": paths.checkpoint}


def test(cfg: dict) -> str:
    """Translate testA → B and testB → A with the newest checkpoint (or an older one the folder's
    `checkpoint` file names, as the official load: checkpoint_policy.choose); write images and index.html."""
    paths = opt.run_paths(cfg)
    files_A = opt.domain_files(cfg, "testA", required=False)
    files_B = opt.domain_files(cfg, "testB", required=False)
    if not files_A and not files_B:
        raise opt.OptionError(f"no test images in {opt.dataset_root(cfg)}/testA or testB")
    graph = tf.Graph()
    with graph.as_default():
        m = UGATITGraph(cfg).build_test()
        saver = tf.train.Saver()
        with tf.Session(config=session_config(graph)) as sess:  # TF's defaults unless the remapper would fail
            tf.global_variables_initializer().run()
            could_load, step = restore(sess, saver, paths.checkpoint, tf.global_variables(), need="weights")
            if not could_load:  # never translate with untrained weights
                raise opt.OptionError(f"no checkpoint in {paths.checkpoint!r} to translate with (train first with "
                                      f"the same flags, or check --checkpoint_dir, --dataset, --light)"
                                      + policy.where_checkpoints_are(paths.checkpoint, cfg))
            # NaN / inf weights, or finite ones whose translation overflows: exit 2, never black images
            from ugatit_common.finite import refuse_non_finite
            gen_vars = [v for v in tf.global_variables() if v.name.startswith("generator")]
            refuse_non_finite(zip([v.name for v in gen_vars], sess.run(gen_vars)),
                              f"checkpoint {paths.checkpoint} (step {step})")
            print(" [*] Load SUCCESS")
            # never into a live run's folders, the checkpoint folder read, or a dataset's image folder
            check_result_folders([paths.result, os.path.join(paths.result, "a2b"), os.path.join(paths.result, "b2a")],
                                 checkpoint=paths.checkpoint)
            with removed_on_failure() as made:  # a failed run leaves no empty folder it made (never one there before)
                for folder, files in ((paths.result, True), (os.path.join(paths.result, "a2b"), files_A),
                                      (os.path.join(paths.result, "b2a"), files_B)):
                    if files:  # a2b/ and b2a/ too: a file in their place stops the run before any picture
                        made.make(folder, cli_errors.check_writable_folder, "--result_dir")
                _translate_all(sess, m, cfg, paths, files_A, files_B)
    return paths.result


def _translate_all(sess, m, cfg: dict, paths, files_A: list, files_B: list) -> None:
    """The test phase's pictures and page (results/<model_dir>: a2b/, b2a/, index.html)."""
    from ugatit_common.finite import refuse_non_finite_output  # finite weights may still overflow
    # one test phase at a time writes these pictures and this page (a second one is refused)
    with own_result_folder(paths.result):
        for folder in [paths.result] + [os.path.join(paths.result, d) for d in DIRECTIONS]:  # page and images:
            policy.sweep_temp(folder, log=lambda msg: None)  # a killed earlier test phase's (not a live one's)
        page = ResultsPage(paths.result, cfg["img_size"])
        names = OutputNames(files_A + files_B)  # a2b/ and b2a/: never collide, never an input
        try:
            for files, src, out, direction in ((files_A, m.test_domain_A, m.test_fake_B, "a2b"),
                                               (files_B, m.test_domain_B, m.test_fake_A, "b2a")):
                for f in files:
                    print(f"Processing {'A' if direction == 'a2b' else 'B'} image: " + f)  # the official line
                    try:
                        image = load_test_image(f, cfg["img_size"])
                    except Exception as e:  # ImageReadError (unreadable, not an image), or a decoder's own
                        if isinstance(e, OSError) and not isinstance(e, ImageReadError):
                            raise  # a limit of the machine (ulimit -n: images.read_error), not the file's fault
                        why = (e.reason if isinstance(e, ImageReadError)
                               else f"not a readable image ({type(e).__name__})")
                        print(f"warning: skipping {f}: {why}", file=sys.stderr)
                        continue
                    fake = sess.run(out, {src: image})
                    refuse_non_finite_output(fake[0], f"the {direction} translation of {f}")  # no black picture
                    image_path = names.path(os.path.join(paths.result, direction), f)
                    page.before_output(image_path)  # an earlier run's page never lists this run's pictures
                    save_image(fake[0], image_path)
                    page.add(os.path.relpath(image_path, paths.result).replace(os.sep, "/"), f, image_path)
        except BaseException:  # Ctrl-C, a NaN picture, a full disk: the page lists what this run wrote
            page.stopped()
            raise
        if not page.rows:  # the previous results page stays as it was
            raise opt.OptionError(none_readable(files_A + files_B))
        page.close()


def print_information(cfg: dict, dataset_num: int) -> None:
    print(opt.information(cfg, dataset_num) + "\n")
