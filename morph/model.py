"""Morph-UGATIT as a subclass of the port's `UGATIT`.

Configurations (the article's ablation), chosen by `config["morph_config"]`:
  A  the port's UGATIT unchanged: generator_B (A->B), generator_A (B->A), official losses.
  B  A + the identity-preserving loss idp_weight * L1(E(G(x)), E(x)), E = the encoder of the
     generator that made G(x), for both directions (G_B_idp: A->B, G_A_idp: B->A).
  C  B + the latent MLP and ONE `MorphGenerator` (attribute `generator`) for both directions,
     steered by the direction code z (a fresh z per generator call, so the way back of the
     cycle, x'' = G(x', z2), draws its own z2). Two discriminators remain.

Config C's G loss is averaged over the two directions:
    Generator_loss = (G_A_loss + G_B_loss) / 2 + L2 regularisation,
where G_X_loss = gan + cycle + identity + cam + idp of direction X exactly as the port names
them (G_B_*: the A->B translation, G_A_*: B->A). The single generator receives both directions'
losses; halving them keeps its gradient scale that of one UGATIT generator (as the Morph-UGATIT
repository does with `loss_G * 0.5`). The regulariser is a parameter penalty, not per
direction, so it is not halved. Configs A and B sum as the port does.

`g_cam` (default True) switches the generator-side CAM loss: with False the port's loss graph
runs with cam_weight = 0 (G_*_cam = 0 exactly, no gradient); the discriminators' CAM terms are
untouched. In config C the generator's CAM logit depends on E(x) only, not on z, so the two
directions' CAM losses pull E in opposite ways - the article's stall (~1300) that this switch
ablates. Default True keeps config A identical to the port.

Only `generator_losses` and the direction plumbing (`generate_a2b` / `generate_b2a`) are
overridden; d_step / g_step / optimizers / discriminator losses are the port's.
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import torch

from torch_port.host_device import to_device
from torch_port.losses import l1_loss, regularization_loss
from torch_port.model import UGATIT

from .networks import W_DIM, Z_DIM, MorphGenerator, check_direction, make_z

__all__ = ["MORPH_CONFIGS", "MORPH_DEFAULTS", "MorphUGATIT"]

MORPH_CONFIGS = ("A", "B", "C")
MORPH_DEFAULTS = {"morph_config": "C", "idp_weight": 1.0, "g_cam": True, "z_dim": Z_DIM,
                  "w_dim": W_DIM, "mlp_layers": 8}


class MorphUGATIT(UGATIT):
    def __init__(self, config: Mapping):
        cfg = dict(MORPH_DEFAULTS)
        cfg.update(config)
        mc = str(cfg["morph_config"]).upper()
        if mc not in MORPH_CONFIGS:
            raise ValueError(f"morph_config must be one of {MORPH_CONFIGS}, got {cfg['morph_config']!r}")
        cfg["morph_config"] = mc
        super().__init__(cfg)
        # Draws of z: None = the global torch RNG; set a CPU torch.Generator for reproducibility.
        self.z_generator: torch.Generator | None = None
        # Data-parallel training (rank, world size): each rank draws the codes of the whole global
        # batch and keeps its own rows (rank r holds items r, r + world, ... of it), so the ranks'
        # z generators stay in step and 2 ranks of batch b equal 1 process of batch 2b.
        self.z_shard: tuple[int, int] = (0, 1)
        if mc == "C":
            del self.generator_A, self.generator_B
            c = self.config
            self.generator = MorphGenerator(
                ch=c["ch"], n_res=c["n_res"], img_size=c["img_size"], light=bool(c["light"]),
                smoothing=bool(c["smoothing"]), img_ch=int(c.get("img_ch", 3)),
                z_dim=int(c["z_dim"]), w_dim=int(c["w_dim"]), mlp_layers=int(c["mlp_layers"]))

    @property
    def morph_config(self) -> str:
        return self.config["morph_config"]

    @property
    def single_generator(self) -> bool:
        return self.morph_config == "C"

    # -- directions ------------------------------------------------------------------------------
    def make_z(self, direction: str, batch: int) -> torch.Tensor:
        if not self.single_generator:
            raise RuntimeError(f"config {self.morph_config} has no direction code z (config C only)")
        rank, world = self.z_shard
        g = self.generator
        # drawn on the host (float32, the same draws at any precision), moved without blocking the
        # host on CUDA (torch_port.host_device), in the latent MLP's dtype: MorphGenerator.make_z's values
        z = make_z(direction, batch * world, self.z_generator, g.z_dim)
        if world > 1:
            z = z[rank::world].contiguous()
        return to_device(z, g.G_logit.weight.device, g.mapping.linear_0.weight.dtype)

    def w_code(self, direction: str, batch: int = 1, z: torch.Tensor | None = None) -> torch.Tensor:
        """MLP(z) for a direction (fresh z unless given)."""
        z = self.make_z(direction, batch) if z is None else z
        return self.generator.w_from_z(z)

    def _generate(self, direction: str, x, z=None, w=None):
        check_direction(direction)
        if not self.single_generator:
            if z is not None or w is not None:
                raise RuntimeError(f"config {self.morph_config} takes no z / w (config C only)")
            return super().generate_a2b(x) if direction == "a2b" else super().generate_b2a(x)
        if z is None and w is None:
            z = self.make_z(direction, x.shape[0])
        out, cam, _ = self.generator(x, z=z, w=w)
        return out, cam

    def generate_a2b(self, x: torch.Tensor, z: torch.Tensor | None = None, w: torch.Tensor | None = None):
        """A -> B: (image, cam_logit). Config C: G(x, z) with a fresh A->B z unless z or w is given."""
        return self._generate("a2b", x, z, w)

    def generate_b2a(self, x: torch.Tensor, z: torch.Tensor | None = None, w: torch.Tensor | None = None):
        """B -> A: (image, cam_logit). Config C: G(x, z) with a fresh B->A z unless z or w is given."""
        return self._generate("b2a", x, z, w)

    def translate_w(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Config C: the image G(x, w) for a given w code ([1, w_dim] is broadcast to the batch)."""
        if not self.single_generator:
            raise RuntimeError(f"config {self.morph_config} has no w codes (config C only)")
        if w.shape[0] == 1 and x.shape[0] > 1:
            w = w.expand(x.shape[0], -1)
        return self.generator(x, w=w)[0]

    def encoder(self, direction: str):
        """E used by the identity-preserving loss for a direction: the encoder of the generator
        that translates in that direction."""
        check_direction(direction)
        if self.single_generator:
            return self.generator.encode
        return (self.generator_B if direction == "a2b" else self.generator_A).encode

    # -- losses ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _config_override(self, **values):
        saved = {k: self.config[k] for k in values}
        self.config.update(values)
        try:
            yield
        finally:
            self.config.update(saved)

    def generator_losses(self, real_A: torch.Tensor, real_B: torch.Tensor):
        """The port's G loss graph (with the Morph directions), plus for configs B/C the
        identity-preserving terms G_B_idp (A->B) and G_A_idp (B->A); config C averages (see the
        module docstring). Returns (Generator_loss, terms, fakes) like the port."""
        override = {} if self.config["g_cam"] else {"cam_weight": 0}
        with self._config_override(**override):
            total, terms, fakes = super().generator_losses(real_A, real_B)
        if self.morph_config == "A":
            return total, terms, fakes

        w_idp = float(self.config["idp_weight"])
        enc_ab, enc_ba = self.encoder("a2b"), self.encoder("b2a")
        G_B_idp = w_idp * l1_loss(enc_ab(fakes["fake_B"]), enc_ab(real_A))
        G_A_idp = w_idp * l1_loss(enc_ba(fakes["fake_A"]), enc_ba(real_B))
        G_A_loss = terms["G_A_loss"] + G_A_idp
        G_B_loss = terms["G_B_loss"] + G_B_idp
        if self.single_generator:
            total = (G_A_loss + G_B_loss) / 2 + regularization_loss(self.g_params())
        else:
            total = total + G_A_idp + G_B_idp
        terms = dict(terms)
        terms.update({"Generator_loss": total, "G_A_loss": G_A_loss, "G_B_loss": G_B_loss,
                      "G_A_idp": G_A_idp, "G_B_idp": G_B_idp})
        return total, terms, fakes
