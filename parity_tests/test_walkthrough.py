"""The README's "From an official checkpoint to your photos" block runs as written on the demo
checkpoint (an official-format TF checkpoint as `python -m ugatit_common.demo` leaves it)."""
import os
import re
import subprocess
import sys

import cv2
import pytest

from parity_tests.conftest import ROOT
from ugatit_common import options as opt
from ugatit_common.demo import TINY

pytestmark = [pytest.mark.tf, pytest.mark.slow]  # full tier: the README walkthrough end to end (~3.5 min)


def walkthrough_block() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"<!-- walkthrough:begin -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert m, "README: walkthrough block not found"
    return m.group(1)


def test_readme_walkthrough_runs_as_written(tmp_path):
    from ugatit_common.demo_data import make_demo_dataset
    work = tmp_path / "demo_run"
    make_demo_dataset(str(work), name="demo", size=64)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "tf_reference"] + TINY + ["--iteration", "1"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    os.symlink(os.path.dirname(os.path.dirname(sys.executable)), tmp_path / ".venv")
    block = walkthrough_block()
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "guessed" not in proc.stderr  # the demo checkpoint records every setting (.meta + folder name)
    cfg = opt.config_from(light=True, dataset="demo", n_dis=5)
    photos = sorted(os.listdir(work / "dataset" / "demo" / "testA"))
    results = tmp_path / "my_results" / opt.model_dir(cfg)
    assert (results / "index.html").is_file()
    for name in photos:
        ours = cv2.imread(str(results / "a2b" / name))
        onnx = cv2.imread(str(tmp_path / "my_onnx_results" / name))
        assert ours is not None and onnx is not None and ours.shape == onnx.shape == (64, 64, 3)
        # the same generator through two runtimes: 8-bit pictures within one count
        assert int(abs(ours.astype(int) - onnx.astype(int)).max()) <= 1
    assert (tmp_path / "my_parity" / "parity_report.html").is_file()
