"""The test phase on a GPU, what a CPU can prove of it (torch_port.static_forward, torch_port.fast's
CUDA settings, torch_port.batch_translate's overlap and out-of-memory line), and the CUDA checks
themselves (marked `cuda`, skipped without a GPU; bench/gpu_check_infer.sh runs them there).

Tiny models (light, 32-64 px, ch 2-4) and the demo fixture (tf_reference trained 8 iterations on
the demo set, light 64 px ch 4: trained weights, so no near-constant channel amplifies rounding).
"""
import copy
import os
import shutil

import numpy as np
import pytest
import torch

import weights_convert
from parity_tests.conftest import FIXTURES, GOLDEN
from parity_tests.fast_paths import BUDGETS, image_error_levels
from torch_port import build_ugatit
from torch_port.fast import cuda_backend_flags, optimize, optimize_generators
from torch_port.networks import Generator
from torch_port.static_forward import MAX_GRAPHS, StaticForward
from ugatit_common.options import OptionError
from ugatit_common.output_names import OutputNames
from ugatit_common.results import ResultsPage

DEMO = os.path.join(FIXTURES, "demo_light64")
DEMO_CKPT = os.path.join(DEMO, "UGATIT_light_demo_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing")
CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not CUDA, reason="needs CUDA")
# the parity suite's float32 budget (README "ONNX export"): |a - b| <= 1e-5 * max(1, max|b|); two
# float32 evaluations of ~40 layers that sum in different orders (batched convolutions) stay inside it
F32 = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one CPU thread (OpenMP threads waiting for a core another job holds made a
    32 px forward take 2 s instead of 8 ms here)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _demo_model():
    cfg, state = weights_convert.tf_to_torch(DEMO_CKPT, overrides={"img_size": 64}, quiet=True)
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    return model.eval(), cfg


def _images(folder, n=5, size=64, seed=0):
    """n RGB pictures of `size` px (smooth random fields: the generators see structure, not noise)."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        img = cv2.resize(small, (size + 8 * i, size), interpolation=cv2.INTER_CUBIC)  # sizes differ: resized on read
        path = os.path.join(folder, f"img_{i}.png")
        cv2.imwrite(path, img)
        files.append(path)
    return files


def _tree(folder):
    """{relative path: bytes} of every file under folder."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _run_batches(model, files, cfg, result_dir, batch, overlap, pad=False, device="cpu", writers=None):
    from torch_port.batch_translate import translate_batches
    page = ResultsPage(result_dir, cfg["img_size"])
    counts = {}
    names = OutputNames(files)
    translate_batches(model, files, "a2b", cfg, torch.device(device), result_dir, page, counts, names, batch,
                      pad=pad, progress=False, overlap=overlap, writers=writers)
    page.close()
    return counts


# -- StaticForward: the CUDA-graph path's structure, eagerly ------------------------------------------

def test_static_forward_is_the_plain_forward_bit_for_bit():
    """The static-buffer forward (inputs copied into fixed buffers, outputs copied out) returns the
    plain forward's outputs exactly, call after call with new inputs and batch sizes; a returned
    output is a copy (a later call does not change it); a Morph generator's `w` keyword travels too."""
    from morph.networks import MorphGenerator
    torch.manual_seed(0)
    g = Generator(ch=2, n_res=4, img_size=32, light=True).eval()
    for precision in ("fp32", "bf16"):
        fast = optimize(g, precision)
        static = StaticForward(fast._run, capture=False, name="generator")
        xs = [torch.rand(b, 3, 32, 32) * 2 - 1 for b in (2, 2, 1, 2)]
        got = []
        with torch.no_grad():
            for x in xs:
                got.append(static(x))
            refs = [fast._run(x) for x in xs]
        assert len(static.entries) == 2 and static.graphs == 0  # one buffer set per batch size, never captured
        for out, ref in zip(got, refs):  # the first output survived the later calls unchanged
            assert all(torch.equal(a, b) for a, b in zip(out, ref)), precision
        assert not torch.equal(got[0][0], got[1][0])  # new inputs were really copied in
    m = MorphGenerator(ch=2, n_res=4, img_size=32).eval()
    static = StaticForward(m, capture=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        w1, w2 = m.w_from_z(m.make_z("a2b", 2)), m.w_from_z(m.make_z("b2a", 2))
        a, b = static(x, w=w1), static(x, w=w2)
        assert torch.equal(a[0], m(x, w=w1)[0]) and torch.equal(b[0], m(x, w=w2)[0])
    assert not torch.equal(a[0], b[0])


def test_static_forward_buffers_keep_the_arguments_layout():
    """A channels-last argument gets a channels-last static buffer (a graph captured over an NCHW
    copy would run, and time, other kernels than the call it stands for)."""
    seen = []
    static = StaticForward(lambda x: seen.append(x.is_contiguous(memory_format=torch.channels_last)) or x + 1,
                           capture=False)
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(static(x), x + 1) and seen == [True]
    assert torch.equal(static(x.contiguous()), x + 1) and seen == [True, False]  # NCHW: its own buffer


def test_static_forward_signature_limit_and_bad_arguments():
    calls = []

    def fn(x, scale=1.0):
        calls.append(x.shape[0])
        return x * scale
    notes = []
    static = StaticForward(fn, capture=False, log=notes.append, name="f")
    for b in range(1, MAX_GRAPHS + 3):
        assert torch.equal(static(torch.ones(b, 2)), torch.ones(b, 2))
    assert len(static.entries) == MAX_GRAPHS and len(notes) == 1 and "further shapes run without graphs" in notes[0]
    assert torch.equal(static(torch.ones(1, 2), scale=2.0), torch.full((1, 2), 2.0))  # a plain value is a new signature
    with pytest.raises(TypeError, match="unsupported argument type"):
        static(object())
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            StaticForward(fn, capture=True)


def test_static_forward_warm_up_leaves_the_state_as_it_was():
    """The warm-up calls before a capture run `fn` for real; a discriminator's spectral-norm `u`
    (state it mutates) is put back afterwards, so the first replay starts where the eager call
    would (without `state`, the warm-up advances `u`)."""
    from torch_port.networks import Discriminator
    from torch_port.static_forward import _Entry
    torch.manual_seed(0)
    d = Discriminator(ch=4, n_dis=5, sn=True).eval()
    fast = optimize(d, "fp32")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    us = {n: b for n, b in d.named_buffers() if n.endswith("u")}
    assert us
    for state, kept in ((lambda: list(d.buffers()), True), (None, False)):
        before = {n: u.clone() for n, u in us.items()}
        static = StaticForward(fast._run, capture=False, state=state)
        e = _Entry((x,), {}, None)
        e.load((x,), {})
        with torch.no_grad():
            static._warm_up(e, torch.device("cpu"))
        same = all(torch.equal(before[n], u) for n, u in us.items())
        assert same == kept, (state, kept)


# -- the exact path and the CUDA settings ------------------------------------------------------------

def test_fp32_test_phase_is_the_unchanged_module():
    """fp32 with every new setting at its default leaves the model as it was (the exact path runs
    the module itself); an OptimizedModule fp32 on CPU returns the module's outputs bit for bit."""
    model, _ = _demo_model()
    gens = model.generator_A, model.generator_B
    assert optimize_generators(model, "fp32", False, cuda_graphs=False, cudnn_benchmark=None) is model
    # the flags' defaults
    assert optimize_generators(model, "fp32", False, cuda_graphs="auto", cudnn_benchmark="auto") is model
    assert (model.generator_A, model.generator_B) == gens
    x = torch.from_numpy(np.load(os.path.join(DEMO, "testA_0.npy")).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        ref = model.generator_B(x)
    fast = optimize(model.generator_B, "fp32")
    assert fast.cudnn_benchmark is None and fast.inner is model.generator_B
    assert all(torch.equal(a, b) for a, b in zip(fast(x), ref))


def test_cuda_backend_flags_set_and_restore():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    try:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, False, False
        with cuda_backend_flags(tf32=False, benchmark=True):
            assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (False, False, True)
        assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (True, False, False)
        with pytest.raises(RuntimeError):
            with cuda_backend_flags(tf32=True, benchmark=False):
                assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (True, True, False)
                raise RuntimeError("inside")
        assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (True, False, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


@pytest.mark.skipif(CUDA, reason="the CPU refusals")
def test_cpu_refuses_tf32_graphs_and_cudnn_benchmark():
    g = Generator(ch=2, n_res=4, img_size=32, light=True).eval()
    with pytest.raises(ValueError, match="precision tf32: TF32 is a mode of NVIDIA tensor cores"):
        optimize(g, "tf32")
    with pytest.raises(ValueError, match="CUDA graphs need the module on a CUDA device"):
        optimize(g, "bf16", cuda_graphs=True)
    with pytest.raises(ValueError, match="cudnn_benchmark=True"):
        optimize(g, "bf16", cudnn_benchmark=True)
    model, _ = _demo_model()
    with pytest.raises(OptionError, match=r"^--precision=tf32: TF32 is a mode of NVIDIA tensor cores") as e:
        optimize_generators(model, "tf32")
    assert "precision tf32:" not in str(e.value)  # the flag said once
    with pytest.raises(OptionError, match="--cuda_graphs True: CUDA graphs need --device cuda"):
        optimize_generators(model, "bf16", cuda_graphs=True)
    with pytest.raises(OptionError, match="--cudnn_benchmark applies to cuDNN"):
        optimize_generators(model, "fp32", cudnn_benchmark=False)


# -- batched test phase: overlap, batch sizes, out of memory ------------------------------------------

def test_overlapped_batches_write_the_serial_files_and_page(tmp_path):
    """Reader thread + writer threads: byte for byte the files and the page of the serial batched
    path (an unreadable file skipped, two inputs whose outputs would share a name, a partial last
    batch, with and without padding, several writer threads)."""
    model, cfg = _demo_model()
    files = _images(str(tmp_path / "in"), n=5)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a picture")
    os.makedirs(tmp_path / "in2")
    shutil.copy(files[1], tmp_path / "in2" / "img_1.png")  # the same name from another folder: img_1_1.png
    files = sorted(files + [str(tmp_path / "in" / "broken.png"), str(tmp_path / "in2" / "img_1.png")])
    serial = _run_batches(model, files, cfg, str(tmp_path / "serial"), 3, overlap=False)
    assert serial == {"a2b": 6}
    ref = _tree(str(tmp_path / "serial"))
    assert len(ref) == 7 and "a2b/img_1_1.png" in ref  # 6 pictures + index.html
    for name, kw in (("overlap", {}), ("overlap_pad", {"pad": True}), ("overlap_w1", {"writers": 1}),
                     ("overlap_b1", {"writers": 3})):
        batch = 1 if name == "overlap_b1" else 3
        counts = _run_batches(model, files, cfg, str(tmp_path / name), batch, overlap=True, **kw)
        got = _tree(str(tmp_path / name))
        assert counts == serial and set(got) == set(ref), name
        if batch == 3:  # the same batches: the same bytes
            assert all(got[k] == ref[k] for k in ref), [k for k in ref if got[k] != ref[k]]
        else:
            assert got["index.html"] == ref["index.html"]


def test_padded_batches_write_each_inputs_own_translation(tmp_path):
    """A compiled generator's padded batches (serial and overlapped): 6 images at --batch 4 are a
    full batch, then 2 images padded to 4 with copies of the last; each file is its own input's
    translation, as one image per call writes it. Tolerance: one 8-bit level (batched float32
    convolutions may sum in another order); a padded copy written in place of an input differs by
    far more."""
    import cv2
    model, cfg = _demo_model()
    files = _images(str(tmp_path / "in"), n=6)

    def pictures(folder):
        return {n: cv2.imread(os.path.join(folder, "a2b", n)).astype(int)
                for n in sorted(os.listdir(os.path.join(folder, "a2b")))}
    _run_batches(model, files, cfg, str(tmp_path / "one"), 1, overlap=False)
    one = pictures(str(tmp_path / "one"))
    assert len(one) == 6 and np.abs(one["img_4.png"] - one["img_5.png"]).max() > 8  # distinct inputs
    for name, overlap in (("serial", False), ("overlap", True)):
        _run_batches(model, files, cfg, str(tmp_path / name), 4, overlap=overlap, pad=True)
        got = pictures(str(tmp_path / name))
        assert set(got) == set(one), name
        assert all(np.abs(got[n] - one[n]).max() <= 1 for n in one), (name, [n for n in one
                                                                              if np.abs(got[n] - one[n]).max() > 1])


def test_batch_path_is_the_one_image_path_within_float32_rounding():
    """A batch of 3 (and a batch padded to 8) per image against one image per call: within the
    float32 budget (batched convolutions may sum in another order; each sample is normalised alone)."""
    model, _ = _demo_model()
    x = torch.from_numpy(np.concatenate([np.load(os.path.join(DEMO, f"{n}_0.npy")) for n in ("testA", "testB")]
                                        + [np.load(os.path.join(DEMO, "testA_0.npy"))[:, ::-1]]).transpose(0, 3, 1, 2)
                         .copy())
    g = model.generator_B
    with torch.no_grad():
        ones = [g(x[i:i + 1])[0] for i in range(3)]
        batched = g(x)[0]
        padded = g(torch.cat([x, x[-1:].expand(5, -1, -1, -1)]))[0][:3]
    for out in (batched, padded):
        for i in range(3):
            d = (out[i] - ones[i][0]).abs().max().item()
            assert d <= F32 * max(1.0, ones[i].abs().max().item()), (i, d)


def test_batch_larger_than_the_images_and_out_of_memory_line(tmp_path, monkeypatch):
    model, cfg = _demo_model()
    files = _images(str(tmp_path / "in"), n=3)
    assert _run_batches(model, files, cfg, str(tmp_path / "b64"), 64, overlap=True) == {"a2b": 3}
    assert _run_batches(model, files, cfg, str(tmp_path / "b64p"), 64, overlap=True, pad=True) == {"a2b": 3}
    small = _tree(str(tmp_path / "b64"))
    _run_batches(model, files, cfg, str(tmp_path / "b3"), 3, overlap=False)
    assert small == _tree(str(tmp_path / "b3"))  # 64 > 3 images: one call of the 3

    def oom(self, x, direction):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
    monkeypatch.setattr(type(model), "translate", oom)
    for overlap in (True, False):
        with pytest.raises(OptionError) as e:
            _run_batches(model, files, cfg, str(tmp_path / f"oom{overlap}"), 32, overlap=overlap)
        assert str(e.value).startswith("--batch=32: out of CPU memory translating 32 image(s) of 64 px") and \
            "lower --batch (e.g. --batch 16)" in str(e.value)
    with pytest.raises(OptionError, match="--batch 1 is already the least"):
        _run_batches(model, files, cfg, str(tmp_path / "oom1"), 1, overlap=True)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo data set and a demo checkpoint where the test phase looks for it."""
    from parity_tests.test_fast_paths import write_demo_test_run
    root = tmp_path_factory.mktemp("demo_run")
    write_demo_test_run(root)
    return root


def _said(capsys):
    """stderr's lines but the progress bar's."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and "img/s]" not in line]


FLAGS = ["--phase", "test", "--light", "True", "--dataset", "demo", "--img_size", "64", "--ch", "4", "--n_dis", "5"]


def test_cli_test_phase_bad_gpu_settings_exit_2(demo_run, monkeypatch, capsys):
    """One `error:` line naming the flag, exit 2: tf32 / CUDA graphs / cuDNN benchmark on a CPU,
    --device cuda without CUDA, the GPU flags in training, out of memory at a large --batch."""
    from torch_port.__main__ import main
    monkeypatch.chdir(demo_run)
    cases = [(["--device", "cpu", "--cuda_graphs", "True"], "--cuda_graphs"),
             (["--phase", "train", "--cudnn_benchmark", "False"], "--cudnn_benchmark applies to the test phase"),
             (["--phase", "train", "--batch", "16"], "--batch=16 applies to the test phase"),  # not --batch_size
             (["--phase", "train", "--input", "dataset"], "--input applies to the test phase")]
    if not CUDA:
        cases += [(["--device", "cpu", "--precision", "tf32"], "--precision=tf32"),
                  (["--device", "cpu", "--cudnn_benchmark", "True"], "--cudnn_benchmark"),
                  (["--device", "cuda"], "--device='cuda': CUDA is not available")]
    for extra, needle in cases:
        assert main(FLAGS + ["--result_dir", "bad"] + extra) == 2, extra
        err = _said(capsys)
        assert len(err) == 1 and "error:" in err[0] and needle in err[0], (extra, err)
    assert not os.path.exists(demo_run / "bad" / "index.html")
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        main(FLAGS + ["--cuda_graphs", "maybe"])
    assert e.value.code == 2 and "--cuda_graphs: expected auto, True or False, got 'maybe'" in capsys.readouterr().err

    from torch_port.model import UGATIT

    def oom(self, x, direction):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 48.00 GiB")
    monkeypatch.setattr(UGATIT, "translate", oom)
    assert main(FLAGS + ["--device", "cpu", "--result_dir", "oom", "--batch", "8"]) == 2
    err = _said(capsys)
    assert len(err) == 1 and "error: --batch=8: out of CPU memory" in err[0] and "lower --batch" in err[0], err
    assert not os.path.exists(demo_run / "oom" / "index.html")  # no page for a failed run


def test_cli_batch_larger_than_images_equals_one_image_path(demo_run, monkeypatch):
    """--batch 64 with 3 images per domain: the 6 pictures of the one-image fp32 path, each within
    one 8-bit level (float32 rounding can cross a quantisation step), and the same page rows."""
    import cv2
    from torch_port.__main__ import main
    monkeypatch.chdir(demo_run)
    assert main(FLAGS + ["--device", "cpu", "--result_dir", "one"]) == 0
    assert main(FLAGS + ["--device", "cpu", "--result_dir", "b64", "--batch", "64"]) == 0
    one, b64 = _tree(str(demo_run / "one")), _tree(str(demo_run / "b64"))
    assert set(one) == set(b64) and len(one) == 7
    page = next(k for k in one if k.endswith("index.html"))
    assert one[page] == b64[page]
    for k in one:
        if k.endswith(".png"):
            a = cv2.imdecode(np.frombuffer(one[k], np.uint8), cv2.IMREAD_COLOR).astype(int)
            b = cv2.imdecode(np.frombuffer(b64[k], np.uint8), cv2.IMREAD_COLOR).astype(int)
            assert np.abs(a - b).max() <= 1, k


# -- on CUDA (bench/gpu_check_infer.sh) ----------------------------------------------------------------

@pytest.fixture
def _true_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_cuda_graph_replay_equals_eager(precision, _true_float32):
    """The replayed graph returns the eager call's outputs bit for bit (the same kernels), for new
    inputs each call and two batch sizes; a Morph generator's w too."""
    from morph.networks import MorphGenerator
    torch.manual_seed(0)
    g = Generator(ch=4, n_res=4, img_size=64, light=True).cuda().eval()
    eager = optimize(g, precision, cudnn_benchmark=False)
    graphed = optimize(g, precision, cuda_graphs=True, cudnn_benchmark=False)
    outs, refs = [], []
    for b in (1, 3, 1, 3):
        x = torch.rand(b, 3, 64, 64, device="cuda") * 2 - 1
        outs.append(graphed(x))
        refs.append(eager(x))
    for i, (out, ref) in enumerate(zip(outs, refs)):  # compared after all calls: a returned output is a copy
        assert all(torch.equal(a, r) for a, r in zip(out, ref)), (precision, i)
    assert graphed.static.graphs == 2 and not graphed.static.notes
    m = MorphGenerator(ch=4, n_res=4, img_size=64).cuda().eval()
    eager = optimize(m, precision, cudnn_benchmark=False)
    graphed = optimize(m, precision, cuda_graphs=True, cudnn_benchmark=False)
    x = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
    for direction in ("a2b", "b2a"):
        with torch.no_grad():
            w = m.w_from_z(m.make_z(direction, 2))
        assert torch.equal(graphed(x, w=w)[0], eager(x, w=w)[0])
    # a spectral-norm discriminator: its `u` advances once per call, graphed or not (the capture's
    # warm-up calls leave it as it was), so the outputs and `u` follow the eager module's call after call
    from torch_port.networks import Discriminator
    d = Discriminator(ch=4, n_dis=5, sn=True).cuda().eval()
    d2 = copy.deepcopy(d)
    eager, graphed = optimize(d, precision, cudnn_benchmark=False), optimize(d2, precision, cuda_graphs=True,
                                                                             cudnn_benchmark=False)
    for _ in range(3):
        x = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
        a, b = eager(x), graphed(x)
        assert all(torch.equal(p, q) for p, q in zip(a[0] + a[1], b[0] + b[1])), precision
    assert graphed.static.graphs == 1
    assert all(torch.equal(u, v) for u, v in zip(d.buffers(), d2.buffers()))


@pytest.mark.cuda
@cuda_only
def test_cuda_compiled_graphs_equal_compiled_eager(_true_float32):
    """bf16 + compile replayed as a CUDA graph: the compiled call's outputs bit for bit; one graph,
    no break, no recompile."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    g = Generator(ch=4, n_res=4, img_size=64, light=True).cuda().eval()
    fast = optimize(g, "bf16", compile=True, cuda_graphs=True)
    x = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
    graphed = fast(x)
    fast.use_graphs = False
    plain = fast(x)
    fast.use_graphs = True
    assert all(torch.equal(a, b) for a, b in zip(graphed, plain))
    st = fast.compile_stats()
    assert st["graph_breaks"] == {} and st["graphs_after_first_call"] == 0 and fast.static.graphs == 1, st


@pytest.mark.cuda
@cuda_only
def test_cuda_graph_capture_failure_is_said_and_runs_eagerly():
    def syncs(x):
        return x * float(x.sum().item())  # a host synchronisation cannot be captured
    notes = []
    static = StaticForward(syncs, capture=True, log=notes.append, name="syncs")
    x = torch.rand(4, device="cuda")
    assert torch.equal(static(x), syncs(x)) and static.graphs == 0
    assert len(notes) == 1 and notes[0].startswith("warning: CUDA graph capture of syncs failed") and \
        "runs without CUDA graphs" in notes[0]
    y = torch.rand(4, device="cuda")
    assert torch.equal(static(y), syncs(y)) and len(notes) == 1
    # the failed capture left the process able to capture again (torch <= 2.11 left the caching
    # allocator routing to the failed graph's pool: empty_cache and every later capture then stopped
    # on an internal assertion, and the graphed tests after this one ran eagerly unnoticed)
    torch.cuda.empty_cache()
    again = StaticForward(lambda t: t * 2 + 1, capture=True, log=notes.append, name="after")
    z = torch.rand(4, device="cuda")
    assert torch.equal(again(z), z * 2 + 1) and again.graphs == 1 and len(notes) == 1, notes


@pytest.mark.cuda
@cuda_only
def test_cuda_tf32_within_fp16_budget_and_fp32_forces_float32(_true_float32):
    """tf32 on the golden: its image within fp16's budget of the float32 port (TF32 rounds the
    convolution inputs to fp16's 10-bit significand, sums stay float32) and measurably different
    (TF32 really ran); fp32 stays float32 even when the process has TF32 on (the call turns it off)."""
    cfg, state = weights_convert.tf_to_torch(os.path.join(GOLDEN, "final"), overrides={"img_size": 64}, quiet=True)
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    g = model.generator_B.cuda().eval()
    x = torch.from_numpy(np.load(os.path.join(GOLDEN, "test_input.npy")).transpose(0, 3, 1, 2).copy()).cuda()
    with torch.no_grad():
        ref = g(x)
    e = image_error_levels(optimize(g, "tf32")(x)[0], ref[0])
    assert 0 < e["mean"] <= BUDGETS["fp16"][0] and e["max"] <= BUDGETS["fp16"][1], e
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    out = optimize(g, "fp32")(x)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert torch.backends.cudnn.allow_tf32  # the process's setting is back


@pytest.mark.cuda
@cuda_only
def test_cuda_out_of_memory_names_batch(tmp_path):
    """A real CUDA out-of-memory error inside the batched test phase becomes the --batch line."""
    model, cfg = _demo_model()
    model = model.cuda()
    files = _images(str(tmp_path / "in"), n=2)

    class Huge(torch.nn.Module):
        def translate(self, x, direction):
            return torch.empty(1 << 50, device="cuda")  # a pebibyte
    with pytest.raises(OptionError, match=r"--batch=2: out of CUDA memory .* lower --batch \(e\.g\. --batch 1\)"):
        _run_batches(Huge(), files, cfg, str(tmp_path / "oom"), 2, overlap=True, device="cuda")


@pytest.mark.cuda
@cuda_only
def test_cuda_cli_test_phase_graphs_and_batches(demo_run, monkeypatch):
    """The test phase on CUDA: fp32 batched (pinned reader, events, writers; CUDA graphs by default)
    within one 8-bit level of the CPU one-image path and byte for byte the run without graphs; bf16
    + CUDA graphs within the bf16 budget (+1 level of quantisation)."""
    import cv2
    from torch_port.__main__ import main
    monkeypatch.chdir(demo_run)
    assert main(FLAGS + ["--device", "cpu", "--result_dir", "cpu"]) == 0
    assert main(FLAGS + ["--device", "cuda", "--result_dir", "c32", "--batch", "2"]) == 0
    assert main(FLAGS + ["--device", "cuda", "--result_dir", "c32eager", "--batch", "2", "--cuda_graphs", "False"]) == 0
    assert main(FLAGS + ["--device", "cuda", "--result_dir", "cbf", "--batch", "2", "--precision", "bf16",
                         "--cuda_graphs", "True"]) == 0
    ref, c32, c32e, cbf = (_tree(str(demo_run / d)) for d in ("cpu", "c32", "c32eager", "cbf"))
    assert set(ref) == set(c32) == set(cbf) == set(c32e) and len(ref) == 7
    # graphs pad the last batch (3 images, batch 2) and replay; eager runs 2 + 1: the per-sample
    # results are the same kernels' only where the batch sizes agree, so compare the first batch
    first = sorted(k for k in ref if k.endswith(".png"))[:2]
    assert all(c32[k] == c32e[k] for k in first)
    for k in ref:
        if k.endswith(".png"):
            a, b, c = (cv2.imdecode(np.frombuffer(t[k], np.uint8), cv2.IMREAD_COLOR).astype(int)
                       for t in (ref, c32, cbf))
            assert np.abs(a - b).max() <= 1, k
            d = np.abs(a - c)
            assert d.mean() <= BUDGETS["bf16"][0] + 0.5 and d.max() <= BUDGETS["bf16"][1] + 1, k



@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu(tmp_path):
    """bench/bench_fast.py's CUDA matrix (bench/infer_matrix.py) as a CPU smoke run (--matrix, tiny
    model): every section it reaches runs and writes its JSON, the CUDA-only variants are skipped
    with a reason, the targets table is printed. (The GPU run is scarce: a crash there costs it.)"""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "m.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    p = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_fast.py"), "--device", "cpu", "--matrix",
                        "--img_size", "32", "--ch", "2", "--iters", "2", "--batches", "1,16",
                        "--sections", "light,fidelity,profile,e2e,morph,full", "--e2e_images", "6", "--e2e_batch", "4",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(out.read_text())
    s = data["sections"]
    assert data["errors"] == {}, data["errors"]
    assert s["light"]["fp32@1"]["img_per_s"] > 0 and s["light"]["fp32@16"]["calls"] == 2
    assert "CUDA graphs need a CUDA device" in s["light"]["bf16+graphs"]["skipped"]
    assert "tf32" in s["light"]["tf32"]["skipped"]
    assert s["e2e"]["fp32 serial"]["images"] == s["e2e"]["bf16"]["images"] == 6
    assert s["morph_interpolate"]["fp32"]["inputs"] == 4 and s["full"]["fp32@16"]["img_per_s"] > 0
    assert s["fidelity"]["bf16"]["rms_vs_fp32"] > 10  # bf16 rounding far above float32's
    assert "| light generator: fp32 batch 16 no slower per image than batch 1 |" in p.stdout


def test_gpu_flags_share_training_cuda_graphs_flag():
    """--cuda_graphs is training's flag too (torch_port.train registers it for --phase train): where
    the parser has it, it is not added twice, and its values mean the same here."""
    import argparse
    from torch_port.infer_flags import add_gpu_inference_flags, tristate
    p = argparse.ArgumentParser()
    p.add_argument("--cuda_graphs", default="auto", choices=("auto", "True", "False"))  # as training spells it
    add_gpu_inference_flags(p)
    a = p.parse_args(["--cuda_graphs", "True", "--cudnn_benchmark", "False"])
    assert (tristate(a.cuda_graphs), tristate(a.cudnn_benchmark)) == (True, False)
    assert tristate(p.parse_args([]).cuda_graphs) is None and tristate(p.parse_args([]).cudnn_benchmark) is None
    q = argparse.ArgumentParser()
    add_gpu_inference_flags(q)
    assert tristate(q.parse_args(["--cuda_graphs", "false"]).cuda_graphs) is False


def test_cuda_settings_of_each_precision(monkeypatch):
    """On CUDA each call runs with TF32 on for tf32 only and cuDNN's benchmark mode off for fp32
    (the exact path) and on for tf32 / bf16 / fp16 by default (README "Translating on a GPU"), and
    the process's own settings come back after the call. Without a GPU: the module is told it is
    on CUDA and its forward records the flags (the flags are host settings)."""
    import torch_port.fast as fast_mod
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    assert {p: fast_mod.default_cudnn_benchmark(p) for p in ("fp32", "tf32", "bf16", "fp16")} == \
        {"fp32": False, "tf32": True, "bf16": True, "fp16": True}
    monkeypatch.setattr(fast_mod, "check_supported", lambda precision, device: None)  # tf32 on this CPU
    g = Generator(ch=2, n_res=4, img_size=32, light=True).eval()
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    try:
        for precision, inside in (("fp32", (False, False, False)), ("tf32", (True, True, True)),
                                  ("bf16", (False, False, True))):
            fast = optimize(g, precision)
            fast._on_cuda, fast.cudnn_benchmark = True, fast_mod.default_cudnn_benchmark(precision)
            seen = []
            object.__setattr__(fast, "_fn", lambda *a: seen.append((cudnn.allow_tf32, matmul.allow_tf32,
                                                                    cudnn.benchmark)))
            cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, True, False
            fast(torch.zeros(1, 3, 32, 32))
            assert seen == [inside], (precision, seen)
            assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (True, True, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


_SMALL = ["--img_size", "32", "--ch", "2", "--n_dis", "4", "--skip_tf", "--device", "cpu"]  # if a bad flag got through


@pytest.mark.parametrize("script,args", [("bench_onnx.py", ["--iters", "0"]), ("bench_onnx.py", ["--batch", "0"]),
                                         ("bench_onnx.py", ["--img_size", "30", "--ch", "4"]),
                                         ("bench_convert.py", ["--out", "/nonexistent-folder/r.json"]),
                                         ("bench_train.py", ["--img_size", "30"]), ("bench_train.py", ["--ch", "0"]),
                                         ("bench_fast.py", ["--img_size", "30"]),
                                         *[("bench_fast.py", bad + _SMALL + ["--light", "True"])
                                           for bad in (["--iters", "-1"], ["--iters", "0"], ["--modes", "bogus"],
                                                       ["--threads", "0"], ["--modes", "tf32"])],
                                         *[("bench_train.py", bad + _SMALL + ["--modes", "fp32"])
                                           for bad in (["--iters", "-1"], ["--warmup", "-1"], ["--pipelined", "-1"])],
                                         ("train_drift.py", ["--device", "foo"]),
                                         ("train_drift.py", ["--device", "cuda:99"])])
def test_benchmark_bad_flags_are_one_error_line(script, args):
    """A benchmark's bad flag is one `error:` line, exit 2, before any work (bench_onnx.py: a
    traceback - statistics of no rounds, a dead worker, OptionError; bench_convert.py --out: a
    traceback after the whole 8 GB conversion; bench_train.py: OptionError's traceback;
    bench_fast.py: its TF worker's error, then the parent's traceback; bench_fast.py --iters -1 /
    bench_train.py --iters -1 or --warmup -1: statistics of no rounds; bench_fast.py --modes
    bogus: its worker's traceback, then the parent's; bench_fast.py --iters 0 / --threads 0: the
    default, silently; train_drift.py --device: OptionError's traceback)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(root, "bench", script)] + args, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=root))
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("error:") == 1, p.stderr[-2000:]
    assert args[0] in p.stderr and not p.stdout.strip(), p.stdout


def test_bench_convert_owns_its_work_folder(tmp_path):
    """bench_convert.py worked in a fixed shared folder (/tmp/bench_convert) that it rebuilt and
    removed whole: a second run at once deleted the first's 8 GB checkpoint under it, and any other
    file there went too. Now one run owns the folder (ugatit_common.run_lock): a run into a
    folder another run holds stops at once - one `error:` line naming --work and the holder,
    exit 2 - and leaves every file of that folder as it was."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tmp_path / "work"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "other-runs-file").write_text("mine")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ugatit_common import run_lock\n"
                               "run_lock.acquire(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(120)",
                               str(work)], cwd=root, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=root))
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
        p = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_convert.py"), "--work", str(work)],
                           capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=root))
        assert p.returncode == 2 and p.stderr.count("error:") == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert "--work folder" in p.stderr and f"pid {holder.pid}" in p.stderr, p.stderr
        assert sorted(str(q.relative_to(work)) for q in work.rglob("*")) == before
        assert (work / "checkpoint" / "other-runs-file").read_text() == "mine"
    finally:
        holder.kill()


@pytest.mark.parametrize("theirs", ["checkpoint/my_run/UGATIT.model-5.index", "manifest.json", "logs/make.log",
                                    "out/weights_convert.safetensors"])
def test_bench_convert_never_takes_files_it_did_not_leave(tmp_path, theirs):
    """bench_convert.py worked under fixed names in its --work folder (checkpoint/, out/, logs/,
    manifest.json) and, unless an earlier --keep run's manifest was there, removed checkpoint/
    whole at its end - also when it failed or was stopped (Ctrl-C): `--work` at a folder holding
    the user's own checkpoint/ folder deleted it, and the user's logs/ and out/ files were written
    over. Now a name it works under that holds what it did not leave there is refused before any
    work (one `error:` line naming --work and the name, exit 2), and everything stays as it was.
    (A TensorFlow that cannot be imported makes the old script's first phase fail at once, and its
    clean-up run.)"""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    no_tf = tmp_path / "no_tf"
    (no_tf / "tensorflow").mkdir(parents=True)
    (no_tf / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow in this test')\n")
    work = tmp_path / "work"
    (work / theirs).parent.mkdir(parents=True, exist_ok=True)
    (work / theirs).write_text('{"mine": true}')
    (work / "notes.txt").write_text("mine")
    before = {str(q.relative_to(work)): q.read_bytes() if q.is_file() else None for q in work.rglob("*")}
    p = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_convert.py"), "--work", str(work)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(no_tf), root])))
    assert p.returncode == 2 and p.stderr.count("error:") == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "--work" in p.stderr and repr(theirs.split("/")[0]) in p.stderr, p.stderr
    assert {str(q.relative_to(work)): q.read_bytes() if q.is_file() else None for q in work.rglob("*")} == before


def _gpu_check(script, out, **env):
    """bench/<script> OUT_DIR on this machine (no CUDA: gpu_check.sh stops after its device step;
    INFER_BUDGET_S=5 skips every step of gpu_check_infer.sh)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(["bash", os.path.join(root, "bench", script), str(out)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PY=sys.executable, INFER_BUDGET_S="5", **env))


def _files(folder):
    return {str(q.relative_to(folder)): q.read_bytes() for q in folder.rglob("*") if q.is_file()}


@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("flock"), reason="needs bash and flock")
@pytest.mark.parametrize("script,theirs", [("gpu_check.sh", "summary.txt"), ("gpu_check.sh", "results.json"),
                                           ("gpu_check.sh", "infer.json"),
                                           ("gpu_check_infer.sh", "infer.json"),
                                           ("gpu_check_infer.sh", "infer_tests.log")])
def test_gpu_check_never_writes_over_an_out_dir_s_files(tmp_path, script, theirs):
    """bench/gpu_check.sh truncated OUT_DIR/summary.txt, appended to its logs and replaced its
    results.json with this run's alone (an earlier call's results into the same OUT_DIR, or the
    user's files by those names, were lost or mixed with this run's); gpu_check_infer.sh truncated
    its logs and, when its benchmark wrote nothing, reported an earlier run's infer.json as this
    run's. Now a file by one of the names they write is refused before any step: one `error:`
    line naming OUT_DIR and the file, exit 2, every file as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / theirs).write_text('{"an earlier run": true}\n')
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    p = _gpu_check(script, out)
    assert p.returncode == 2 and p.stderr.count("error:") == 1 and "OUT_DIR" in p.stderr and theirs in p.stderr, \
        (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert _files(out) == before


@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("flock"), reason="needs bash and flock")
@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_check_infer.sh"])
def test_gpu_check_one_run_per_out_dir(tmp_path, script):
    """Two gpu_check runs into one OUT_DIR at once appended to the same logs and replaced each
    other's summary and JSON: a run into an OUT_DIR another run holds (flock on the folder) is now
    refused - one `error:` line, exit 2, nothing written - while gpu_check_infer.sh called by
    gpu_check.sh (the lock's descriptor inherited) runs in its caller's OUT_DIR; a file where the
    folder goes is one error line too."""
    import subprocess
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["bash", "-c", 'exec 9<"$1"; flock -n 9 && echo held && exec sleep 60', "-", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        p = _gpu_check(script, out)
        assert p.returncode == 2 and p.stderr.count("error:") == 1 and "another" in p.stderr, p.stderr[-2000:]
        assert not list(out.iterdir())
    finally:
        holder.kill()
        holder.wait()
    if script == "gpu_check_infer.sh":  # its caller's lock, inherited as fd 9, is its own
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        import sys
        p = subprocess.run(["bash", "-c", 'exec 9<"$1"; flock -n 9 && bash "$2" "$1"', "-", str(out),
                            os.path.join(root, "bench", script)], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PY=sys.executable, INFER_BUDGET_S="5"))
        assert p.returncode == 1 and "error:" not in p.stderr and (out / "infer.json").is_file(), p.stderr[-2000:]
    (tmp_path / "a_file").write_text("mine")
    p = _gpu_check(script, tmp_path / "a_file")
    assert p.returncode == 2 and p.stderr.count("error:") == 1 and "not a folder" in p.stderr, p.stderr[-2000:]
    assert (tmp_path / "a_file").read_text() == "mine"


_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


@pytest.mark.parametrize("script,args", [
    ("bench_train.py", ["--img_size", "32", "--ch", "2", "--n_dis", "4", "--iters", "1", "--warmup", "0", "--skip_tf",
                        "--modes", "fp32", "--device", "cpu", "--json"]),
    ("bench_fast.py", ["--img_size", "32", "--ch", "2", "--n_dis", "4", "--iters", "1", "--skip_tf", "--modes",
                       "fp32", "--light", "True", "--device", "cpu", "--json"]),
    ("train_drift.py", ["--device", "cpu", "--skip_compile", "--json"]),
    ("bench_convert.py", ["--out"])])
@pytest.mark.parametrize("where", ["a folder", "a photo", "a missing folder", "a user's JSON"])
def test_benchmark_results_file_is_checked_before_the_work(tmp_path, script, args, where):
    """A benchmark's results file (--json, bench_convert's --out) was opened only after the
    measurements: a folder there, or a missing folder, ended minutes of work in a traceback with
    the results unwritten, and an existing file of another kind (a photo) was written over. Now
    it is checked before any work: one `error:` line naming the flag, exit 2, the photo as it was."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = {"a folder": tmp_path / "results", "a photo": tmp_path / "photo.json",
              "a missing folder": tmp_path / "missing" / "r.json", "a user's JSON": tmp_path / "ugatit-run.json"}[where]
    if where == "a folder":
        target.mkdir()
    elif where == "a photo":
        target.write_bytes(_PNG)
    elif where == "a user's JSON":  # e.g. a run record: JSON, but no benchmark's results
        target.write_bytes(_USER_JSON)
    path = root
    if script == "bench_convert.py":  # its own work folder; without TensorFlow its first phase fails at once
        args = ["--work", str(tmp_path / "work")] + args
        (tmp_path / "no_tf" / "tensorflow").mkdir(parents=True)
        (tmp_path / "no_tf" / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow here')\n")
        path = os.pathsep.join([str(tmp_path / "no_tf"), root])
    before = sorted(str(q) for q in tmp_path.rglob("*"))
    p = subprocess.run([sys.executable, os.path.join(root, "bench", script)] + args + [str(target)],
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=path))
    assert p.returncode == 2 and p.stderr.count("error:") == 1 and "Traceback" not in p.stderr, \
        (p.returncode, p.stderr[-2000:])
    assert args[-1] in p.stderr and repr(str(target)) in p.stderr, p.stderr
    assert sorted(str(q) for q in tmp_path.rglob("*")) == before
    if where == "a photo":
        assert target.read_bytes() == _PNG
    if where == "a user's JSON":
        assert target.read_bytes() == _USER_JSON


_USER_JSON = b'{"written_by": "python -m torch_port", "img_size": 256, "options": {}}\n'


def test_benchmark_replaces_its_own_results_only(tmp_path):
    """write_json stamps what it writes (a list wrapped), and check_json_out lets a next run
    replace that file, or an empty one, and no other JSON."""
    import json
    import sys
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    sys.path.insert(0, bench)
    try:
        from workers import check_json_out, write_json
    finally:
        sys.path.remove(bench)
    mine, listed, empty, user = (tmp_path / n for n in ("a.json", "b.json", "c.json", "d.json"))
    write_json(str(mine), {"rows": [1]})
    write_json(str(listed), [{"mode": "fp32"}])
    empty.write_bytes(b"")
    user.write_bytes(_USER_JSON)
    assert json.loads(listed.read_text())["results"] == [{"mode": "fp32"}]
    assert [check_json_out(str(p)) for p in (mine, listed, empty)] == [None, None, None]
    assert "not a benchmark's results file" in check_json_out(str(user))


def test_benchmark_results_file_is_never_half_written(tmp_path):
    """bench_train.py (CUDA: after each group) and train_drift.py (after each part) rewrote their
    --json file in place, and bench_fast.py's matrix through a fixed `<file>.tmp`: a run stopped
    mid-write (a gpu_check step's timeout, Ctrl-C) left half a file where the earlier results were,
    or a `.tmp` file forever. Now the JSON is made first and renamed onto the file: the earlier
    results stay whole and nothing else is left."""
    import importlib
    import sys
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    sys.path.insert(0, bench)
    try:
        bench_train = importlib.import_module("bench_train")
        infer_matrix = importlib.import_module("infer_matrix")
    finally:
        sys.path.remove(bench)

    class Stop:  # json's default=str reaches it half way through the file
        def __str__(self):
            raise KeyboardInterrupt

    path = tmp_path / "r.json"
    bench_train._write_json(str(path), {"img_size": 32}, "cuda", [{"mode": "fp32", "s": 1.0}], None)
    earlier = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        bench_train._write_json(str(path), {"img_size": 32}, "cuda", [{"mode": "fp32", "s": 1.0}] * 500
                                + [{"mode": "bf16", "s": Stop()}], None)
    assert path.read_bytes() == earlier and sorted(q.name for q in tmp_path.iterdir()) == ["r.json"]
    res = infer_matrix.Results(str(path), {"gpu": "cpu"})
    res.put("light", "fp32@1", {"ms": 1.0})
    earlier = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        res.put("light", "bf16@1", {"ms": Stop()})
    assert path.read_bytes() == earlier and sorted(q.name for q in tmp_path.iterdir()) == ["r.json"]


def test_overlapped_batches_stopped_list_every_picture_they_wrote(tmp_path, monkeypatch):
    """The overlapped batched test phase hands a batch's pictures to writer threads and adds them
    to the page as the writes finish; a stop meanwhile (the next batch's translation NaN, an
    error, Ctrl-C) waited for the writes in flight, but the pictures they wrote were left out of
    the page the stopped run leaves (README "Outputs": a stopped run's page lists the pictures it
    wrote). Now every picture written before the stop is on the page, and only those."""
    import time as _time
    import re as _re
    import torch_port.batch_translate as bt
    from torch_port.batch_translate import translate_batches
    from ugatit_common.finite import NonFiniteOutput
    model, cfg = _demo_model()
    files = _images(str(tmp_path / "in"), n=4)
    real_translate, calls = model.translate, [0]

    def translate(x, direction):
        calls[0] += 1
        y = real_translate(x, direction)
        return y * float("nan") if calls[0] == 2 else y  # the second batch overflows
    monkeypatch.setattr(model, "translate", translate)
    real_save = bt.save_image

    def slow_save(image, path):  # the first batch's writes still in flight when the second is checked
        _time.sleep(0.5)
        return real_save(image, path)
    monkeypatch.setattr(bt, "save_image", slow_save)
    out = tmp_path / "out"
    page = ResultsPage(str(out), cfg["img_size"])
    with pytest.raises(NonFiniteOutput):
        try:
            translate_batches(model, files, "a2b", cfg, torch.device("cpu"), str(out), page, {}, OutputNames(files),
                              2, progress=False, overlap=True)
        except BaseException:
            page.stopped()  # as torch_port.translate.test does
            raise
    written = sorted(os.listdir(out / "a2b"))
    assert written == ["img_0.png", "img_1.png"]
    listed = sorted(os.path.basename(p) for p in _re.findall(r"src='(a2b/[^']+)'", (out / "index.html").read_text()))
    assert listed == written


def test_bench_convert_stopped_by_sigterm_cleans_up_and_stops_its_child(tmp_path):
    """`timeout`, `kill` and a job scheduler stop a run with SIGTERM: bench_convert.py then died
    at once, its clean-up never ran, and its --work folder kept out/, logs/ and the half-written
    checkpoint (6.4 GB seen), which the next run refused as files "this script did not leave";
    the child writing the checkpoint went on alone. Now SIGTERM runs the clean-up as Ctrl-C
    does: the child is stopped and the folder the run made is gone. (A TensorFlow import that
    hangs stands for the child's minutes of work.)"""
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    slow_tf = tmp_path / "slow_tf"
    (slow_tf / "tensorflow").mkdir(parents=True)
    child_pid = tmp_path / "child.pid"
    (slow_tf / "tensorflow" / "__init__.py").write_text(
        f"import os, time\nopen({str(child_pid)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    work = tmp_path / "work"
    p = subprocess.Popen([sys.executable, os.path.join(root, "bench", "bench_convert.py"), "--work", str(work)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(slow_tf), root])))
    try:
        deadline = time.time() + 60
        while not (child_pid.is_file() and child_pid.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        assert child_pid.is_file(), "the make phase never started"
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
        pid = int(child_pid.read_text())
        for _ in range(50):  # the child is stopped too
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the make phase's child outlived its stopped parent")
        assert p.returncode != 0 and not work.exists(), sorted(str(q) for q in work.rglob("*"))
    finally:
        p.kill()


def test_the_apis_compile_names_a_cache_folder_it_cannot_write_before_compiling(tmp_path, monkeypatch):
    """README "Python API" `optimize(g, compile=True)` and the trainers' compile_model check
    inductor's cache folder as the commands do: TORCHINDUCTOR_CACHE_DIR naming a file (a folder
    this user cannot write, alike; a file fails even for root) is one OptionError naming it and
    the way out, at once - not an InductorError from the first call's compile."""
    from torch_port import optimize
    from torch_port.networks import Generator
    from torch_port.train_compile import compile_model
    from ugatit_common.options import OptionError
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"mine\n")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker))
    g = Generator(ch=2, n_res=4, img_size=16, light=True).eval()
    for call in (lambda: optimize(g, compile=True), lambda: compile_model(build_ugatit(dict(light=True, img_size=16, ch=2, n_res=4, n_dis=4, sn=True, smoothing=True)))):
        with pytest.raises(OptionError, match=r"torch.compile's cache folder .*not-a-folder.*TORCHINDUCTOR_CACHE_DIR"):
            call()
    assert blocker.read_bytes() == b"mine\n"


def test_the_cache_check_picks_the_capabilitys_own_folder_first(tmp_path, monkeypatch):
    """check_inductor_cache (before each compile) first gives an ATEN_CPU_CAPABILITY run its own
    cache folder (separate_inductor_cache: native kernels crash an avx2 process), then checks that
    folder - not the shared default, which would be used and checked instead."""
    import torch._inductor.runtime.cache_dir_utils as cache_dir_utils

    from torch_port.fast import check_inductor_cache
    monkeypatch.setattr(cache_dir_utils, "default_cache_dir", lambda: str(tmp_path / "torchinductor_me"))
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    check_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor_me_avx2")
    assert os.path.isdir(tmp_path / "torchinductor_me_avx2") and not os.path.exists(tmp_path / "torchinductor_me")
