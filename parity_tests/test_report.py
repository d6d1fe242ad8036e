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
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0: rows)
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
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0: rows)
    assert report.main([os.path.join(golden_dir, "final"), str(tmp_path), "--img_size", "64"]) == 0
    captured = capsys.readouterr()
    assert "guessed smoothing=True" in captured.err and "guessed img_size" not in captured.err
    md, page = (tmp_path / "parity_report.md").read_text(), (tmp_path / "parity_report.html").read_text()
    for text in (captured.out, md, html.unescape(page)):
        assert "smoothing = True  [guessed: AdaLIN smoothing leaves no trace in the weights" in text
        assert "img_size = 64  [flag: given explicitly]" in text
        assert "n_dis = 5  [weights: " in text
