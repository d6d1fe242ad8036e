"""What users look at: the test phase's results page and `--input` translation
(`python -m torch_port --phase test`), Morph interpolate / translate (strips, GIFs, grids, the
index page): every input listed, every link resolving, bad flags one `error:` line and exit 2.
Tiny models (32 px, ch 2-4) made in seconds."""
from __future__ import annotations

import html
import os
import re
import urllib.parse

import cv2
import numpy as np
import pytest
import torch

from ugatit_common import options as opt


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _photo(path, seed=0, size=40):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return str(path)


@pytest.fixture(scope="module")
def port_ckpt(tmp_path_factory):
    """A port checkpoint folder (untrained weights, tiny)."""
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    folder = tmp_path_factory.mktemp("port") / "ck"
    folder.mkdir()
    cfg = opt.config_from(light=True, img_size=32, ch=2, n_dis=4, dataset="t")
    torch.manual_seed(0)
    ck.save(str(folder), "UGATIT_light", 7, build_ugatit(cfg), {"config": ck.plain_config(cfg), "run": "r1",
                                                                "counter": 7, "G_optim": {}, "D_optim": {}})
    return str(folder)


def _links(page_path):
    """The files every src / href of the page names (relative to the page's folder, as a browser
    resolves them), as file-system paths (bytes decoded as os.fsdecode would)."""
    with open(page_path, encoding="utf-8") as fh:
        text = fh.read()
    out = []
    for m in re.finditer(r"(?:src|href)='([^']*)'", text):
        raw = urllib.parse.unquote_to_bytes(html.unescape(m.group(1)))
        out.append(os.path.join(os.path.dirname(page_path), os.fsdecode(raw)))
    return out


def _port_test(args, cwd, monkeypatch):
    from torch_port.__main__ import main
    monkeypatch.chdir(cwd)
    return main(["--phase", "test", "--device", "cpu", "--threads", "1"] + args)


def test_input_folder_name_with_glob_characters(port_ckpt, tmp_path, monkeypatch, capsys):
    """`--input 'photos [2020]'`: the folder's name is taken literally (it was a glob pattern:
    'the folder holds no files')."""
    photos = tmp_path / "photos [2020]"
    for i in range(2):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    rc = _port_test(["--checkpoint", port_ckpt, "--input", str(photos), "--result_dir", str(out)], tmp_path,
                    monkeypatch)
    err = capsys.readouterr().err
    assert rc == 0, err
    (page,) = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f == "index.html"]
    links = _links(page)
    assert len(links) == 4 and all(os.path.isfile(p) for p in links)
    assert sorted(os.path.basename(p) for p in links) == ["p0.png", "p0.png", "p1.png", "p1.png"]
