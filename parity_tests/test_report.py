"""`python -m parity_tests.report CKPT OUT_DIR`: the per-layer parity table as Markdown and HTML."""
import html
import os
import subprocess
import sys

import numpy as np
import pytest

from parity_tests import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.tf
def test_report_golden_checkpoint(golden_dir, tmp_path, capsys):
    ckpt = os.path.join(golden_dir, "final")
    rc = report.main([ckpt, str(tmp_path), "--img_size", "64", "--smoothing", "True"])
    out = capsys.readouterr().out
    assert rc == 0, out
    md, page = tmp_path / "parity_report.md", tmp_path / "parity_report.html"
    assert md.is_file() and page.is_file()
    assert f"report: {page}" in out
    md_text, html_text = md.read_text(), page.read_text()
    # every TF layer and network output of the four networks, independently listed by tf_reference
    import weights_convert as wc
    from parity_tests.harness import tf_forward
    from torch_port.tf_bundle import BundleReader
    from ugatit_common.options import config_from
    cfg = config_from(light=True, ch=4, n_res=4, n_dis=5, img_size=64, sn=True, smoothing=True)
    assert f"config: {wc.read_tf_config(ckpt, {'img_size': 64})}" in out
    with BundleReader(ckpt) as r:
        weights = {n: r.read(n) for n in r.keys() if n.startswith(wc.NETWORKS) and not n.endswith(wc.SLOT_SUFFIXES)}
    names = list(tf_forward(weights, cfg, np.zeros((1, 64, 64, 3), np.float32)))
    assert len(names) > 100 and sum(":" in n for n in names) == 12
    assert f"{len(names)} tensors compared (12 network outputs), 0 over tolerance" in out
    assert f"{len(names)} tensors compared, 0 over tolerance" in md_text
    for n in names:
        torch_name = n if ":" in n else n.replace("/", ".")
        assert f"| `{n}` | `{torch_name}` |" in md_text, n
        assert f"<td>{html.escape(n)}</td><td>{html.escape(torch_name)}</td>" in html_text, n
    assert "**NO**" not in md_text and "<td>NO</td>" not in html_text
    # the default fast paths' columns (bf16 on CPU; bf16,fp16 with CUDA): a value on every generator row
    from parity_tests.fast_paths import default_device, default_paths, fast_path_errors, parse_paths
    import torch
    from parity_tests.harness import input_image
    labels = list(parse_paths(default_paths())[0])
    table = _md_rows(md_text)
    assert table[None][9:] == [f"{lab} err vs f64: rms / max (x fp32)" for lab in labels]
    for n in names:
        want_value = n.startswith("generator")
        assert all((c != "-") == want_value for c in table[n][9:]), (n, table[n])
    assert f"fast paths {', '.join(labels)} (on {default_device()}): " in out
    assert "no fast-path counterpart" not in out
    assert (tmp_path / "fast_paths.md").is_file()
    # one layer and one output, against fast_path_errors run here directly on that generator
    _, state = wc.tf_to_torch(ckpt, overrides={"img_size": 64}, quiet=True)
    from torch_port import build_ugatit
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    x = torch.from_numpy(input_image(cfg, 0).transpose(0, 3, 1, 2).copy())
    res = fast_path_errors(model.generator_A.eval(), (x,), ("bf16",))
    col = 9 + labels.index("bf16")
    assert table["generator_A/adaptive_resblock2/res2/conv_0"][col] == _expected_cell(
        res["layers"]["adaptive_resblock2.res2.conv_0"], "bf16")
    assert table["generator_A:image"][col] == _expected_cell(res["outputs"]["image"], "bf16")


def test_report_missing_checkpoint(tmp_path):
    """The real command line: a path that is no checkpoint gives one `error:` line and exit 2."""
    out_dir = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "parity_tests.report", str(tmp_path / "nope"), str(out_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out_dir.exists()


def test_report_not_ugatit_checkpoint(tmp_path, capsys):
    from torch_port.tf_bundle import BundleWriter
    prefix = str(tmp_path / "model-1")
    with BundleWriter(prefix) as w:
        w.add("encoder/conv/kernel", np.ones((3, 3, 3, 8), np.float32))
        w.finish()
    assert report.main([prefix, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not a U-GAT-IT checkpoint") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_report_bad_img_size(golden_dir, tmp_path, capsys):
    assert report.main([os.path.join(golden_dir, "final"), str(tmp_path / "out"), "--img_size", "30"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --img_size=30") and err.count("\n") == 1, err


def test_report_exit_1_when_a_layer_fails(golden_dir, tmp_path, capsys, monkeypatch):
    """Exit 1 and the failing row printed (the comparison is stubbed: this checks the CLI's verdict)."""
    from parity_tests import harness
    rows = {"generator_B/conv": dict(torch_name="generator_B.conv", shape=(1, 4, 64, 64), max_abs=1.0, max_rel=1.0,
                                     tol=1e-5, ok=False, output=False),
            "generator_B:image": dict(torch_name="generator_B:image", shape=(1, 3, 64, 64), max_abs=0.0, max_rel=0.0,
                                      tol=1e-5, ok=True, output=True)}
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: rows)
    assert report.main([os.path.join(golden_dir, "final"), str(tmp_path), "--img_size", "64"]) == 1
    out = capsys.readouterr().out
    assert "2 tensors compared (1 network outputs), 1 over tolerance" in out and "generator_B/conv" in out
    assert "**NO**" in (tmp_path / "parity_report.md").read_text()


def test_report_lists_where_the_config_came_from(golden_dir, tmp_path, capsys, monkeypatch):
    """The golden `final/` has no .meta and no model_dir name: smoothing is guessed, and the report
    (stderr, stdout, Markdown, HTML) says so; the flag-given image size is listed as such."""
    from parity_tests import harness
    rows = {"generator_B:image": dict(torch_name="generator_B:image", shape=(1, 3, 64, 64), max_abs=0.0, max_rel=0.0,
                                      tol=1e-5, ok=True, output=True)}
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: rows)
    assert report.main([os.path.join(golden_dir, "final"), str(tmp_path), "--img_size", "64"]) == 0
    captured = capsys.readouterr()
    assert "guessed smoothing=True" in captured.err and "guessed img_size" not in captured.err
    md, page = (tmp_path / "parity_report.md").read_text(), (tmp_path / "parity_report.html").read_text()
    for text in (captured.out, md, html.unescape(page)):
        assert "smoothing = True  [guessed: AdaLIN smoothing leaves no trace in the weights" in text
        assert "img_size = 64  [flag: given explicitly]" in text
        assert "n_dis = 5  [weights: " in text


# --- the fast-path columns (issue 9): one per fast path, joined to the harness rows by name ------------------------

def _md_rows(md_text: str) -> dict:
    """{TF name: [cells]} of the report's Markdown table, and the header under key None."""
    out = {}
    for line in md_text.splitlines():
        if line.startswith("| layer | TF name |"):
            out[None] = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith(("| layer | `", "| output | `")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[1].strip("`")] = cells
    return out


def _expected_cell(r: dict, label: str) -> str:
    """What the report must show for fast_path_errors entry r, formatted here independently."""
    rms, mx = r[label]
    return f"{rms:.3g} / {mx:.3g} ({rms / r['fp32'][0]:.0f}x)"


def _fixture_rows_and_sections(name, labels=("bf16",)):
    """Harness rows of a stored activation fixture (TF's recorded names; no TensorFlow needed) and
    fast_path_errors of both its generators on the same input, as checkpoint_sections gives them."""
    from parity_tests.activation_fixtures import fixture_path, port_rows, read
    from parity_tests.fast_paths import fast_path_errors
    from torch_port import build_ugatit
    run = port_rows(read(fixture_path(name)))
    cfg, rows, state, x = run["config"], run["rows"], run["state"], run["x"]
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    sections = [(net, fast_path_errors(getattr(model, net).eval(), (x,), labels))
                for net in ("generator_B", "generator_A")]
    return cfg, rows, sections


def test_fast_path_columns_join_every_generator_row(tmp_path):
    """TF-free, on the stored TF activations of the full 32 px fixture: every generator row of the
    harness (TF's recorded names) gets its fast path's value, equal to fast_path_errors' entry of
    the same layer; discriminator rows and a compiled path's inner layers get "-"; the shapes
    agree; the Markdown and HTML carry the same cells; the intro states the budgets."""
    from parity_tests.fast_paths import BUDGETS, harness_name, report_columns
    from parity_tests.harness import write_report
    cfg, rows, sections = _fixture_rows_and_sections("full32_ch2_dis4_sn")
    # a compiled path measures the network outputs only (simulated: the same numbers as bf16, outputs only)
    for _, res in sections:
        for r in res["outputs"].values():
            r["bf16+compile"] = r["bf16"]
    extra = report_columns(sections, ["bf16", "bf16+compile"], rows)
    assert extra["unmatched"] == []
    gen = [n for n in rows if n.startswith("generator")]
    assert len(gen) > 100 and set(extra["cells"]) == set(gen)  # every generator row, nothing else
    by_torch = {harness_name(net, kind, k): r for net, res in sections for kind in ("outputs", "layers")
                for k, r in res[kind].items()}
    for n in gen:
        r = by_torch[rows[n]["torch_name"]]
        assert tuple(r["shape"]) == tuple(rows[n]["shape"]), n
        assert extra["cells"][n][0] == _expected_cell(r, "bf16"), n
        # the join pairs the same tensor: the fast paths' exact float32 error is the harness's torch error
        # (the same float32 run; the truths, torch64 and the stored TF64, agree to ~1e-13)
        assert abs(r["fp32"][0] - rows[n]["port_rms"]) <= 1e-4 * rows[n]["port_rms"], n
        assert extra["cells"][n][1] == ("-" if not rows[n]["output"] else _expected_cell(r, "bf16+compile")), n
    page = write_report(rows, cfg, str(tmp_path), "fixture", extra=extra)
    md = (tmp_path / "parity_report.md").read_text()
    html_text = open(page).read()
    assert sorted(os.listdir(tmp_path)) == ["parity_report.html", "parity_report.md"]  # atomic: no temp file left
    table = _md_rows(md)
    assert table[None][-2:] == ["bf16 err vs f64: rms / max (x fp32)", "bf16+compile err vs f64: rms / max (x fp32)"]
    assert all(len(c) == len(table[None]) for c in table.values())
    for n in rows:
        want = extra["cells"][n] if n.startswith("generator") else ["-", "-"]
        assert table[n][-2:] == want, n
        assert "".join(f"<td>{html.escape(c)}</td>" for c in want) + "</tr>" in html_text, n
    for k, (mean, mx) in BUDGETS.items():
        assert f"{k}: mean |diff| <= {mean:g}, max <= {mx:g}" in md and f"{k}: mean |diff| &lt;= {mean:g}" in html_text
    assert "Fast-path columns (bf16, bf16+compile;" in md and "'-': not measured" in md
    # a pair whose shapes differ (a port the harness fails on shape) is listed, never joined
    n = gen[5]
    bad = dict(rows, **{n: dict(rows[n], shape=(1, 1))})
    extra = report_columns(sections, ["bf16"], bad)
    assert n not in extra["cells"] and len(extra["unmatched"]) == 1 and extra["unmatched"][0].startswith(n)


def test_fast_paths_default_and_none(golden_dir, tmp_path, capsys, monkeypatch):
    """No flag: bf16 on CPU, bf16,fp16 where CUDA is available (cuda availability stubbed off here,
    so the run is on CPU); `--fast_paths none`: the plain table. The comparison is stubbed (this
    checks the CLI); the fast paths run on the golden checkpoint."""
    import torch
    from parity_tests import harness
    from parity_tests.fast_paths import default_paths
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_paths() == "bf16,fp16" and report.fast_paths_arg(None) == "bf16,fp16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_paths() == "bf16" and report.fast_paths_arg(None) == "bf16"
    assert report.fast_paths_arg("none") == report.fast_paths_arg("None") == ""
    rows = {"generator_B:image": dict(torch_name="generator_B:image", shape=(1, 3, 64, 64), max_abs=0.0, max_rel=0.0,
                                      ok=True, output=True),
            "generator_A/up_conv_1": dict(torch_name="generator_A.up_conv_1", shape=(1, 4, 64, 64), max_abs=0.0,
                                          max_rel=0.0, ok=True, output=False),
            "discriminator_A:local": dict(torch_name="discriminator_A:local", shape=(1, 1, 16, 16), max_abs=0.0,
                                          max_rel=0.0, ok=True, output=True)}
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: rows)
    ckpt = os.path.join(golden_dir, "final")
    assert report.main([ckpt, str(tmp_path / "d"), "--img_size", "64"]) == 0
    out = capsys.readouterr().out
    assert "fast paths bf16 (on cpu): 2 generator tensors in the report's fast-path columns" in out
    table = _md_rows((tmp_path / "d" / "parity_report.md").read_text())
    assert table[None][9:] == ["bf16 err vs f64: rms / max (x fp32)"]
    assert table["generator_B:image"][-1].endswith("x)") and table["generator_A/up_conv_1"][-1].endswith("x)")
    assert table["discriminator_A:local"][-1] == "-"
    # the same numbers in fast_paths.md (every generator layer)
    fp_md = (tmp_path / "d" / "fast_paths.md").read_text()
    assert f"| output | image | [1, 3, 64, 64] | " in fp_md and table["generator_B:image"][-1] in fp_md
    assert report.main([ckpt, str(tmp_path / "n"), "--img_size", "64", "--fast_paths", "none"]) == 0
    assert "fast paths" not in capsys.readouterr().out
    md = (tmp_path / "n" / "parity_report.md").read_text()
    assert len(_md_rows(md)[None]) == 9 and "Fast-path columns" not in md
    assert sorted(os.listdir(tmp_path / "n")) == ["parity_report.html", "parity_report.md"]


def _stub_rows():
    return {"generator_B:image": dict(torch_name="generator_B:image", shape=(1, 3, 64, 64), max_abs=0.0, max_rel=0.0,
                                      ok=True, output=True)}


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_report_out_dir_refused_before_work(golden_dir, tmp_path, capsys, monkeypatch):
    """OUT_DIR is checked before the comparison runs (stubbed to fail if reached): the checkpoint
    folder being read, a dataset's image folder, a file, and a folder holding the user's own file
    by a report's name are each one `error:` line naming OUT_DIR, exit 2, nothing written or
    changed."""
    import shutil
    from parity_tests import harness

    def never(*a, **k):
        raise AssertionError("the comparison ran before OUT_DIR was checked")
    monkeypatch.setattr(harness, "compare_networks", never)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(os.path.join(golden_dir, "final"), ckpt)
    before = sorted(os.listdir(ckpt))
    user = tmp_path / "paper"
    user.mkdir()
    (user / "parity_report.html").write_text("<html>my own notes</html>")
    (tmp_path / "a_file").write_text("x")
    dataset = tmp_path / "dataset" / "mine" / "testA"
    dataset.mkdir(parents=True)
    for out, words in ((ckpt, "checkpoint folder"), (ckpt / "sub", "checkpoint folder"), (dataset, "dataset"),
                       (tmp_path / "a_file", "not a folder"), (tmp_path / "a_file" / "sub", "not a folder"),
                       (user, "never replaced")):
        rc = report.main([str(ckpt), str(out), "--img_size", "64", "--fast_paths", "none"])
        line = _one_error(capsys.readouterr().err)
        assert rc == 2 and "OUT_DIR" in line and words in line, line
    assert sorted(os.listdir(ckpt)) == before and sorted(os.listdir(dataset)) == []
    assert (user / "parity_report.html").read_text() == "<html>my own notes</html>"
    assert sorted(os.listdir(user)) == ["parity_report.html"] and (tmp_path / "a_file").read_text() == "x"


def test_report_stopped_part_way_leaves_out_dir_as_it_was(golden_dir, tmp_path, capsys, monkeypatch):
    """A report whose free run is stopped (Ctrl-C) after the table was computed writes nothing: an
    earlier report in OUT_DIR stays as it was (not replaced by a table without its free-run
    section), a new OUT_DIR is not left behind; the completed run then writes the table and the
    section together, replacing the earlier report."""
    from parity_tests import free_run_report, harness
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: _stub_rows())
    monkeypatch.setattr(free_run_report, "prepare_from_checkpoint", lambda *a, **k: "prepared")

    def stopped(prepared):
        raise KeyboardInterrupt
    monkeypatch.setattr(free_run_report, "run", stopped)
    ckpt = os.path.join(golden_dir, "final")
    out = tmp_path / "out"
    argv = [ckpt, str(out), "--img_size", "64", "--fast_paths", "none", "--free_run", "3"]
    assert report.main(argv) == 130
    assert not out.exists(), os.listdir(out)
    assert report.main(argv[:-2]) == 0  # an earlier report, without a free run
    earlier = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert sorted(earlier) == ["parity_report.html", "parity_report.md"]
    assert report.main(argv) == 130
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == earlier
    result = {"reference": "TF", "candidate": "port", "budget": 1e-9, "iterations": 1, "held": 1,
              "first_over": None, "seconds": 0.1, "start": "checkpoint", "curve": [
                  {"iteration": 1, "counter": 1, "runs": "DG", "lr": 1e-4, "worst": 1e-12, "norm_fed_bias_lr": 0.0,
                   **{c: {"value": 1e-12, "name": "t", "index": []}
                      for c in ("losses", "weights", "slots", "outputs")}}]}
    monkeypatch.setattr(free_run_report, "run", lambda prepared: result)
    capsys.readouterr()
    assert report.main(argv) == 0
    assert sorted(os.listdir(out)) == ["free_run.json", "parity_report.html", "parity_report.md"]
    assert "## Free-running float64 training" in (out / "parity_report.md").read_text()
    assert "<h2>Free-running float64 training</h2>" in (out / "parity_report.html").read_text()


class _Terminal:
    """A stderr that says it is a terminal (tqdm draws its bar only there)."""

    def __init__(self):
        import io
        self.buffer = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass


def test_report_shows_progress_on_a_terminal(golden_dir, tmp_path, monkeypatch):
    """Minutes of work at 256 px: on a terminal a tqdm bar counts the four runs (TF and the port,
    float32 and float64) and the fast paths; none in a log (not a terminal)."""
    from parity_tests import harness

    def compare(ckpt, cfg, seed=0, progress=None, **k):
        for label in ("TF float32", "torch float32", "TF float64", "torch float64"):
            progress(label)
        return _stub_rows()
    monkeypatch.setattr(harness, "compare_networks", compare)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    ckpt = os.path.join(golden_dir, "final")
    assert report.main([ckpt, str(tmp_path / "out"), "--img_size", "64", "--fast_paths", "none"]) == 0
    shown = term.buffer.getvalue()
    assert "parity report" in shown and "4/4" in shown and "torch float64" in shown, shown


def test_report_of_a_checkpoint_whose_name_is_not_utf8(golden_dir, tmp_path, monkeypatch):
    """A checkpoint folder whose name is not UTF-8 (a byte 0xE9, as os.listdir gives it: a
    surrogate): the report and the fast-path pages are written (the name's byte as a \\xE9 escape),
    UTF-8 pages that say so, instead of an encoding error after all the work."""
    import shutil
    from parity_tests import fast_paths, harness
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: _stub_rows())
    monkeypatch.setattr(fast_paths, "checkpoint_sections",
                        lambda *a, **k: [("generator_B", {"outputs": {}, "layers": {}})])
    import io  # the commands print the name's own bytes, which pytest's capture cannot decode
    for stream in ("stdout", "stderr"):
        monkeypatch.setattr(sys, stream, io.TextIOWrapper(io.BytesIO(), "utf-8", "surrogateescape"))
    folder = os.path.join(os.fsdecode(bytes(tmp_path)), os.fsdecode(b"caf\xe9 run"))
    shutil.copytree(os.path.join(golden_dir, "final"), folder)
    out = tmp_path / "out"
    assert report.main([folder, str(out), "--img_size", "64", "--fast_paths", "none"]) == 0
    assert fast_paths.main([folder, str(tmp_path / "fp"), "--img_size", "64", "--paths", "bf16"]) == 0
    for page in (out / "parity_report.md", out / "parity_report.html", tmp_path / "fp" / "fast_paths.md",
                 tmp_path / "fp" / "fast_paths.html"):
        text = page.read_bytes().decode("utf-8")
        assert "caf\\xe9 run" in text, page
        assert page.suffix == ".md" or "<meta charset='utf-8'>" in text


def test_report_unwritable_out_dir_refused_before_work(golden_dir, tmp_path, capsys, monkeypatch):
    """An OUT_DIR where no file can be written (a read-only file system: here tempfile.mkstemp
    denied under it, as root ignores modes) is one `error:` line naming OUT_DIR before the
    comparison (stubbed to fail if reached), and the folder the check made is not left behind."""
    import errno
    import tempfile
    from parity_tests import harness
    ro = os.path.realpath(tmp_path / "ro")
    os.mkdir(ro)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and os.path.realpath(dir).startswith(ro):
            raise PermissionError(errno.EACCES, "Permission denied", dir)
        return real_mkstemp(*a, dir=dir, **k)

    def never(*a, **k):
        raise AssertionError("the comparison ran before OUT_DIR was checked")
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(harness, "compare_networks", never)
    rc = report.main([os.path.join(golden_dir, "final"), os.path.join(ro, "out"), "--img_size", "64",
                      "--fast_paths", "none"])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "OUT_DIR" in line and "not writable" in line, line
    assert os.listdir(ro) == []


def test_a_report_that_fails_half_way_leaves_out_dir_as_it_was(golden_dir, tmp_path, capsys, monkeypatch):
    """`python -m parity_tests.report` wrote its files one by one (fast_paths.md, fast_paths.html,
    free_run.json, parity_report.md, parity_report.html): a full disk (or Ctrl-C, a kill) at the
    page left the new fast-path pages and Markdown table beside the earlier run's page, one report
    made of two runs. Now they are written as one (write_files_atomic): a failure at any file
    leaves every file of OUT_DIR as it was (one `error:` line, exit 2), no temp file left. The
    comparison is stubbed, as in test_fast_paths_default_and_none."""
    import errno
    import hashlib
    from parity_tests import harness
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: _stub_rows())
    ckpt, out = os.path.join(golden_dir, "final"), tmp_path / "d"
    assert report.main([ckpt, str(out), "--img_size", "64", "--fast_paths", "bf16"]) == 0

    def files():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    before = files()
    assert set(before) == {"parity_report.md", "parity_report.html", "fast_paths.md", "fast_paths.html"}
    real = os.replace

    def full_disk(src, dst, *a, **k):
        if os.fspath(dst).endswith("parity_report.html"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", full_disk)
    capsys.readouterr()
    rc = report.main([ckpt, str(out), "--img_size", "64", "--fast_paths", "bf16", "--seed", "1"])  # other numbers
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    assert files() == before


def test_an_empty_out_dir_is_refused_before_work(golden_dir, tmp_path, capsys, monkeypatch):
    """OUT_DIR "" (an unset shell variable: `report CKPT "$OUT"`) is one `error:` line naming
    OUT_DIR, exit 2, before any work (stubbed to fail if reached), in both report commands;
    nothing is written into the current folder (the report used to run to the end and then
    fail on os.makedirs(''))."""
    from parity_tests import fast_paths, harness

    def never(*a, **k):
        raise AssertionError("the work ran before OUT_DIR was checked")
    monkeypatch.setattr(harness, "compare_networks", never)
    monkeypatch.setattr(fast_paths, "checkpoint_sections", never)
    monkeypatch.chdir(tmp_path)
    ckpt = os.path.join(golden_dir, "final")
    for main in (report.main, fast_paths.main):
        try:
            rc = main([ckpt, "", "--img_size", "64"])
        except SystemExit as e:  # refused by argparse (ugatit_common.options.path_value)
            rc = e.code
        err = capsys.readouterr().err  # argparse's `usage:` and `<prog>: error: argument OUT_DIR: ...`
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and "Traceback" not in err, err
        line = lines[0]
        assert rc == 2 and "OUT_DIR" in line and "empty" in line, line
    assert os.listdir(tmp_path) == []
