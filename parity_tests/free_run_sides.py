"""The two float64 trainers a free run drives, with one interface: `load(state)` once, then
`d_run(batch, lr, draws)` / `g_run(batch, lr)` (one official `sess.run` each, returning the loss
terms computed in that run), `state()` ({TF name: array}, TF layout) and `probe(inputs)` (each
generator's image and CAM logits on fixed inputs, NHWC).

- `TFTrainer64`: tf_reference's official training graph (`UGATITGraph.build_train`) built with
  float64 variables: every op in float64, TF1 Adam with float64 slots (TF keeps lr, beta1, beta2
  and epsilon as float32 tensors and the powers as float32 variables, cast to float64 for
  ApplyAdam), the rho clip, the spectral-norm `u` assignments, the gradient penalty on fed draws.
- `PortTrainer64`: torch_port's UGATIT in float64 on a device, its `d_step` / `g_step` and TF1Adam
  (float64 slots for float64 parameters, torch_port/optim.py).
"""
from __future__ import annotations

import numpy as np

from parity_tests.free_run_inputs import FreeRunInputError


def _nchw(x, torch, device):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float64).transpose(0, 3, 1, 2))).to(device)


class TFTrainer64:
    name = "TF float64 (tf_reference)"

    def __init__(self, cfg: dict, probe_shape: tuple, threads: int = 1):
        from tf_reference.compat import tf
        from tf_reference.model import UGATITGraph
        self.tf = tf
        bs, size = cfg["batch_size"], cfg["img_size"]
        self.graph = tf.Graph()
        try:
            with self.graph.as_default(), tf.variable_scope(tf.get_variable_scope(), dtype=tf.float64):
                f64 = tf.float64
                self.real = {d: tf.placeholder(f64, [bs, size, size, 3], name=f"real_{d}") for d in "AB"}
                self.draws = {f"alpha_{d}": tf.placeholder(f64, [bs, 1, 1, 1], name=f"alpha_{d}") for d in "AB"}
                if cfg["gan_type"] == "dragan":
                    self.draws.update({f"noise_{d}": tf.placeholder(f64, [bs, size, size, 3], name=f"noise_{d}")
                                       for d in "AB"})
                m = self.model = UGATITGraph(cfg).build_train(self.real["A"], self.real["B"], dict(self.draws))
                self.probe_in = {d: tf.placeholder(f64, probe_shape, name=f"probe_{d}") for d in "AB"}
                # after build_train: reused variables add no regularisation terms
                b_img, b_cam = m.generate_a2b(self.probe_in["A"], reuse=True)
                a_img, a_cam = m.generate_b2a(self.probe_in["B"], reuse=True)
                self.probe_out = {"generator_B:image": b_img, "generator_B:cam": b_cam,
                                  "generator_A:image": a_img, "generator_A:cam": a_cam}
                self.d_fetch = {k: m.terms[k] for k in ("Discriminator_loss", "D_A_loss", "D_B_loss")}
                self.g_fetch = {k: v for k, v in m.terms.items() if k.startswith("G")}
                self.vars = tf.global_variables()
                self.inits = [v.initializer for v in self.vars]
                config = tf.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
                # no grappler: its rewrites only change float64 rounding, and cost seconds per fetch set
                config.graph_options.rewrite_options.disable_meta_optimizer = True
                self.sess = tf.Session(graph=self.graph, config=config)
        except (TypeError, ValueError) as e:
            raise FreeRunInputError(f"the TF float64 training graph cannot be built for this configuration "
                                    f"(gan_type={cfg['gan_type']}, light={cfg['light']}, img_size={size}, "
                                    f"n_dis={cfg['n_dis']}): {e}") from e

    def variable_names(self) -> set:
        return {v.op.name for v in self.vars}

    def load(self, state: dict) -> None:
        feed = {v.initial_value: np.asarray(state[v.op.name], v.dtype.base_dtype.as_numpy_dtype) for v in self.vars}
        self.sess.run(self.inits, feed)

    def _feed(self, batch, lr):
        feed = {self.real[d]: batch[d] for d in "AB"}
        feed[self.model.lr] = lr
        return feed

    def d_run(self, batch: dict, lr: float, draws: dict) -> dict:
        feed = self._feed(batch, lr)
        feed.update({self.draws[k]: v for k, v in draws.items()})
        out = self.sess.run({"op": self.model.D_optim, "loss": self.d_fetch}, feed)
        return {k: float(v) for k, v in out["loss"].items()}

    def g_run(self, batch: dict, lr: float) -> dict:
        out = self.sess.run({"op": self.model.G_optim, "loss": self.g_fetch}, self._feed(batch, lr))
        return {k: float(v) for k, v in out["loss"].items()}

    def state(self) -> dict:
        return self.sess.run({v.op.name: v for v in self.vars})

    def probe(self, inputs: dict) -> dict:
        out = self.sess.run(self.probe_out, {self.probe_in[d]: inputs[d] for d in "AB"})
        return {k: np.asarray(v, np.float64) for k, v in out.items()}

    def close(self) -> None:
        self.sess.close()


class PortTrainer64:
    def __init__(self, cfg: dict, device: str = "cpu"):
        import torch

        from torch_port import build_ugatit
        self.torch, self.device = torch, torch.device(device)
        self.name = f"port float64 ({self.device.type})"
        self.model = build_ugatit(cfg).to(dtype=torch.float64, device=self.device)
        self.G, self.D = self.model.make_optimizers(cfg["lr"])

    def variable_names(self) -> set:
        return set(self.state())

    def load(self, state: dict) -> None:
        from parity_tests.trajectory import torch_state_from_tf
        torch_state_from_tf(self.model, self.G, self.D, state)

    def d_run(self, batch: dict, lr: float, draws: dict) -> dict:
        t = {d: _nchw(batch[d], self.torch, self.device) for d in "AB"}
        gp = {k: _nchw(v, self.torch, self.device) for k, v in draws.items()}
        return self.model.d_step(t["A"], t["B"], lr, gp_draws=gp)

    def g_run(self, batch: dict, lr: float) -> dict:
        t = {d: _nchw(batch[d], self.torch, self.device) for d in "AB"}
        out = self.model.g_step(t["A"], t["B"], lr)
        return {k: v for k, v in out.items() if not k.startswith("fake_")}

    def state(self) -> dict:
        from parity_tests.trajectory import torch_state_as_tf
        return torch_state_as_tf(self.model, self.G, self.D)

    def probe(self, inputs: dict) -> dict:
        with self.torch.no_grad():
            b_img, b_cam, _ = self.model.generator_B(_nchw(inputs["A"], self.torch, self.device))
            a_img, a_cam, _ = self.model.generator_A(_nchw(inputs["B"], self.torch, self.device))
        nhwc = lambda t: t.detach().cpu().numpy().transpose(0, 2, 3, 1)  # noqa: E731
        return {"generator_B:image": nhwc(b_img), "generator_B:cam": b_cam.cpu().numpy(),
                "generator_A:image": nhwc(a_img), "generator_A:cam": a_cam.cpu().numpy()}

    def close(self) -> None:
        pass
