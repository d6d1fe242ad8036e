"""The `.meta` `weights_convert.py torch2tf` writes, against the one TF's own Saver writes for the
same model (tf_reference's train phase): the same saver_def, collections (`variables`,
`trainable_variables`, `train_op`, ...) and variables (test_convert_cases, section 9), but its
input pipelines listed no files - the graph of a run that trained on nothing. A TF user who
imports an official `.meta` and runs its train op (`tf.train.import_meta_graph` + `restore`, then
`sess.run(tf.get_collection("train_op"))`) trains on the run's images; with ours TF stopped
(`ShuffleDataset: buffer_size must be greater than zero`). Now torch2tf lists what the official
train phase lists - `./dataset/<dataset>/trainA|trainB/*.*` in the working directory, for an input
that records its data set - and says in one note when there is none to list."""
from __future__ import annotations

import os

import pytest

import weights_convert as wc
from parity_tests.test_convert_cases import _meta_port
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

CFG = opt.config_from(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False)


def _run_train_op(prefix):
    """import_meta_graph + restore, then one run of the graph's train ops (the learning rate fed)."""
    from tf_reference.compat import tf
    with tf.Graph().as_default():
        saver = tf.train.import_meta_graph(prefix + ".meta")
        listed = [n.attr["value"].tensor.string_val for n in tf.get_default_graph().as_graph_def().node
                  if n.op == "Const" and n.name.startswith("normalize_element")]
        with tf.Session() as sess:
            saver.restore(sess, prefix)
            sess.run(tf.get_collection("train_op"), feed_dict={"learning_rate:0": CFG["lr"]})
    return [[os.fsdecode(b) for b in names] for names in listed]


@pytest.mark.tf
@pytest.mark.slow  # TensorFlow builds the train graph twice (~10 s each) and runs it once
def test_the_meta_lists_the_runs_training_images_and_its_train_op_runs(tmp_path, monkeypatch, capsys):
    src = _meta_port(tmp_path / "port", cfg=CFG)
    # where the run's data set is (the working directory of the run): its files are listed
    root = tmp_path / "work"
    make_demo_dataset(str(root), "t", size=32, n_train=2, n_test=1)
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert wc.main(["torch2tf", src, "tf/UGATIT_light.model"]) == 0
    err = capsys.readouterr().err
    assert "list no training images" not in err, err
    listed = _run_train_op("tf/UGATIT_light.model-3")
    assert listed == [opt.domain_files(CFG, "trainA"), opt.domain_files(CFG, "trainB")], listed
    # elsewhere: written all the same, without files, and said in one note
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert wc.main(["torch2tf", src, "tf2/UGATIT_light.model"]) == 0
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if "list no training images" in ln]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "dataset/t" in notes[0], err
    assert os.path.isfile(tmp_path / "tf2" / "UGATIT_light.model-3.meta")


def test_the_files_listed_are_the_official_train_phases_glob(tmp_path, monkeypatch):
    """What torch2tf hands the graph (no TensorFlow needed): the official train phase's glob of
    ./dataset/<dataset>/trainA|trainB/*.* in the working directory, or nothing with the reason -
    an input that does not record its data set, or a directory without that data set."""
    root = tmp_path / "work"
    make_demo_dataset(str(root), "t", size=32, n_train=2, n_test=1)
    monkeypatch.chdir(root)
    files_A, files_B, why = wc.training_files(CFG, None)
    assert why == "" and files_A and files_B
    assert [list(files_A), list(files_B)] == [opt.domain_files(CFG, "trainA"), opt.domain_files(CFG, "trainB")]
    assert all(f.startswith(os.path.join(".", "dataset", "t", "trainA")) for f in files_A), files_A
    assert wc.training_files(CFG, {"light", "ch"}) == ((), (), "the input does not record its data set")
    monkeypatch.chdir(tmp_path)
    files_A, files_B, why = wc.training_files(CFG, None)
    assert (files_A, files_B) == ((), ()) and "dataset" in why and "t" in why, why
    # one domain's images alone: nothing listed (the other pipeline's buffer of 0 would not run either)
    import shutil
    shutil.rmtree(root / "dataset" / "t" / "trainB")
    monkeypatch.chdir(root)
    files_A, files_B, why = wc.training_files(CFG, None)
    assert (files_A, files_B) == ((), ()) and "trainA and trainB" in why, why


@pytest.mark.tf
@pytest.mark.slow  # TensorFlow builds the train graph three times (~40 s alone; 3 min on busy cores)
def test_the_meta_graph_takes_the_longer_list_and_only_its_own_variables():
    """tf_reference.meta_graph's graph, as the official train phase builds it: its shuffle buffers
    hold the longer list's count (the official dataset_num, max of trainA / trainB: 3 here, not
    1), and names that are no variable of the graph are a ValueError naming them."""
    from tensorflow.core.protobuf import meta_graph_pb2

    from tf_reference import meta_graph as mg
    from tf_reference import train as phases
    from tf_reference.compat import tf
    cfg = dict(CFG, augment_flag=True)
    with tf.Graph().as_default():
        phases.build_train_graph(cfg, ["a"], ["b"], 1)
        names = [v.op.name for v in tf.global_variables()]
    with tf.Graph().as_default(), pytest.raises(ValueError, match=r"1 variable\(s\) not in the official graph "
                                                                  r"of this config: not/a_variable"):
        phases.build_train_graph(cfg, ["a"], ["b"], 1, saved=names + ["not/a_variable"])
    meta = mg.train_meta_graph(cfg, names, ["a1.png", "a2.png", "a3.png"], ["b1.png"])
    graph = meta_graph_pb2.MetaGraphDef.FromString(meta).graph_def
    nodes = {n.name: n for n in graph.node}
    buffers = [tf.make_ndarray(nodes[n.input[1].split(":")[0]].attr["value"].tensor).item()
               for n in graph.node if n.op.startswith("ShuffleDataset")]
    assert buffers == [3, 3], buffers


def test_the_note_names_a_data_set_folder_only_for_an_input_that_records_one():
    """An input that does not record its data set (a tf2torch output of a folder not named as a
    model_dir) was told to "run torch2tf in the working directory of the run (where
    dataset/selfie2anime/ is)": the official default's name, not its data set, and no directory
    would list files for it (training_files lists none without a recorded data set)."""
    why = wc.training_files(CFG, {"light", "ch"})[2]
    note = wc.no_training_images_note(opt.config_from(light=True), why)
    assert note.startswith("note: ") and why in note and "selfie2anime" not in note and "working directory" not in note
    why = "no images in ./dataset/t/trainA and trainB here"
    note = wc.no_training_images_note(CFG, why)
    assert why in note and "working directory of the run (where dataset/t/ is)" in note, note
