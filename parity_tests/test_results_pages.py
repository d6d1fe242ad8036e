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


@pytest.fixture(scope="module")
def morph_ckpt(tmp_path_factory):
    """A config-C Morph checkpoint folder (1 iteration on the demo set, 32 px)."""
    from morph.train import train
    from ugatit_common.demo_data import make_demo_dataset
    root = str(tmp_path_factory.mktemp("morph"))
    make_demo_dataset(root, "demo", 32, n_train=2, n_test=1)
    cfg = opt.config_from(dataset="demo", epoch=1, iteration=1, print_freq=1000, save_freq=1000, decay_flag=False,
                          light=True, ch=4, n_dis=4, img_size=32, morph_config="C",
                          checkpoint_dir=os.path.join(root, "ckpt"), result_dir=os.path.join(root, "res"),
                          log_dir=os.path.join(root, "logs"), sample_dir=os.path.join(root, "samples"))
    torch.manual_seed(0)
    out = train(cfg, device=torch.device("cpu"), seed=0, base=root, log=lambda m: None)
    return out["checkpoint_dir"]


def _morph(args, capsys):
    from morph.__main__ import main
    capsys.readouterr()
    rc = main(args + ["--device", "cpu"])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("argv", [
    ["interpolate", "--steps", "10000"], ["interpolate", "--steps", "101"], ["interpolate", "--steps", "1"],
    ["interpolate", "--steps", "0"], ["interpolate", "--samples", "0"], ["interpolate", "--samples", "100000000"],
    ["translate", "--direction", "a2b", "--samples", "10000"], ["translate", "--direction", "a2b", "--samples", "0"],
], ids=lambda a: "-".join(a).replace("--", ""))
def test_morph_counts_out_of_range_are_refused_before_any_work(morph_ckpt, tmp_path, capsys, argv):
    """`interpolate --steps 10000` computed 10000 frames for minutes and wrote a strip 10001 tiles
    wide (at 256 px past PNG's width limit) and a 40-minute GIF; `--samples 10^8` a w code of 10^8
    draws. Each is one `error:` line naming the flag, exit 2, nothing written."""
    photo = _photo(tmp_path / "in" / "p.png")
    out = tmp_path / "out"
    rc, cap = _morph(argv + ["--checkpoint", morph_ckpt, "--input", photo, "--result_dir", str(out)], capsys)
    flag = argv[-2]
    assert rc == 2, cap.err
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and f"{flag}={argv[-1]}" in lines[0], cap.err
    assert not out.exists()


def test_morph_step_limits_are_served(morph_ckpt, tmp_path, capsys):
    """The ends of the allowed range work: --steps 2 and --steps 100 (a GIF of the input and 100
    frames, captions distinct)."""
    from PIL import Image
    photo = _photo(tmp_path / "in" / "p.png")
    for steps in (2, 100):
        out = tmp_path / f"out{steps}"
        rc, cap = _morph(["interpolate", "--steps", str(steps), "--samples", "1", "--checkpoint", morph_ckpt,
                          "--input", photo, "--result_dir", str(out)], capsys)
        assert rc == 0, cap.err
        with Image.open(out / "p.gif") as im:
            assert im.n_frames == steps + 1
