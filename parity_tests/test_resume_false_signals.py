"""`--resume False` moves the older run's checkpoints, samples and logs aside and, stopped half way
by an exception, moves them back (test_nothing_lost). A real Ctrl-C or SIGTERM is not an exception
raised by a move: its handler runs between two bytecodes - after a rename and before its record
(that file then stayed in `previous-run-*/` while the rest went back), or in the middle of the
moving back (the rest stayed aside) - and once all had moved, before the run noted it, the stop
line said "did not take effect: the older run's files are where they were" of files moved aside.
Now the signals are held while the files move (ugatit_common.held_signals): one that comes
meanwhile moves every file back, then stops the command with that line (exit 130 / 143); tested
by sending a real signal to this process right after a rename, and again during the moving back.
The same hold covers a run from scratch setting an older run's samples and logs aside."""
from __future__ import annotations

import os
import signal

import pytest

from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from parity_tests.test_nothing_lost import make_data, port, train_args
from ugatit_common import checkpoint_policy as policy
from ugatit_common.held_signals import signals_held


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Ctrl-C as a user's shell gives it (KeyboardInterrupt): a process started in the background
    of a non-interactive shell (CI's `.ci/run &`) or a pytest-xdist worker inherits SIGINT ignored,
    and an ignored signal is rightly left ignored by the hold, so nothing here would be tested."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns
                  if "ugatit-run" not in n and not n.startswith(".ugatit-run"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_older_run_moves_aside_moves_it_all_back(sig, tmp_path, monkeypatch, capsys):
    from torch_port.__main__ import main
    make_data(tmp_path)
    assert port(train_args(3), monkeypatch, tmp_path)[0] == 0
    before = _tree(tmp_path)
    real = os.replace
    for k, again in ((1, False), (2, True), (4, False), (4, True)):
        calls = {"aside": 0, "back": 0}

        def replace(src, dst, *args, **kw):
            real(src, dst, *args, **kw)
            if "previous-run-" in str(dst):
                calls["aside"] += 1
                if calls["aside"] == k:  # right after the k-th rename, before the code after it runs
                    os.kill(os.getpid(), sig)
            elif "previous-run-" in str(src):
                calls["back"] += 1
                if again and calls["back"] == 1:  # and again while they move back
                    os.kill(os.getpid(), sig)
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        with monkeypatch.context() as m:
            m.setattr(os, "replace", replace)
            rc = main(train_args(3) + ["--resume", "False", "--iteration", "1"])
        err = capsys.readouterr().err
        assert rc == (130 if sig == signal.SIGINT else 143), (k, rc, err[-2000:])
        assert _tree(tmp_path) == before, (k, again, sorted(set(_tree(tmp_path)) ^ set(before)))
        line = err.strip().splitlines()[-1]
        assert "--resume False did not take effect" in line and "--resume False" in line.split("resume with:")[1], line


def test_outputs_set_aside_from_scratch_are_all_moved_or_none(tmp_path):
    """move_outputs_of_an_older_run (a run from scratch whose sample and log folders hold an older
    run's files; tf_reference's too): Ctrl-C after the first folder's files had moved left them
    aside and the second folder's in place; now all go back."""
    from ugatit_common import run_lock
    folders = [tmp_path / "samples", tmp_path / "logs"]
    for f in folders:
        f.mkdir()
        (f / "a.png").write_bytes(b"a")
        (f / "b.png").write_bytes(b"b")
    before = _tree(tmp_path)
    real, seen = os.replace, [0]

    def replace(src, dst, *args, **kw):
        real(src, dst, *args, **kw)
        seen[0] += 1
        if seen[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
    owner = run_lock.acquire_all([(str(f), "folder") for f in folders])
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(os, "replace", replace)
            with pytest.raises(KeyboardInterrupt):
                policy.move_outputs_of_an_older_run([str(f) for f in folders], owner, log=lambda *_: None)
    finally:
        owner.release()
    assert seen[0] > 2 and _tree(tmp_path) == before, _tree(tmp_path)


def test_signals_held_raises_each_one_after_the_block():
    got_inside = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held() as got:
            os.kill(os.getpid(), signal.SIGINT)
            got_inside.extend(got)
            got_inside.append("still running")
    assert got_inside == [signal.SIGINT, "still running"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored_while_held():
    """A signal the process ignores (a run started with `nohup`, or in the background of a
    non-interactive shell: SIGINT ignored) is not held: one that comes during the block is not
    reported to it (it would move an older run's files back for a signal that stops nothing), nor
    raised after it, and the handler stays SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with signals_held() as got:
        os.kill(os.getpid(), signal.SIGINT)
        seen = list(got)
    assert seen == [] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_the_note_that_resume_false_took_effect_is_never_cut_by_a_signal(tmp_path):
    """move_older_run_aside's on_moved (the command's note that --resume False took effect) runs
    under the same hold as the moves: a Ctrl-C during it stops the command only once the note is
    made, so the stop line never says the older run's files are where they were while they are
    aside."""
    from ugatit_common import run_lock
    folder = tmp_path / "ck"
    folder.mkdir()
    for part in ("safetensors", "state.pt"):
        (folder / f"UGATIT_light.model-3.{part}").write_bytes(b"x")
    noted = []

    def on_moved():
        os.kill(os.getpid(), signal.SIGINT)
        noted.append("took effect")
    owner = run_lock.acquire_all([(str(folder), "--checkpoint_dir")])
    try:
        with pytest.raises(KeyboardInterrupt):
            policy.move_older_run_aside(str(folder), [], owner, log=lambda *_: None, on_moved=on_moved)
    finally:
        owner.release()
    assert noted == ["took effect"]
    aside = [n for n in os.listdir(folder) if n.startswith("previous-run-")]
    assert len(aside) == 1 and sorted(os.listdir(folder / aside[0])) == [
        "UGATIT_light.model-3.safetensors", "UGATIT_light.model-3.state.pt"], os.listdir(folder)


def test_moving_back_says_what_it_did_and_only_the_files_it_could_not_move(tmp_path):
    """_move_back (an interrupted --resume False or set-aside from scratch): nothing moved yet, it
    says nothing (no "moved back" of files never moved); a file it cannot move back is named, and
    the folder made for the move that then stays (not empty) is no file left out of place."""
    said = []
    policy._move_back([], "--resume False", said.append)
    assert said == []
    aside = tmp_path / "previous-run-1"
    aside.mkdir()
    (aside / "a.png").write_bytes(b"a")
    (aside / "b.png").write_bytes(b"b")
    (tmp_path / "samples").mkdir()
    done = [("", str(aside)), (str(tmp_path / "samples" / "a.png"), str(aside / "a.png")),
            (str(tmp_path / "gone" / "b.png"), str(aside / "b.png"))]  # its folder went meanwhile
    policy._move_back(done, "--resume False", said.append)
    assert len(said) == 1 and "1 file(s) could not be moved back" in said[0], said
    assert f"{aside / 'b.png'} (back to {tmp_path / 'gone' / 'b.png'}: " in said[0], said
    assert (tmp_path / "samples" / "a.png").read_bytes() == b"a" and os.listdir(aside) == ["b.png"]


def test_moving_back_removes_the_folder_made_for_the_move_once_emptied(tmp_path):
    """_move_back undoes the moves newest first: the files go back, then the folder made for them
    (`previous-run-*`, emptied by then) goes too - not an empty folder left behind because its
    removal was tried while the files were still in it."""
    aside = tmp_path / "previous-run-1"
    aside.mkdir()
    (aside / "c.png").write_bytes(b"c")
    (tmp_path / "samples").mkdir()
    said = []
    policy._move_back([("", str(aside)), (str(tmp_path / "samples" / "c.png"), str(aside / "c.png"))],
                      "--resume False", said.append)
    assert not aside.exists() and os.listdir(tmp_path / "samples") == ["c.png"], os.listdir(tmp_path)
    assert len(said) == 1 and "moved back where they were" in said[0], said
