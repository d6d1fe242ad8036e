"""Every file or folder flag and argument of every command, given an empty path or one of spaces
only (an unset shell variable: `--json "$OUT"`): one `error:` line naming that flag, exit 2,
nothing written (ugatit_common.options.path_value). Before, `free_run --json ""` trained and
wrote nothing without a word, `--checkpoint_dir ""` wrote into the current folder, and
`fast_paths --paths ""` wrote a report of no path."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mains():
    import morph.__main__ as morph_main
    import tf_reference.__main__ as tf_main
    import torch_port.__main__ as torch_main
    import weights_convert
    from parity_tests import fast_paths, free_run, report
    from ugatit_common import demo, demo_data
    return {"torch_port": torch_main.main, "tf_reference": tf_main.main, "morph": morph_main.main,
            "weights_convert": weights_convert.main, "free_run": free_run.main, "fast_paths": fast_paths.main,
            "report": report.main, "demo": demo.main, "demo_data": demo_data.main}


X = "{}"  # where the empty value goes
# (command, argv with X for the flag's value, the name argparse gives the flag); a few flags after
# it are bad too (so that, without the check, the command stops before any work on another line)
CASES = [
    ("torch_port", ["--checkpoint_dir", X, "--ch", "0"], "--checkpoint_dir"),
    ("torch_port", ["--result_dir", X, "--ch", "0"], "--result_dir"),
    ("torch_port", ["--log_dir", X, "--ch", "0"], "--log_dir"),
    ("torch_port", ["--sample_dir", X, "--ch", "0"], "--sample_dir"),
    ("torch_port", ["--phase", "test", "--input", X, "--ch", "0"], "--input"),
    ("torch_port", ["--phase", "test", "--checkpoint", X, "--ch", "0"], "--checkpoint"),
    ("torch_port", ["--demo", X, "--ch", "0"], "--demo"),
    ("torch_port", ["export", X, "out.onnx", "--direction", "a2b"], "ckpt"),
    ("torch_port", ["export", "nowhere", X, "--direction", "a2b"], "out"),
    ("tf_reference", ["--checkpoint_dir", X, "--ch", "0"], "--checkpoint_dir"),
    ("morph", ["train", "--data_root", X, "--ch", "0"], "--data_root"),
    ("morph", ["train", "--init_from", X, "--ch", "0"], "--init_from"),
    ("morph", ["translate", "--input", X, "--direction", "a2b", "--ch", "0"], "--input"),
    ("morph", ["interpolate", "--input", "nowhere", "--checkpoint", X, "--ch", "0"], "--checkpoint"),
    ("morph", ["export", X, "out.onnx"], "ckpt"),
    ("morph", ["export", "nowhere", X], "out"),
    ("morph", ["demo", X, "--iterations", "0"], "dir"),
    ("weights_convert", ["tf2torch", X, "out.safetensors"], "ckpt"),
    ("weights_convert", ["tf2torch", "nowhere", X], "out"),
    ("weights_convert", ["tf2torch", "nowhere", "out.safetensors", "--report", X], "--report"),
    ("weights_convert", ["torch2tf", X, "out"], "inp"),
    ("weights_convert", ["torch2tf", "nowhere", X], "ckpt_out"),
    ("weights_convert", ["tf2onnx", "nowhere", X, "--direction", "a2b"], "out"),
    ("free_run", ["--json", X, "--iterations", "0"], "--json"),
    ("free_run", ["--checkpoint", X, "--iterations", "0"], "--checkpoint"),
    ("free_run", ["--dataset", X, "--iterations", "0"], "--dataset"),
    ("fast_paths", [X, "out"], "ckpt"),
    ("fast_paths", ["nowhere", X], "OUT_DIR"),
    ("report", [X, "out"], "ckpt"),
    ("report", ["nowhere", X], "OUT_DIR"),
    ("demo", [X, "--iteration", "0"], "dir"),
    ("demo_data", ["--root", X, "--n_train", "0"], "--root"),
]


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("command,argv,flag", CASES, ids=[f"{c}-{f}-{i}" for i, (c, _, f) in enumerate(CASES)])
def test_an_empty_path_is_refused_naming_its_flag(command, argv, flag, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main = _mains()[command]
    try:
        rc = main([value if a == X else a for a in argv])
    except SystemExit as e:  # argparse's exit, where the command leaves it to argparse
        rc = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1, err
    assert f"argument {flag}: expected a file or folder path" in lines[0] and "empty" in lines[0], lines[0]
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("script,flag", [("bench_fast.py", "--json"), ("bench_train.py", "--json"),
                                         ("train_drift.py", "--json"), ("bench_convert.py", "--out"),
                                         ("bench_convert.py", "--work")])
def test_the_benchmarks_refuse_an_empty_path(script, flag, tmp_path):
    """The bench scripts (run as scripts, as the README shows): the same line, before any work."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), flag, ""], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    lines = [line for line in p.stderr.splitlines() if "error:" in line]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"argument {flag}: expected a file or folder path" in lines[0], lines[0]
    assert os.listdir(tmp_path) == []


def test_fast_paths_refuses_a_list_of_no_path(tmp_path, monkeypatch, capsys):
    """`--paths ""` or `--paths ,`: one line naming --paths, exit 2 (before: a report of no path)."""
    from parity_tests import fast_paths
    monkeypatch.chdir(tmp_path)
    for value in ("", " , "):
        rc = fast_paths.main(["nowhere", "out", "--paths", value])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("error:") == 1 and "--paths" in err and "no fast path" in err, err
    assert os.listdir(tmp_path) == []


def test_a_tilde_not_expanded_by_the_shell_is_the_home_folder(tmp_path, monkeypatch):
    """`--root=~/data` or a quoted '~/data' reaches the command unexpanded: it is the home folder,
    as a shell would have made it (before: a folder named `~` in the current one); `./~` is
    still a folder of that name."""
    from ugatit_common import demo_data, options as opt
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert demo_data.main(["--root=~/data", "--name", "t", "--size", "32", "--n_train", "1", "--n_test", "1"]) == 0
    assert os.path.isdir(home / "data" / "dataset" / "t" / "trainA") and os.listdir(work) == []
    args = opt.build_parser().parse_args(["--result_dir", "~/r", "--checkpoint_dir", "./~/c"])
    assert args.result_dir == os.path.join(str(home), "r") and args.checkpoint_dir == "./~/c"


def test_a_dotdot_after_a_link_is_where_the_os_puts_it(tmp_path, monkeypatch, capsys):
    """`link/../x.json`, the link leading into the checkpoint folder: the OS writes into that
    folder, and the check sees it so (refused, nothing written); before, os.path.abspath dropped
    `link/..` lexically, the check passed and the curve went among the checkpoint's files (or, onto
    another disk, failed at the end on the temp file's rename)."""
    import shutil

    from parity_tests import free_run
    from parity_tests.conftest import GOLDEN
    from ugatit_common import options as opt
    monkeypatch.setattr(free_run, "prepare", lambda args: None)
    monkeypatch.setattr(free_run, "run", lambda args, prepared: {"reference": "tf", "candidate": "port", "budget": 1,
                                                                 "iterations": 1, "held": 1, "first_over": None,
                                                                 "seconds": 0.0, "curve": []})
    monkeypatch.chdir(tmp_path)
    shutil.copytree(os.path.join(GOLDEN, "final"), "ckpt")
    os.mkdir(os.path.join("ckpt", "inner"))
    os.symlink(os.path.join("ckpt", "inner"), "link")
    before = sorted(os.listdir("ckpt"))
    rc = free_run.main(["--checkpoint", "ckpt", "--img_size", "64", "--json", "link/../curve.json"])
    err = capsys.readouterr().err
    assert rc == 2 and "--json" in err and "checkpoint folder" in err, err
    assert sorted(os.listdir("ckpt")) == before and not os.path.exists("curve.json")
    # elsewhere it is written where the OS puts it, and said so
    os.makedirs(os.path.join("out", "deep"))
    os.symlink(os.path.join("out", "deep"), "elsewhere")
    assert free_run.main(["--json", "elsewhere/../curve.json", "--iterations", "1"]) == 0
    assert os.path.isfile(os.path.join("out", "curve.json")) and not os.path.exists("curve.json")
    # the spelling: only a path holding `..` changes; a trailing `/` and the last name (a link) stay
    assert opt.path_value("a/b.json") == "a/b.json"
    assert opt.path_value("elsewhere/../new/") == os.path.join(os.path.realpath("out"), "new") + "/"
    assert opt.path_value("elsewhere/..") == os.path.realpath("out")


def test_only_a_dotdot_name_is_resolved_and_a_last_link_stays(tmp_path, monkeypatch):
    """path_value resolves a `..` that is a whole name, never `..` inside a name (`v1..2`); the
    last name stays as given, so that a link there is the output's own (replaced, not written
    through into its target)."""
    from ugatit_common import options as opt
    monkeypatch.chdir(tmp_path)
    assert opt.path_value("v1..2/out.json") == "v1..2/out.json"
    (tmp_path / "sub").mkdir()
    (tmp_path / "target").mkdir()
    os.symlink("target", "lnk")
    assert opt.path_value("sub/../lnk") == os.path.join(os.path.realpath(tmp_path), "lnk")
