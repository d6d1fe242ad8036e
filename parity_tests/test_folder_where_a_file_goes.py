"""An output FILE path that is a folder (an existing one, or one written with a trailing `/`):
one `error:` line naming the user's path and saying it is a folder, exit 2, nothing written,
the folder untouched (ugatit_common.atomic.FolderGiven). Before: the OS's line naming the temp
file (`[Errno 20] Not a directory: '/tmp/.tmp-123-x' -> 'new/'`), after the whole free run.
Model-file writers, which take a folder as "a default name inside it", are not concerned
(test_outputs_guard.py)."""
from __future__ import annotations

import os

import pytest

from ugatit_common import cli_errors
from ugatit_common.atomic import write_bytes_atomic, write_files_atomic


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("given", ["d", "d/", "new/", "link"])
def test_an_atomic_write_onto_a_folder_names_the_path(given, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.mkdir("d")
    open(os.path.join("d", "mine.txt"), "w").write("user's")
    os.symlink("d", "link")
    before = sorted(os.listdir("."))
    for write in (lambda: write_bytes_atomic(given, b"x"), lambda: write_files_atomic({given: b"x", "other": b"y"})):
        with pytest.raises(IsADirectoryError) as e:  # atomic.FolderGiven
            write()
        assert repr(given) in str(e.value) and "folder" in str(e.value) and ".tmp-" not in str(e.value)
        rc = cli_errors.run(lambda argv: write(), [], prog="x")
        line = _one_error(capsys.readouterr().err)
        assert rc == 2 and line.startswith("error:") and repr(given) in line and ".tmp-" not in line, line
    assert sorted(os.listdir(".")) == before and os.listdir("d") == ["mine.txt"]
    assert open(os.path.join("d", "mine.txt")).read() == "user's"


@pytest.mark.parametrize("given", ["new/", "d/"])
def test_free_run_refuses_a_json_folder_before_the_run(given, tmp_path, monkeypatch, capsys):
    """`free_run --json new/`: refused before any training (stubbed to fail if reached)."""
    from parity_tests import free_run

    def never(*a, **k):
        raise AssertionError("the free run ran before --json was checked")
    monkeypatch.setattr(free_run, "_run", never)
    monkeypatch.chdir(tmp_path)
    os.mkdir("d")
    rc = free_run.main(["--json", given, "--iterations", "1"])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "--json" in line and repr(given) in line, line
    assert sorted(os.listdir(".")) == ["d"] and os.listdir("d") == []


def test_a_results_page_that_is_a_folder_is_said_as_such(tmp_path, capsys):
    """The test phase's / Morph's `index.html` being a folder: its path in the line, the folder kept."""
    from ugatit_common.results import ResultsPage
    os.mkdir(tmp_path / "index.html")

    def page(argv):
        with ResultsPage(str(tmp_path)) as p:
            p.before_output(str(tmp_path / "a.png"))
    rc = cli_errors.run(page, [], prog="x")
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "index.html" in line and "is a folder" in line and ".tmp-" not in line, line
    assert os.listdir(tmp_path) == ["index.html"] and os.listdir(tmp_path / "index.html") == []


def test_the_benchmarks_refuse_a_json_folder_written_with_a_slash():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    try:
        from workers import check_json_out
    finally:
        sys.path.pop(0)
    assert "is a folder" in check_json_out("surely-not-here/")


def test_folder_given_says_which_of_the_two_it_is(tmp_path):
    """atomic.folder_given's message: a path written with a trailing separator "ends in a path
    separator" (it names no file, whether or not that folder exists); an existing folder "is a
    folder"; a file name is no FolderGiven."""
    from ugatit_common.atomic import folder_given
    (tmp_path / "d").mkdir()
    for path, why in ((str(tmp_path / "d"), "is a folder"), (str(tmp_path / "d") + os.sep, "ends in a path separator"),
                      (str(tmp_path / "new") + os.sep, "ends in a path separator")):
        assert str(folder_given(path)).startswith(f"{path!r} {why}, where this command writes a file"), path
    assert folder_given(str(tmp_path / "f.json")) is None
