"""The training fast path for GPUs, proven on CPU (issue 17): the multi-tensor TF1 Adam equals the
per-parameter one (and the main branch's) bit for bit; a step reads nothing back to the host;
the loop fetches loss values later and still logs, records and stops exactly as before; fp16's
skip decision made on the device equals the host rule; the static-buffer steps that
`torch_port.train_graphs` captures in CUDA graphs, run eagerly here, equal today's steps bit for
bit (port and Morph C, lsgan and wgan-gp, fp32 and bf16) and resume bit for bit, and so do their
replays with a CUDA graph's semantics emulated (the step's tensor operations recorded once,
replayed without its Python). The CUDA-only
tests at the end (marker `cuda`) run where a GPU is (bench/gpu_check.sh)."""
from __future__ import annotations

import contextlib
import copy
import math
import os

import pytest
import torch

from torch_port.optim import TF1Adam, clip_0_1


# -- the main branch's TF1 Adam step, frozen here as the reference ----------------------------------

class _MainBranchTF1Adam:
    """torch_port.optim.TF1Adam.step as it was before issue 17 (a fresh float32 lr tensor per
    step, powers reassigned, one pass per parameter into two scratch buffers): the reference the
    new implementations must equal bit for bit."""

    def __init__(self, named, lr, beta1=0.5, beta2=0.999, eps=1e-8, constraints=None):
        def f32(x):
            return torch.tensor(x, dtype=torch.float32)
        self.named_params, self.constraints, self.lr = list(named), dict(constraints or {}), float(lr)
        self._beta1_t, self._beta2_t, self._eps_t, self._one = f32(beta1), f32(beta2), f32(eps), f32(1.0)
        self._beta1_power, self._beta2_power = self._beta1_t.clone(), self._beta2_t.clone()
        self.m = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.named_params}
        self.v = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.named_params}
        n = max(p.numel() for _, p in self.named_params)
        self._scratch = (torch.empty(n), torch.empty(n))

    @torch.no_grad()
    def step(self, lr=None):
        if lr is not None:
            self.lr = float(lr)
        one = self._one
        lr_t = torch.tensor(self.lr, dtype=torch.float32)
        alpha = lr_t * torch.sqrt(one - self._beta2_power) / (one - self._beta1_power)
        one_minus_b1, one_minus_b2 = one - self._beta1_t, one - self._beta2_t
        for name, p in self.named_params:
            g = p.grad
            if g is None:
                continue
            m, v = self.m[name], self.v[name]
            t1 = self._scratch[0][: p.numel()].view_as(p)
            t2 = self._scratch[1][: p.numel()].view_as(p)
            torch.sub(g, m, out=t1).mul_(one_minus_b1)
            m.add_(t1)
            torch.mul(g, g, out=t1).sub_(v).mul_(one_minus_b2)
            v.add_(t1)
            torch.sqrt(v, out=t1).add_(self._eps_t)
            torch.mul(m, alpha, out=t2).div_(t1)
            p.sub_(t2)
            constraint = self.constraints.get(name)
            if constraint is not None:
                p.copy_(constraint(p))
        self._beta1_power = self._beta1_power * self._beta1_t
        self._beta2_power = self._beta2_power * self._beta2_t


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern (so -0.0 != 0.0 and NaN == NaN of the same payload)."""
    return t.detach().contiguous().view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _adam_problem(dtype, seed):
    """Named parameters of mixed shapes (rho-like ones constrained to [0, 1], one that sometimes
    has no gradient) and a gradient generator: gradients spanning 1e-12..1e3, exact zeros, -0.0."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (7, 3, 3, 3), "a.bias": (7,), "b.rho": (5,), "c.weight": (4, 11), "d.rho": (3,),
              "e.gamma": (2, 1, 1), "never.weight": (6,)}
    named = []
    for name, shape in shapes.items():
        p = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        if name.endswith("rho"):
            p = p.abs().clamp(0, 1)
        named.append((name, torch.nn.Parameter(p)))
    constraints = {n: clip_0_1 for n, _ in named if n.endswith("rho")}

    def grads(step):
        out = {}
        for name, p in named:
            if name == "never.weight" or (name == "c.weight" and step % 3 == 1):
                out[name] = None  # no gradient: skipped, slots untouched
                continue
            mag = 10.0 ** torch.empty(p.shape, dtype=torch.float64).uniform_(-12, 3, generator=g)
            sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
            x = (mag * sign).to(dtype)
            x.view(-1)[0] = 0.0
            x.view(-1)[-1] = -0.0
            out[name] = x
        return out
    return named, constraints, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_and_loop_adam_equal_the_main_branch_bit_for_bit(dtype):
    """40 steps with learning-rate changes, rho constraints and a parameter with no gradient:
    the per-parameter and the multi-tensor TF1 Adam give the main branch's weights, slots and
    powers bit for bit in float32; state_dict round-trips into the other implementation. float64
    parameters changed on purpose (issue 18: float64 slots and TF's float64 ApplyAdam, proven
    against TF in parity_tests/test_free_run.py): there both implementations give the same bits,
    and the main branch's rule (float32 slots) is shown to differ."""
    named, constraints, grads = _adam_problem(dtype, seed=11)
    copies = {k: [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named] for k in ("main", "loop", "foreach")}
    opts = {"main": _MainBranchTF1Adam(copies["main"], 2e-4, constraints=constraints),
            "loop": TF1Adam(copies["loop"], 2e-4, constraints=constraints, foreach=False),
            "foreach": TF1Adam(copies["foreach"], 2e-4, constraints=constraints, foreach=True)}
    for step in range(40):
        lr = 2e-4 if step < 20 else 2e-4 * (40 - step) / 20  # the official linear decay's shape
        gs = grads(step)
        for key, opt in opts.items():
            for n, p in copies[key]:
                p.grad = None if gs[n] is None else gs[n].clone()
            opt.step(lr)
        if step == 25:  # an outlier rho leaves [0, 1] and is clipped back
            for key in opts:
                dict(copies[key])["b.rho"].data[0] = 1.7
    ref_key = "main" if dtype == torch.float32 else "loop"
    ref = opts[ref_key]
    for key in ("loop", "foreach"):
        opt = opts[key]
        for (n, p), (_, q) in zip(copies[ref_key], copies[key]):
            assert _same_bits(p, q), (key, n)
            assert _same_bits(ref.m[n], opt.m[n]) and _same_bits(ref.v[n], opt.v[n]), (key, n)
        assert _same_bits(ref._beta1_power, opt.beta1_power) and _same_bits(ref._beta2_power, opt.beta2_power)
        assert all(opt.m[n].dtype == (torch.float32 if dtype == torch.float32 else torch.float64) for n in opt.m)
    if dtype == torch.float64:
        assert any(not _same_bits(p, q) for (_, p), (_, q) in zip(copies["main"], copies["loop"]))
    assert torch.all(opts["loop"].m["never.weight"] == 0)
    # the state of one implementation continues in the other
    state = opts["foreach"].state_dict()
    assert set(state) == {"lr", "beta1", "beta2", "eps", "beta1_power", "beta2_power", "m", "v"}
    assert state["lr"] == opts["main"].lr
    other = TF1Adam([(n, torch.nn.Parameter(p.detach().clone())) for n, p in copies["foreach"]], 1.0,
                    constraints=constraints, foreach=False)
    other.load_state_dict(state)
    gs = grads(99)
    for o, params in ((opts["foreach"], copies["foreach"]), (other, other.named_params)):
        for n, p in params:
            p.grad = None if gs[n] is None else gs[n].clone()
        o.step()
    for (n, p), (_, q) in zip(copies["foreach"], other.named_params):
        assert _same_bits(p, q), n


def test_adam_found_inf_skips_on_the_device_and_otherwise_equals_a_plain_step():
    """step(found_inf=...) (fp16 loss scaling decided on the device): a nonzero flag leaves
    weights, slots and powers as they were, bit for bit; a zero flag gives the plain step's bits."""
    named, constraints, grads = _adam_problem(torch.float32, seed=5)
    for foreach in (False, True):
        a = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
        b = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
        oa = TF1Adam(a, 1e-3, constraints=constraints, foreach=foreach)
        ob = TF1Adam(b, 1e-3, constraints=constraints, foreach=foreach)
        for step in range(6):
            gs = grads(step)
            for params in (a, b):
                for n, p in params:
                    p.grad = None if gs[n] is None else gs[n].clone()
            before = [p.detach().clone() for _, p in a], copy.deepcopy(oa.m), oa.beta1_power.clone()
            skip = step in (2, 3)
            oa.step(found_inf=torch.tensor([1.0 if skip else 0.0]))
            if skip:
                assert all(_same_bits(p, q) for (_, p), q in zip(a, before[0]))
                assert all(_same_bits(oa.m[n], before[1][n]) for n in oa.m)
                assert _same_bits(oa.beta1_power, before[2])
            else:
                ob.step()
                assert all(_same_bits(p, q) for (_, p), (_, q) in zip(a, b)), foreach
                assert all(_same_bits(oa.v[n], ob.v[n]) for n in oa.v)
                assert _same_bits(oa.beta2_power, ob.beta2_power)


def test_adam_lr_lives_on_the_device_and_changes_only_outside_a_step():
    """The learning rate is a float32 device tensor filled when it changes (the float32 rounding
    of torch.tensor(lr)); the powers are updated in place (a captured graph reads the same
    memory); a checkpoint keeps the Python float."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = TF1Adam([("p", p)], 1e-4)
    power = opt.beta1_power
    lr_t = opt._lr_t
    for lr in (1e-4, 3e-5, 0.1 / 3):
        p.grad = torch.ones(3)
        opt.step(lr)
        assert opt._lr_t is lr_t and torch.equal(lr_t, torch.tensor(lr, dtype=torch.float32))
        assert opt.state_dict()["lr"] == lr
    assert opt.beta1_power is power and float(power) == 0.5 ** 4
    opt.load_state_dict(opt.state_dict())
    assert opt.beta1_power is power and opt._lr_t is lr_t


# -- the loop: values fetched later, the same floats, weights and log as the main branch -------------

from parity_tests.test_morph import _one_thread  # noqa: E402,F401 - autouse: one CPU thread per test
from ugatit_common import options as opt  # noqa: E402
from ugatit_common.demo_data import make_demo_dataset  # noqa: E402

NET = dict(light=True, img_size=32, ch=2, n_dis=4, n_res=4, sn=True, smoothing=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("graphs_data"))
    make_demo_dataset(root, "demo", 32, n_train=4, n_test=1)
    return root


def _cfg(root, name, **kw):
    return opt.config_from(**{**dict(dataset="demo", epoch=1, iteration=4, print_freq=1000, save_freq=1000,
                                     decay_flag=False, augment_flag=False, lr=0.0002,
                                     checkpoint_dir=f"{root}/ck_{name}", result_dir=f"{root}/res",
                                     log_dir=f"{root}/logs_{name}", sample_dir=f"{root}/samples_{name}"),
                              **NET, **kw})


def _main_branch_run(cfg, seed, base):
    """The main branch's training loop in miniature: the same data, seeding and draws as
    `Trainer.run`, the steps returning Python floats (a host read per step) and the main
    branch's TF1 Adam (frozen above). The reference of the exact fp32 path."""
    import random

    import numpy as np

    from torch_port.model import build_ugatit
    from torch_port.train import gp_draws, load_dataset, resumable_loader
    ds_A, ds_B = load_dataset(cfg, "trainA", seed, base), load_dataset(cfg, "trainB", seed + 1, base)
    cfg = dict(cfg, seed=seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = build_ugatit(cfg)
    for key, named in (("G_optim", model.g_params()), ("D_optim", model.d_params())):
        setattr(model, key, _MainBranchTF1Adam(named, cfg["lr"], constraints={n: clip_0_1 for n, _ in named
                                                                              if n.endswith("rho")}))
    feed_A = resumable_loader(ds_A, cfg["batch_size"], seed)
    feed_B = resumable_loader(ds_B, cfg["batch_size"], seed + 1)
    history, past_g = [], -1.0
    for counter in range(1, cfg["iteration"] + 1):
        a, b = next(feed_A), next(feed_B)
        d = model.d_step(a, b, cfg["lr"], gp_draws(cfg, a, b, seed, counter))
        g = model.g_step(next(feed_A), next(feed_B), cfg["lr"])
        g.pop("fake_A"), g.pop("fake_B")
        past_g = g["Generator_loss"]
        history.append({"counter": counter, "d_loss": d["Discriminator_loss"], "g_loss": past_g, **d, **g})
    return history, model


@pytest.mark.parametrize("gan_type", ["lsgan", "wgan-gp"])
def test_exact_fp32_loop_equals_the_main_branch_bit_for_bit(data, tmp_path, gan_type):
    """The trainer's exact fp32 path (steps returning device tensors, values fetched later,
    the new TF1 Adam) against the main branch's loop: every logged float and every final
    weight and Adam slot bit for bit; the official line is printed for every iteration."""
    from torch_port.train import Trainer
    cfg = _cfg(str(tmp_path), "exact", gan_type=gan_type)
    lines = []
    out = Trainer(cfg, "cpu", seed=3, base=data, log=lines.append, cuda_graphs=False).run()
    ref_history, ref = _main_branch_run(cfg, 3, data)
    assert out["history"] == ref_history
    assert all(type(v) is float for r in out["history"] for k, v in r.items() if k != "counter")
    a, b = out["model"].state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(_same_bits(a[k], b[k]) for k in a)
    for key in ("G_optim", "D_optim"):
        mine, theirs = getattr(out["model"], key), getattr(ref, key)
        assert all(_same_bits(mine.m[n], theirs.m[n]) and _same_bits(mine.v[n], theirs.v[n]) for n in mine.m)
        assert _same_bits(mine.beta1_power, theirs._beta1_power)
    said = [l for l in lines if l.startswith("Epoch:")]
    assert len(said) == 4 and all(f"d_loss: {r['d_loss']:.8f}" in l for l, r in zip(said, ref_history)), said


def _trainer(family, cfg, data, device="cpu", **kw):
    from morph.train import MorphTrainer
    from torch_port.train import Trainer
    if family == "morph":
        return MorphTrainer(dict(cfg, morph_config="C"), device, seed=3, base=data, **kw)
    return Trainer(cfg, device, seed=3, base=data, **kw)


def _assert_same_run(a, b):
    assert a["history"] == b["history"]
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys() and all(_same_bits(sa[k], sb[k]) for k in sa)
    for key in ("G_optim", "D_optim"):
        oa, ob = getattr(a["model"], key), getattr(b["model"], key)
        assert all(_same_bits(oa.m[n], ob.m[n]) and _same_bits(oa.v[n], ob.v[n]) for n in oa.m)
        assert _same_bits(oa.beta2_power, ob.beta2_power)


@pytest.mark.parametrize("family,precision,gan_type", [
    ("port", "fp32", "lsgan"), pytest.param("port", "bf16", "lsgan", marks=pytest.mark.slow),
    pytest.param("port", "fp32", "wgan-gp", marks=pytest.mark.slow), ("port", "fp16", "lsgan"),
    pytest.param("morph", "fp32", "lsgan", marks=pytest.mark.slow), ("morph", "bf16", "wgan-gp")])
def test_static_buffer_steps_equal_todays_steps_bit_for_bit(data, tmp_path, family, precision, gan_type):
    """The steps `torch_port.train_graphs` captures on CUDA (inputs, gradient-penalty draws and
    Morph's direction codes in fixed tensors, the learning rate on the device, autocast without
    its cast cache, fp16's skip decision on the device), run eagerly here: 4 iterations give the
    same floats, weights and Adam state as today's steps, bit for bit. fp16 starts at GradScaler's
    2^16, so skipped steps are crossed."""
    runs = {}
    for graphs in ("False", "static"):
        lines = []
        cfg = _cfg(str(tmp_path), f"{family}_{graphs}", gan_type=gan_type)
        runs[graphs] = _trainer(family, cfg, data, precision=precision, cuda_graphs=graphs, log=lines.append).run()
        assert any("static-buffer steps run eagerly" in l for l in lines) == (graphs == "static"), lines
    _assert_same_run(runs["False"], runs["static"])
    if precision == "fp16":
        assert runs["static"]["model"].G_optim.loss_scaler.skipped > 0
        assert runs["static"]["model"].G_optim.loss_scaler.state_dict() == \
            runs["False"]["model"].G_optim.loss_scaler.state_dict()


def test_static_buffer_steps_resume_bit_for_bit(data, tmp_path):
    """Morph C (direction codes drawn on the host, served from fixed tensors) with wgan-gp:
    2N iterations == N + resume + N over the static-buffer steps, bit for bit."""
    cfgs = {name: _cfg(str(tmp_path), name, gan_type="wgan-gp", iteration=2) for name in ("whole", "split")}
    whole = _trainer("morph", dict(cfgs["whole"], epoch=2), data, cuda_graphs="static", log=lambda m: None).run()
    _trainer("morph", dict(cfgs["split"], epoch=1), data, cuda_graphs="static", log=lambda m: None).run()
    split = _trainer("morph", dict(cfgs["split"], epoch=2), data, cuda_graphs="static", log=lambda m: None).run()
    assert [r["counter"] for r in split["history"]] == [3, 4]
    assert split["history"] == whole["history"][2:]
    sa, sb = whole["model"].state_dict(), split["model"].state_dict()
    assert all(_same_bits(sa[k], sb[k]) for k in sa)


# -- a CUDA graph's semantics, emulated on a CPU ----------------------------------------------------------

class _Recording:
    """What a CUDA graph keeps of a step: the tensor operations one run of the step's Python
    issued (aten ops, recorded by make_fx over the real tensors: the run updates the model as a
    capture followed by its first replay does), replayed over the same tensors with no Python
    of the step running; the outputs written into the tensors the recording returned."""

    def __init__(self, module, outputs):
        self.module, self.outputs, self.replays = module, outputs, 0

    def replay(self):
        with torch.no_grad():  # the recording holds the backward's operations already
            new = self.module()
        for k, v in self.outputs.items():
            v.copy_(new[k])
        self.replays += 1


class _Emulation:
    """What `recorded_graphs` saw: the StaticSteps made, and the random draws found inside a
    recording."""

    def __init__(self):
        self.steps, self.draws = [], []

    @property
    def captured(self):
        return [s for s in self.steps if s.capture]


@pytest.fixture
def recorded_graphs(monkeypatch):
    """`StaticStep` with `capture=True` on a CPU: its warm-up calls run the step, the capture
    call records it (`_Recording`), every later call replays the recording. What the step's
    Python does in a call (a counter, a learning rate read, a tensor rebound) is frozen at the
    recording, as in a CUDA graph; only the values of the tensors it used move on. One thing
    differs: here the host is the device, so a random draw inside the step would be replayed,
    where a CUDA graph replays a host draw's first values (copied from the host once): every
    draw recorded (an op tagged nondeterministic_seeded; torch 2.11 cannot record one from a
    torch.Generator at all, and says so) is listed in `.draws`, for the test to refuse."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from torch_port import train_graphs
    seen_by = _Emulation()

    def capture(self, lr):
        seen = {}

        def body():
            seen.update(self._body(lr))
            return dict(seen)
        try:
            # one fake-tensor mode for the recorded ops' metadata: make_fx would make a new one per op
            # output (each takes a Python stack trace: ~2/3 of a recording's time), the graph the same
            with torch._guards.tracing(torch._guards.TracingContext(FakeTensorMode(allow_fallback_kernels=True))):
                module = make_fx(body, tracing_mode="real")()
        except NotImplementedError as e:  # torch <= 2.11 cannot record a draw from a torch.Generator
            seen_by.draws.append(f"{self.name}: not recordable ({e})")
            self.eager_only = True
            return None
        seen_by.draws += [f"{self.name}: {n.target}" for n in module.graph.nodes if n.op == "call_function"
                          and torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ())]
        outputs = {k: v.detach().clone() for k, v in seen.items()}
        self.graph, self.outputs = _Recording(module, outputs), outputs
        return dict(outputs)

    planned = train_graphs.plan

    def plan(setting, device, world_size):  # True: capture (emulated); the other settings as they are
        if train_graphs.parse_setting(setting) == "True":
            return "capture", " [*] CUDA graphs emulated: steps recorded and replayed"
        return planned(setting, device, world_size)

    original = train_graphs.StaticStep.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen_by.steps.append(self)
    monkeypatch.setattr(train_graphs.StaticStep, "__init__", init)
    monkeypatch.setattr(train_graphs.StaticStep, "_capture", capture)
    monkeypatch.setattr(train_graphs.StaticStep, "_eager", lambda self, lr: self._body(lr))  # no side stream
    monkeypatch.setattr(train_graphs, "plan", plan)
    return seen_by


def _decaying_cfg(root, name, gan_type):
    """3 epochs of 3 iterations, the learning rate decaying linearly from the first (lr, 2/3 lr,
    1/3 lr): each step is recorded at its 4th call (train_graphs.WARMUP_CALLS = 3; the first of
    epoch 2, after its change) and replayed for 5 calls, across the change at the 7th."""
    cfg = _cfg(root, name, gan_type=gan_type, epoch=3, iteration=3, decay_flag=True, decay_epoch=0)
    assert len({opt.learning_rate(cfg, e) for e in range(3)}) == 3
    return cfg


@pytest.mark.parametrize("family,precision,gan_type", [
    ("port", "fp16", "wgan-gp"), pytest.param("morph", "fp32", "dragan", marks=pytest.mark.slow),
    pytest.param("port", "bf16", "hinge", marks=pytest.mark.slow)])
def test_replayed_recordings_of_the_steps_equal_eager_bit_for_bit(data, tmp_path, monkeypatch, recorded_graphs,
                                                                   family, precision, gan_type):
    """CUDA-graph replay emulated on a CPU (`recorded_graphs`): after the capture, every D and G
    step runs with no Python of its own - Adam's powers and slots, the learning rate (changed
    after the recording), the spectral-norm `u`, fp16's loss scale and skip decisions (from
    2^9, doubled after 2 good steps: during the replays D and G each both skip and step), the
    gradient-penalty draws and Morph C's direction codes all have to live in tensors the
    recording updates, and no random number is drawn inside a step. 9 iterations equal the
    static-buffer steps run eagerly, every float, weight and Adam slot bit for bit."""
    from torch_port import train_precision
    monkeypatch.setattr(train_precision, "LOSS_SCALE_INIT", 2.0 ** 9)
    monkeypatch.setattr(train_precision, "LOSS_SCALE_GROWTH_INTERVAL", 2)
    eager = _trainer(family, _decaying_cfg(str(tmp_path), "eager", gan_type), data, precision=precision,
                     cuda_graphs="static", log=lambda m: None).run()
    lines = []
    replayed = _trainer(family, _decaying_cfg(str(tmp_path), "replayed", gan_type), data, precision=precision,
                        cuda_graphs="True", log=lines.append).run()
    assert any("emulated" in l for l in lines), lines
    assert [s.name for s in recorded_graphs.captured] == ["D", "G"]
    assert [s.graph.replays for s in recorded_graphs.captured] == [5, 5]  # 9 calls: 3 warm-up, 1 recording, 5 replays
    assert recorded_graphs.draws == []  # the draws are inputs, drawn before the step
    _assert_same_run(eager, replayed)
    if precision == "fp16":  # the replays (calls 5-9) crossed both decisions of both steps
        for key in ("D", "G"):
            assert {r[f"{key}_step_skipped"] for r in replayed["history"][4:]} == {0.0, 1.0}, key


@pytest.mark.slow
def test_samples_of_replayed_steps_show_their_own_iteration(data, tmp_path, recorded_graphs):
    """A replayed G step's fakes are the graph's fixed output tensors, overwritten by its next
    replay: the samples (every iteration here) must be read before that. With n_critic 2 the G
    step is recorded at iteration 7 and replayed at 9, the D step replayed in between (its own
    outputs): every sample PNG, the history and the weights equal the static-buffer steps run
    eagerly (fresh tensors per call), byte for byte."""
    def cfg(name):
        return _cfg(str(tmp_path), name, iteration=10, n_critic=2, print_freq=1)
    eager = _trainer("port", cfg("eager"), data, cuda_graphs="static", log=lambda m: None).run()
    replayed = _trainer("port", cfg("replayed"), data, cuda_graphs="True", log=lambda m: None).run()
    assert [s.graph.replays for s in recorded_graphs.captured] == [6, 1]  # D: 4th of 10 calls, G: 4th of 5
    _assert_same_run(eager, replayed)
    a, b = eager["paths"].sample, replayed["paths"].sample
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) and len(names) == 30  # real_A, fake_B and the strip per iteration
    with contextlib.ExitStack() as stack:
        read = [(stack.enter_context(open(os.path.join(a, n), "rb")).read(),
                 stack.enter_context(open(os.path.join(b, n), "rb")).read()) for n in names]
    assert [n for n, (x, y) in zip(names, read) if x != y] == []


@pytest.mark.slow
def test_replayed_recordings_resume_bit_for_bit(data, tmp_path, recorded_graphs):
    """Emulated graphs across a resume (Morph C, wgan-gp, fp16 from 2^16): 2N = N + resume + N,
    each half recording its own steps after the state is loaded, bit for bit with the run that
    never stopped."""
    cfgs = {name: _cfg(str(tmp_path), name, gan_type="wgan-gp", iteration=5) for name in ("whole", "split")}
    run = dict(precision="fp16", cuda_graphs="True", log=lambda m: None)
    whole = _trainer("morph", dict(cfgs["whole"], epoch=2), data, **run).run()
    _trainer("morph", dict(cfgs["split"], epoch=1), data, **run).run()
    split = _trainer("morph", dict(cfgs["split"], epoch=2), data, **run).run()
    assert [s.graph is not None for s in recorded_graphs.captured] == [True] * 6 and recorded_graphs.draws == []
    assert split["history"] == whole["history"][5:]
    sa, sb = whole["model"].state_dict(), split["model"].state_dict()
    assert all(_same_bits(sa[k], sb[k]) for k in sa)
    assert whole["model"].G_optim.loss_scaler.state_dict() == split["model"].G_optim.loss_scaler.state_dict()


@pytest.mark.parametrize("flaw", ["lr_rebound", pytest.param("codes_drawn_in_the_step", marks=pytest.mark.slow)])
def test_replay_emulation_catches_what_python_would_freeze(data, tmp_path, recorded_graphs, monkeypatch, flaw):
    """The emulation can fail. `lr_rebound`: a learning rate that rebinds a new tensor when it
    changes (instead of filling the one the step reads) is frozen in the recording, and the run
    leaves eager's path at the change after it (step 7); the same run eagerly is unaffected.
    `codes_drawn_in_the_step`: Morph C's direction codes drawn by the step itself (not served
    from fixed tensors) are found in the recordings (a CUDA graph would replay the first ones)."""
    from morph.train import MorphTrainer
    from torch_port import optim
    if flaw == "codes_drawn_in_the_step":
        monkeypatch.setattr(MorphTrainer, "host_draws", lambda self: [])
        _trainer("morph", _decaying_cfg(str(tmp_path), "replayed", "lsgan"), data, cuda_graphs="True",
                 log=lambda m: None).run()
        assert recorded_graphs.draws and all("randn" in d or "Generator" in d for d in recorded_graphs.draws), \
            recorded_graphs.draws
        assert {d.split(":")[0] for d in recorded_graphs.draws} == {"D", "G"}
        return

    def rebinding(self, value):
        value = float(value)
        if value != self._lr:
            self._lr_t = optim._f32(value, self._lr_t.device)  # a new tensor: a graph keeps the old one
        self._lr = value
    monkeypatch.setattr(optim.TF1Adam, "lr", property(optim.TF1Adam.lr.fget, rebinding))
    eager = _trainer("port", _decaying_cfg(str(tmp_path), "eager", "lsgan"), data, cuda_graphs="static",
                     log=lambda m: None).run()
    replayed = _trainer("port", _decaying_cfg(str(tmp_path), "replayed", "lsgan"), data, cuda_graphs="True",
                        log=lambda m: None).run()
    assert recorded_graphs.draws == []
    assert eager["history"][:6] == replayed["history"][:6]
    assert eager["history"][6] != replayed["history"][6]


# -- no value read back inside a step -----------------------------------------------------------------

def _meta_model(family, gan_type="lsgan", foreach=False):
    from morph.model import MorphUGATIT
    from torch_port.model import build_ugatit
    torch.manual_seed(0)
    cfg = dict(NET, gan_type=gan_type)
    model = MorphUGATIT(dict(cfg, morph_config="C")) if family == "morph" else build_ugatit(cfg)
    if family == "morph":
        model.z_generator = torch.Generator().manual_seed(0)
    model = model.to("meta")
    model.make_optimizers(1e-4)
    model.loss_values = "tensor"
    for o in (model.G_optim, model.D_optim):
        o.foreach = foreach
    return model


@pytest.mark.parametrize("family,gan_type,foreach,precision", [
    pytest.param("port", "lsgan", False, "fp32", marks=pytest.mark.slow), ("port", "lsgan", True, "fp32"),
    pytest.param("port", "wgan-gp", True, "fp32", marks=pytest.mark.slow), pytest.param("port", "dragan", False, "fp16", marks=pytest.mark.slow),
    ("morph", "lsgan", True, "fp16"), pytest.param("morph", "wgan-gp", False, "fp32", marks=pytest.mark.slow)])
def test_steps_read_nothing_back_to_the_host(family, gan_type, foreach, precision):
    """A D and a G step, through the static-buffer steps the CUDA graphs capture, with the model,
    the optimizers, fp16's loss scaler and the inputs on the meta device: tensors without values,
    so any read back (`float(t)`, `.item()`, `.tolist()`, a branch on a value, `nonzero`) raises.
    They run: nothing inside a step waits for the device. (fp16 here without autocast, which has
    no meta device: the loss scaling and the skip decision are what is checked.) Control: the
    float-returning steps of the public API do raise there."""
    from torch_port.train_graphs import static_steps
    from torch_port.train_precision import mixed_precision_steps
    model = _meta_model(family, gan_type, foreach)
    d_step, g_step = model.d_step, model.g_step
    if precision == "fp16":
        d_step, g_step = mixed_precision_steps(model, d_step, g_step, "fp16", "cpu")  # autocast("cpu"): not on meta
    host_draws = [(model, "make_z")] if family == "morph" else []
    d_step, g_step = static_steps(model, d_step, g_step, "static", host_draws, log=lambda m: None)
    x, y = torch.empty(1, 3, 32, 32, device="meta"), torch.empty(1, 3, 32, 32, device="meta")
    draws = {k: torch.empty(s, device="meta") for k, s in (("alpha_A", (1, 1, 1, 1)), ("alpha_B", (1, 1, 1, 1)),
                                                          ("noise_A", (1, 3, 32, 32)), ("noise_B", (1, 3, 32, 32)))}
    for _ in range(2):  # the second call: the recorded host draws are served from the fixed tensors
        d = d_step(x, y, 1e-4, draws if gan_type != "lsgan" else None)
        g = g_step(x, y, 1e-4)
        assert all(v.device.type == "meta" and v.dim() == 0 for v in d.values())
        assert g["fake_A"].device.type == "meta" and g["Generator_loss"].dim() == 0
    assert ("D_loss_scale" in d) == (precision == "fp16")
    model.loss_values = "float"
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        model.d_step(x, y, 1e-4, draws if gan_type != "lsgan" else None)


# -- values read late: every line, record and event as before; NaN and non-finite state never saved ------

def _scalars_and_histograms(log_dir):
    import glob
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    [events] = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    acc = EventAccumulator(events, size_guidance={"scalars": 0, "histograms": 0}).Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    hists = {t: [(e.step, e.histogram_value.sum, e.histogram_value.sum_squares, tuple(e.histogram_value.bucket))
                 for e in acc.Histograms(t)] for t in acc.Tags()["histograms"]}
    return scalars, hists


class _Recorder:
    """The order in which steps run and lines appear."""

    def __init__(self):
        self.events = []

    def log(self, line):
        if line.startswith("Epoch:"):
            self.events.append("line " + line.split(" time:")[0])

    def trainer(self, base):
        events = self.events

        class Recording(base):
            def wrap_steps(self, d_step, g_step):
                d_step, g_step = super().wrap_steps(d_step, g_step)

                def d(*a, **k):
                    events.append("D")
                    return d_step(*a, **k)
                return d, g_step
        return Recording


def test_values_read_late_keep_every_line_record_and_event(data, tmp_path, monkeypatch):
    """The loop reads a step's values up to MAX_PENDING iterations after it ran (forced here: the
    values never say they have arrived). Every official line, history record, losses.jsonl line,
    TensorBoard scalar and rho histogram equals a run that reads them at once - the rho
    histograms too (a snapshot taken right after the G step, not the weights when read)."""
    from morph.train import MorphTrainer
    from torch_port import host_device, train as tt
    runs = {}
    for late in (False, True):
        if late:
            monkeypatch.setattr(host_device.PendingValues, "ready", lambda self: False)
        rec = _Recorder()
        cfg = dict(_cfg(str(tmp_path), f"late{late}", iteration=5), morph_config="C")
        out = rec.trainer(MorphTrainer)(cfg, "cpu", seed=3, base=data, log=rec.log, cuda_graphs=False).run()
        with open(f"{out['paths'].log}/losses.jsonl") as fh:
            jsonl = fh.read()
        runs[late] = (out, rec.events, jsonl, _scalars_and_histograms(out["paths"].log))
    (a, ea, ja, ta), (b, eb, jb, tb) = runs[False], runs[True]
    assert a["history"] == b["history"] and ja == jb and ta == tb
    assert ta[1] and any(t.endswith("rho_mean") for t in ta[0])
    assert [e for e in ea if e != "D"] == [e for e in eb if e != "D"]  # the same lines, in order
    lag = tt.MAX_PENDING
    assert ea[:2] == ["D", ea[1]] and ea[1].startswith("line Epoch: [ 0] [    0/")  # at once
    assert eb[:lag + 2] == ["D"] * (lag + 1) + [ea[1]]  # the first line after MAX_PENDING more steps


def _port_main(argv, tmp_path, monkeypatch, capsys):
    from torch_port.__main__ import main as port_main
    monkeypatch.chdir(tmp_path)
    rc = port_main(argv)
    return rc, capsys.readouterr()


PORT_TINY = ["--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
             "--augment_flag", "False", "--device", "cpu", "--print_freq", "1000", "--threads", "1"]


def test_nan_found_late_still_stops_before_any_later_checkpoint(tmp_path, monkeypatch, capsys):
    """With values read late, a NaN loss at step 3 stops the run (exit 3, naming step 3) before
    the save that follows it: the newest checkpoint is the one before the NaN."""
    import glob
    import os

    from torch_port import checkpoint as ck
    from torch_port import host_device
    from torch_port.train import NAN_HOOK_ENV
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.setattr(host_device.PendingValues, "ready", lambda self: False)
    monkeypatch.setenv(NAN_HOOK_ENV, "3")
    rc, said = _port_main(PORT_TINY + ["--iteration", "6", "--epoch", "1", "--save_freq", "2"], tmp_path,
                          monkeypatch, capsys)
    assert rc == 3 and "Discriminator_loss is nan at step 3" in said.err, said.err
    [folder] = glob.glob(str(tmp_path / "checkpoint" / "UGATIT_light_demo*"))
    step, weights, _ = ck.find_latest(folder)
    assert step == 3 and not glob.glob(os.path.join(folder, "*model-5*"))
    lines = [l for l in said.out.splitlines() if l.startswith("Epoch:")]
    assert len(lines) == 2  # steps 1 and 2; step 3's NaN line is not printed


def test_non_finite_optimizer_state_is_never_saved(data, tmp_path):
    """Finite losses, yet an infinite Adam slot after step 2 (the losses cannot show it yet): the
    save after step 2 refuses (NonFiniteLoss, exit 3 on the command line) naming the slot, and
    the newest checkpoint stays the one before."""
    from torch_port import checkpoint as ck
    from torch_port.train import NonFiniteLoss, Trainer

    class Corrupting(Trainer):
        def wrap_steps(self, d_step, g_step):
            d_step, g_step = super().wrap_steps(d_step, g_step)
            calls = [0]

            def g(*a, **k):
                out = g_step(*a, **k)
                calls[0] += 1
                if calls[0] == 2:
                    name = next(iter(self.model.D_optim.v))
                    self.model.D_optim.v[name].view(-1)[0] = float("inf")
                return out
            return d_step, g
    cfg = _cfg(str(tmp_path), "corrupt", iteration=4, save_freq=1)
    with pytest.raises(NonFiniteLoss, match=r"D_optim slot discriminator_A.*Adam_1.*after step 2"):
        Corrupting(cfg, "cpu", seed=3, base=data, log=lambda m: None).run()
    import glob
    [folder] = glob.glob(f"{tmp_path}/ck_corrupt/*")
    assert ck.find_latest(folder)[0] == 2


def test_gpu_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, monkeypatch, capsys):
    """A CUDA out-of-memory error inside the loop: one `error:` line naming the size settings
    and what to lower, exit 2, the step it stopped at and the resume command (simulated on CPU:
    the error raised by a step)."""
    from torch_port import model as tm
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(tm.UGATIT, "g_step", oom)
    rc, said = _port_main(PORT_TINY + ["--iteration", "2", "--epoch", "1"], tmp_path, monkeypatch, capsys)
    [line] = [l for l in said.err.splitlines() if l.startswith("error:")]
    assert rc == 2 and "ran out of memory at --img_size 32, --batch_size 1, --ch 2, --light True" in line, said.err
    assert "lower --img_size, --batch_size or --ch" in line and "Tried to allocate 20.00 GiB" in line
    assert "Traceback" not in said.err


# -- CUDA only (bench/gpu_check.sh runs them: pytest -m cuda) ------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only: run by bench/gpu_check.sh")


def _cuda_run(data, tmp_path, name, family="port", epoch=1, iteration=10, **kw):
    from torch_port.train import pick_device
    cfg = _cfg(str(tmp_path), name, epoch=epoch, iteration=iteration, save_freq=kw.pop("save_freq", iteration))
    return _trainer(family, cfg, data, pick_device("cuda"), log=kw.pop("log", lambda m: None), **kw).run()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("family", ["port", "morph"])
def test_cuda_graphed_fp32_equals_eager_and_resumes_bit_for_bit(data, tmp_path, family):
    """CUDA, the exact fp32 path (deterministic mode: deterministic cuDNN and cuBLAS, the
    deterministic reflection-pad backward): the captured steps give eager's floats, weights and
    Adam state bit for bit over 10 iterations (captured at the 4th), and 2N = N + resume + N with
    graphs (each half captures its own)."""
    lines = []
    eager = _cuda_run(data, tmp_path, f"{family}_eager", family, cuda_graphs=False)
    graphed = _cuda_run(data, tmp_path, f"{family}_graphed", family, cuda_graphs=True, log=lines.append)
    assert any("CUDA graphs: the D and G steps are captured" in l for l in lines), lines
    assert not any("could not be captured" in l for l in lines), lines
    _assert_same_run(eager, graphed)
    whole = _cuda_run(data, tmp_path, f"{family}_whole", family, epoch=2, iteration=5, cuda_graphs=True)
    _cuda_run(data, tmp_path, f"{family}_split", family, epoch=1, iteration=5, cuda_graphs=True)
    split = _cuda_run(data, tmp_path, f"{family}_split", family, epoch=2, iteration=5, cuda_graphs=True)
    assert split["history"] == whole["history"][5:]
    sa, sb = whole["model"].state_dict(), split["model"].state_dict()
    assert all(_same_bits(sa[k], sb[k]) for k in sa)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("family,precision,gan_type", [("port", "fp32", "lsgan"), ("port", "bf16", "wgan-gp"),
                                                       ("port", "fp16", "lsgan"), ("morph", "tf32", "lsgan")])
def test_cuda_steady_state_steps_never_wait_for_the_gpu(data, family, precision, gan_type):
    """After the capture, an iteration as the loop runs it - batches copied from pinned memory,
    gradient-penalty draws, Morph's direction codes, a captured D and G step, the loss values
    and the rho snapshot on their way to the host - under torch.cuda.set_sync_debug_mode("error"):
    any operation that makes the host wait for the GPU raises."""
    from torch_port.host_device import PendingValues, to_device
    from torch_port.train import Trainer, gp_draws, pick_device
    device = pick_device("cuda")
    torch.manual_seed(0)
    from morph.model import MorphUGATIT
    from torch_port.model import build_ugatit
    cfg = dict(NET, gan_type=gan_type)
    model = (MorphUGATIT(dict(cfg, morph_config="C")) if family == "morph" else build_ugatit(cfg)).to(device)
    if family == "morph":
        model.z_generator = torch.Generator().manual_seed(0)
    model.make_optimizers(1e-4)
    trainer = Trainer.__new__(Trainer)  # the seam alone
    trainer.precision, trainer.compile, trainer.device, trainer.model = precision, False, device, model
    trainer.cuda_graphs, trainer.log = True, lambda m: None
    if family == "morph":
        trainer.host_draws = lambda: [(model, "make_z")]
    d_step, g_step = trainer.wrap_steps(model.d_step, model.g_step)
    model.loss_values = "tensor"
    rho = {n: p for n, p in model.named_parameters() if n.endswith("rho")}
    g = torch.Generator().manual_seed(1)

    def iteration(counter):
        a, b = (to_device(torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, device) for _ in range(2))
        d = d_step(a, b, 1e-4, gp_draws(dict(cfg), a, b, 0, counter))
        out = [PendingValues(d)]
        gv = dict(g_step(*(to_device(torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, device) for _ in range(2)), 1e-4))
        gv.pop("fake_A"), gv.pop("fake_B")
        return out + [PendingValues(gv, arrays=rho)]
    pending = [iteration(c) for c in range(1, 6)]  # 3 eager calls, the capture, a replay
    assert d_step.graph is not None and g_step.graph is not None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending += [iteration(c) for c in range(6, 10)]
        assert all(isinstance(p.ready(), bool) for it in pending for p in it)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    values = [p.result()[0] for it in pending for p in it]
    assert all(math.isfinite(v) for vs in values for v in vs.values())


def _cuda_gradients(model, which, x, y):
    from torch_port.ops import spectral_norm_run
    with spectral_norm_run(model):
        total = (model.discriminator_losses(x, y)[0] if which == "D" else model.generator_losses(x, y)[0])
    named = model.d_params() if which == "D" else model.g_params()
    grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    return {n: g.detach().double().cpu() for (n, _), g in zip(named, grads) if g is not None}


def _graphed_gradients(model, which, x, y):
    """The gradients a captured CUDA graph of the step computes from `model`'s state: warm-up
    calls and the capture (which update the weights), then the weights, `u` and Adam's state put
    back in place and the graph replayed on (x, y); the parameters' .grad hold its gradients."""
    from torch_port.train_graphs import WARMUP_CALLS, StaticStep
    model.loss_values = "tensor"
    optim = model.D_optim if which == "D" else model.G_optim
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(optim.state_dict())
    step = StaticStep(model.d_step if which == "D" else model.g_step, optim, which, capture=True, log=print)
    for _ in range(WARMUP_CALLS + 1):
        step(x, y, 1e-4)
    assert step.graph is not None
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(saved[k])
    optim.load_state_dict(saved_opt)
    step(x, y, 1e-4)
    named = model.d_params() if which == "D" else model.g_params()
    return {n: p.grad.detach().double().cpu() for n, p in named if p.grad is not None}


@pytest.mark.cuda
@cuda
def test_cuda_compiled_and_graphed_fp32_gradients_meet_the_float64_criterion():
    """On CUDA, teacher-forced (the CPU test's criterion, parity_tests/test_train_compile.py): from
    the same weights and batch, the D and G gradients of the compiled fp32 networks and of a
    captured CUDA graph of the step, against the port's float64 gradients (CPU), judged with CUDA
    eager fp32 as the reference float32 run: per tensor RMS error <= max(3 x eager's,
    2^-24 x sqrt(K) x scale). Both in deterministic mode (the exact path's)."""
    from parity_tests.golden import NORM_FED_BIAS
    from parity_tests.test_train_precision import NET as BAND_NET
    from parity_tests.trajectory import chain_sums, float32_budget
    from torch_port import build_ugatit, train_compile
    from torch_port.train import pick_device
    from torch_port.train_precision import deterministic_math
    from ugatit_common.float_error import rms, scale
    device = pick_device("cuda")
    torch.manual_seed(3)
    base = build_ugatit(BAND_NET)
    f64 = copy.deepcopy(base).double()
    g = torch.Generator().manual_seed(4)
    x, y = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    sums = chain_sums(dict(BAND_NET, batch_size=1))
    worst = {"compiled": 0.0, "graphed": 0.0}
    checked = 0
    with deterministic_math():
        for which in ("D", "G"):
            eager, comp, graphed = (copy.deepcopy(base).to(device) for _ in range(3))
            train_compile.compile_model(comp)
            graphed.make_optimizers(1e-4)
            truth = _cuda_gradients(f64, which, x.double(), y.double())
            xc, yc = x.to(device), y.to(device)
            got = {"eager": _cuda_gradients(eager, which, xc, yc), "compiled": _cuda_gradients(comp, which, xc, yc),
                   "graphed": _graphed_gradients(graphed, which, xc, yc)}
            assert all(v.keys() == truth.keys() for v in got.values())
            for name, t in truth.items():
                if NORM_FED_BIAS.match(name.replace(".", "/").replace("/bias", "/conv2d/bias")):
                    continue  # a conv bias an instance norm cancels: exact gradient 0, float noise in every run
                t = t.numpy()
                e_err = rms(got["eager"][name].numpy(), t)
                bound = float32_budget(e_err, scale(t), sums[which])
                for path in ("compiled", "graphed"):
                    err = rms(got[path][name].numpy(), t)
                    assert err <= bound, (path, which, name, err, e_err, bound)
                    worst[path] = max(worst[path], err / bound)
                checked += 1
    print(f"CUDA teacher-forced gradients: {checked} tensors, worst RMS error / budget: "
          + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))
    assert checked > 100 and 0 < worst["compiled"] <= 1


@pytest.mark.cuda
@cuda
def test_cuda_tf32_and_nan_stop_with_graphs(data, tmp_path, monkeypatch):
    """tf32 trains on CUDA with graphs and its losses follow fp32's within the bf16 band
    (test_train_precision's D_BAND / G_BAND: TF32 has 3 more mantissa bits than bfloat16); a NaN
    at step 7 (after the capture, injected on the device) stops the graphed run with NonFiniteLoss
    and the newest checkpoint is step 7's (the state before the NaN)."""
    from parity_tests.test_train_precision import D_BAND, G_BAND
    from torch_port import checkpoint as ck
    from torch_port.train import NAN_HOOK_ENV, NonFiniteLoss
    fp32 = _cuda_run(data, tmp_path, "fp32", iteration=8)
    tf32 = _cuda_run(data, tmp_path, "tf32", iteration=8, precision="tf32")
    worst = {k: max(abs(a[k] - b[k]) / abs(a[k]) for a, b in zip(fp32["history"], tf32["history"]))
             for k in ("d_loss", "g_loss")}
    print(f"tf32 vs fp32 on CUDA over 8 iterations: {worst}")
    assert worst["d_loss"] <= D_BAND and worst["g_loss"] <= G_BAND and worst["d_loss"] > 0, worst
    monkeypatch.setenv(NAN_HOOK_ENV, "7")
    with pytest.raises(NonFiniteLoss, match="step 7"):
        _cuda_run(data, tmp_path, "nan", iteration=10, save_freq=1)
    import glob
    [folder] = glob.glob(f"{tmp_path}/ck_nan/*")
    assert ck.find_latest(folder)[0] == 7


@pytest.mark.cuda
@cuda
def test_cuda_out_of_memory_names_the_settings(data, tmp_path):
    """A real CUDA out-of-memory (the process limited to 0.7 GiB of the GPU, a 256-px model): the
    trainer raises GPUOutOfMemory (exit 2 on the command line) naming what to lower."""
    from torch_port.train import GPUOutOfMemory, exit_code_of
    big = str(tmp_path / "big")
    make_demo_dataset(big, "demo", 256, n_train=2, n_test=1)
    cfg = _cfg(str(tmp_path), "oom", iteration=2, img_size=256, ch=64, n_dis=6)
    torch.cuda.empty_cache()
    # 0.7 GiB on any GPU (a fraction of its memory: an H100 has 80 GB, an H200 141 GB): less than the
    # weights and Adam state (1.5 GiB)
    torch.cuda.set_per_process_memory_fraction(0.7 * 2 ** 30 / torch.cuda.get_device_properties(0).total_memory)
    try:
        from torch_port.train import Trainer, pick_device
        trainer = Trainer(cfg, pick_device("cuda"), seed=0, base=big, log=lambda m: None)
        with pytest.raises(GPUOutOfMemory, match="the GPU ran out of memory.*lower --img_size, --batch_size or --ch"):
            exit_code_of(trainer.run)  # (in the loop the line also names the settings: CPU test above)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


@pytest.mark.cuda
@cuda
def test_cuda_torchrun_world_size_one(tmp_path):
    """`torchrun --nproc_per_node 1 -m torch_port ... --device cuda` trains (one process, one GPU;
    graphs captured: the all-reduce only exists from 2 processes on, where NCCL is the backend and
    graphs are off)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    flags = [f for f in PORT_TINY if f != "cpu"]
    flags[flags.index("--device") + 1:flags.index("--device") + 1] = ["cuda"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           "-m", "torch_port", *flags, "--iteration", "6", "--epoch", "1"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "CUDA graphs: the D and G steps are captured" in proc.stdout
    assert len([l for l in proc.stdout.splitlines() if l.startswith("Epoch:")]) == 6


def test_arrival_events_wait_on_the_values_gpu_not_the_current_one(monkeypatch):
    """`host_device.stream_event` (the event PendingValues and the batched test phase wait on before
    reading pinned memory): recorded on the current stream of the GPU the copy was queued on. An
    event recorded on the current GPU's stream (cuda:0 while the values are on cuda:1: a library
    caller's `test(cfg, torch.device("cuda:1"))`) completes without waiting for that copy, and the
    host read the pinned buffer before it was written. Without a GPU: torch.cuda's stream and
    event faked, only which stream is asked for is looked at."""
    from torch_port import host_device
    asked, recorded = [], []

    class FakeEvent:
        def record(self, stream=None):
            recorded.append(stream)

    def current_stream(device=None):
        asked.append(device)
        return f"stream of {device}"
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    for device in (torch.device("cuda", 1), "cuda:1", torch.device("cuda")):
        asked.clear(), recorded.clear()
        host_device.stream_event(device)
        assert asked == [torch.device(device)] and recorded == [f"stream of {torch.device(device)}"], (asked, recorded)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (the values on one that is not current)")
def test_cuda_values_on_a_gpu_that_is_not_current_arrive_whole():
    """Loss values on cuda:1 while cuda:0 is the current GPU, their copy queued behind a long
    computation there: `result()` waits for the copy (the event on cuda:1's stream) and reads 3.0,
    not whatever the pinned buffer held before."""
    from torch_port.host_device import PendingValues
    saved = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        a = torch.rand(4096, 4096, device="cuda:1")
        for _ in range(30):  # ~tens of ms of cuda:1 work queued before the value
            a = (a @ a).clamp_(0, 1)
        v = (a[0, 0] * 0).nan_to_num_() + 3.0
        assert PendingValues({"v": v}).result()[0] == {"v": 3.0}
    finally:
        torch.cuda.set_device(saved)


def test_bad_gpu_flags_are_one_line(tmp_path, monkeypatch, capsys):
    """On a machine without a GPU: --device cuda, --precision tf32, --cuda_graphs True are refused
    with one `error:` line naming the flag (exit 2), on both training command lines; a misspelt
    --cuda_graphs is argparse's usage error (exit 2); --cuda_graphs auto trains."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    if torch.cuda.is_available():
        pytest.skip("checks the refusals of a machine without CUDA")
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    flags = [f for f in PORT_TINY if f != "--threads" and f != "1"] + ["--iteration", "1", "--epoch", "1"]
    for run, argv in ((port_main, flags), (morph_main, ["train"] + flags)):
        for extra, said in ((["--device", "cuda"], "--device='cuda': CUDA is not available"),
                            (["--precision", "tf32"], "--precision=tf32: TF32 is a mode of NVIDIA tensor cores"),
                            (["--cuda_graphs", "True"], "--cuda_graphs True: there is no CUDA graph on cpu")):
            capsys.readouterr()
            rc = run(argv + extra)
            err = capsys.readouterr().err
            assert rc == 2 and len(err.strip().splitlines()) == 1 and "error: " in err, err
            assert said in err, err
        with pytest.raises(SystemExit) as e:
            run(argv + ["--cuda_graphs", "sometimes"])
        assert e.value.code == 2 and "--cuda_graphs" in capsys.readouterr().err
        assert run(argv + ["--cuda_graphs", "auto", "--resume", "False"]) == 0


def test_cuda_device_index_settings_and_refusals(monkeypatch):
    """Without a GPU (CUDA simulated where nothing reaches a kernel): `--device cuda:N` beyond the
    machine's devices is one error naming them; a CUDA device with an index becomes the current
    device (streams, events and graphs made without a device then belong to it: the late loss
    read, the captured steps), and the exact path's settings hold for a Trainer made without
    pick_device (TF32 off: torch's cuDNN default is on); under torchrun with 2 processes an
    explicit cuda:N is refused (each process takes its LOCAL_RANK's GPU)."""
    import os

    from torch_port import distributed as ddp
    from torch_port import train as tr
    from ugatit_common.options import OptionError
    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made_current.append(torch.device(d)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        with pytest.raises(OptionError, match=r"--device='cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
            tr.pick_device("cuda:2")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert tr.pick_device("cuda:1") == torch.device("cuda", 1) and made_current == [torch.device("cuda", 1)]
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        torch.backends.cudnn.allow_tf32 = True
        tr.Trainer(opt.config_from(dataset="demo"), torch.device("cuda"))  # a library caller's device
        assert not torch.backends.cudnn.allow_tf32 and made_current == [torch.device("cuda", 1)]  # no index: stays
        tr.cuda_exact_settings(torch.device("cpu"))
        assert made_current == [torch.device("cuda", 1)]
        monkeypatch.setattr(ddp, "init", lambda device_type: ddp.DistInfo(0, 2, 0))
        with pytest.raises(OptionError, match="under torchrun with 2 processes: each process takes the GPU of its "
                                              "LOCAL_RANK; give --device cuda"):
            with tr.training_process("cuda:0"):
                pass
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_what_the_graph_setting_runs():
    """`train_graphs.plan`: auto captures on CUDA and is off elsewhere; under torchrun with more
    than one process auto says it runs eagerly and True is refused (the all-reduce inside a step is
    not captured here); True on a CPU is refused; False is always eager; static runs the
    static-buffer steps without capture anywhere."""
    from torch_port.train_graphs import plan
    from ugatit_common.options import OptionError
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert plan("auto", cuda, 1)[0] == "capture" and plan("True", cuda, 1)[0] == "capture"
    assert plan("auto", cpu, 1) == ("off", None) and plan("False", cuda, 1) == ("off", None)
    how, line = plan("auto", cuda, 2)
    assert how == "off" and "2 torchrun processes" in line and "eagerly" in line
    for setting, device, world in (("True", cuda, 2), ("True", cpu, 1)):
        with pytest.raises(OptionError, match="--cuda_graphs True"):
            plan(setting, device, world)
    assert plan("static", cpu, 1)[0] == plan("static", cuda, 4)[0] == "static"
    assert plan(True, cuda, 1)[0] == "capture" and plan(False, cuda, 1)[0] == "off"
    with pytest.raises(OptionError, match="expected auto, True or False"):
        plan("sometimes", cuda, 1)


def test_gpu_math_settings_hold_during_the_steps_only():
    """`train_precision.cuda_steps` (run here without a GPU: only the settings are looked at):
    the exact fp32 steps run in deterministic mode without cuDNN timing, the reduced-precision
    steps with cuDNN's benchmark mode, and after every step the process has its own settings back
    (a bf16 run no longer left benchmark mode on for a later fp32 run or test phase in the same
    process); a CPU run's steps are not wrapped."""
    from torch_port.train_precision import cuda_steps
    seen = []

    def step(*args):
        seen.append((torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()))
        return {}
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    try:
        for before in (False, True):
            torch.backends.cudnn.benchmark = before
            for precision, deterministic, inside in (("fp32", True, (False, True)), ("fp32", False, (before, False)),
                                                     ("bf16", True, (True, False)), ("fp16", True, (True, False)),
                                                     ("tf32", True, (True, False))):
                for s in cuda_steps(step, step, precision, "cuda", deterministic):
                    seen.clear()
                    s()
                    assert seen == [inside], (precision, deterministic, before, seen)
                    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == \
                        (before, False), (precision, before)
        assert cuda_steps(step, step, "bf16", "cpu") == (step, step)
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.use_deterministic_algorithms(saved[1])
