"""U-GAT-IT as the official `UGATIT.build_model` wires it: two generators, two discriminators,
the official losses, and one D / G training step each reproducing one `sess.run`.

Naming: `generator_B` translates A -> B, `generator_A` translates B -> A (official scopes).
`state_dict()` keys are the official TF variable paths under the port's naming rule, so a
converted TF checkpoint loads with plain `load_state_dict` (spectral-norm `u` buffers included).

Seams for subclasses (Morph-UGATIT): `generate_a2b` / `generate_b2a` (which generator serves
which direction), `generator_losses`, `discriminator_losses`, `g_params` / `d_params`.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ugatit_common.options import DEFAULTS

from .losses import (GAN_TYPES, cam_loss, discriminator_loss, generator_loss, gradient_penalty,
                     l1_loss, regularization_loss, uses_gradient_penalty)
from .networks import Discriminator, Generator
from .ops import spectral_norm_run
from .optim import TF1Adam, clip_0_1

__all__ = ["UGATIT", "build_ugatit"]

REQUIRED_KEYS = ("light", "ch", "n_res", "n_dis", "img_size", "sn", "smoothing")


BOOL_KEYS = ("light", "sn", "smoothing")
COUNT_KEYS = ("ch", "n_res", "n_dis", "img_size", "img_ch")


def check_model_settings(cfg: Mapping) -> None:
    """TypeError / ValueError naming the key for a model setting of the wrong kind: a string
    "False" for `light`, `sn` or `smoothing` was truthy (a light model built where a full one was
    meant, silently), and a count that is not a whole number >= 1 (`ch` 4.0, "4", -1, 0) was
    torch's error from deep inside a layer, or a model of empty layers."""
    import numbers

    import numpy as np
    for k in BOOL_KEYS:
        v = cfg.get(k)
        if k in cfg and not (isinstance(v, (bool, np.bool_)) or (isinstance(v, numbers.Integral) and v in (0, 1))):
            raise TypeError(f"build_ugatit: config[{k!r}] must be True or False; got {v!r} ({type(v).__name__}"
                            + ("; a command-line value: ugatit_common.options.str2bool reads it as the official "
                               "parser does" if isinstance(v, str) else "") + ")")
    for k in COUNT_KEYS:
        v = cfg.get(k)
        if k in cfg and not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1):
            raise (ValueError if isinstance(v, numbers.Integral) and not isinstance(v, bool) else TypeError)(
                f"build_ugatit: config[{k!r}] must be a whole number >= 1; got {v!r} ({type(v).__name__})")


class UGATIT(nn.Module):
    """The official model. `config` holds the official option keys (missing ones take the
    official defaults from `ugatit_common.options.DEFAULTS`)."""

    # What d_step / g_step return for the loss terms: "float" (Python floats: one read back to the
    # host per step) or "tensor" (detached 0-d tensors on the model's device, read later by the
    # caller without blocking: the trainer's loop, torch_port.host_device)
    loss_values: str = "float"

    def __init__(self, config: Mapping):
        super().__init__()
        cfg = dict(DEFAULTS)
        cfg.update(config)
        check_model_settings(cfg)
        if cfg["gan_type"] not in GAN_TYPES:
            raise ValueError(f"unknown gan_type {cfg['gan_type']!r}; expected one of {GAN_TYPES}")
        self.config = cfg
        img_ch = int(cfg.get("img_ch", 3))
        gen_kw = dict(ch=cfg["ch"], n_res=cfg["n_res"], img_size=cfg["img_size"],
                      light=bool(cfg["light"]), smoothing=bool(cfg["smoothing"]), img_ch=img_ch)
        dis_kw = dict(ch=cfg["ch"], n_dis=cfg["n_dis"], sn=bool(cfg["sn"]), img_ch=img_ch)
        # Official creation order: generator_B (a2b is built first), generator_A, D_A, D_B.
        self.generator_B = Generator(**gen_kw)
        self.generator_A = Generator(**gen_kw)
        self.discriminator_A = Discriminator(**dis_kw)
        self.discriminator_B = Discriminator(**dis_kw)
        self.G_optim: TF1Adam | None = None
        self.D_optim: TF1Adam | None = None

    # -- official option shortcuts ---------------------------------------------------------------
    @property
    def gan_type(self) -> str:
        return self.config["gan_type"]

    # -- directions ------------------------------------------------------------------------------
    def generate_a2b(self, x: torch.Tensor):
        """A -> B with `generator_B`: (image, cam_logit)."""
        out, cam, _ = self.generator_B(x)
        return out, cam

    def generate_b2a(self, x: torch.Tensor):
        """B -> A with `generator_A`: (image, cam_logit)."""
        out, cam, _ = self.generator_A(x)
        return out, cam

    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """Test-phase translation; direction 'a2b' or 'b2a'. Returns the image only.
        (Gradients are tracked unless the caller wraps this in torch.no_grad().)"""
        if direction == "a2b":
            return self.generate_a2b(x)[0]
        if direction == "b2a":
            return self.generate_b2a(x)[0]
        raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")

    # -- parameters and optimizers ---------------------------------------------------------------
    def d_params(self) -> list[tuple[str, nn.Parameter]]:
        """Named trainable parameters of the discriminators (official: 'discriminator' in name)."""
        return [(n, p) for n, p in self.named_parameters() if "discriminator" in n]

    def g_params(self) -> list[tuple[str, nn.Parameter]]:
        """Named trainable parameters of everything else (the generators)."""
        return [(n, p) for n, p in self.named_parameters() if "discriminator" not in n]

    def make_optimizers(self, lr: float | None = None):
        """(G_optim, D_optim): TF1 Adam(beta1=0.5, beta2=0.999, eps=1e-8), the `rho` parameters
        clipped to [0, 1] after each update. G is built first (TF `beta1_power`), D second
        (`beta1_power_1`). Also stored as `self.G_optim` / `self.D_optim`."""
        lr = self.config["lr"] if lr is None else lr

        def make(named):
            constraints = {n: clip_0_1 for n, _ in named if n.endswith("rho")}
            return TF1Adam(named, lr, beta1=0.5, beta2=0.999, eps=1e-8, constraints=constraints)

        self.G_optim = make(self.g_params())
        self.D_optim = make(self.d_params())
        return self.G_optim, self.D_optim

    def _optimizers(self, lr):
        if self.G_optim is None or self.D_optim is None:
            self.make_optimizers(lr)
        return self.G_optim, self.D_optim

    # -- losses ----------------------------------------------------------------------------------
    def discriminator_losses(self, real_A: torch.Tensor, real_B: torch.Tensor,
                             gp_draws: Mapping[str, torch.Tensor] | None = None):
        """The official D loss graph -> (Discriminator_loss, terms). The fakes are generated
        without gradient (only D is updated by this loss). gp_draws: optional `alpha_A`,
        `alpha_B` ([B,1,1,1]) and `noise_A`, `noise_B` (real's shape, dragan) for wgan-*/dragan."""
        cfg = self.config
        gan_type = cfg["gan_type"]
        with torch.no_grad():
            x_ab, _ = self.generate_a2b(real_A)
            x_ba, _ = self.generate_b2a(real_B)
        real_A_logit, real_A_cam, _, _ = self.discriminator_A(real_A)
        real_B_logit, real_B_cam, _, _ = self.discriminator_B(real_B)
        fake_A_logit, fake_A_cam, _, _ = self.discriminator_A(x_ba)
        fake_B_logit, fake_B_cam, _, _ = self.discriminator_B(x_ab)

        d_ad_A = (discriminator_loss(gan_type, real_A_logit, fake_A_logit)
                  + discriminator_loss(gan_type, real_A_cam, fake_A_cam))
        d_ad_B = (discriminator_loss(gan_type, real_B_logit, fake_B_logit)
                  + discriminator_loss(gan_type, real_B_cam, fake_B_cam))
        flags = {}
        if uses_gradient_penalty(gan_type):
            draws = dict(gp_draws or {})
            scaler = getattr(self.D_optim, "loss_scaler", None)
            scale = None if scaler is None else scaler.scale_tensor.reshape(())  # fp16: the D loss scale
            if scale is not None:  # fp16: is a non-finite loss the penalty's (its gradient at the scale)?
                flags["D_unpenalized_finite"] = torch.isfinite(d_ad_A + d_ad_B).float()
            gp_A, gp_cam_A = gradient_penalty(self.discriminator_A, real_A, x_ba, gan_type, cfg["GP_ld"],
                                              draws.get("alpha_A"), draws.get("noise_A"), grad_scale=scale)
            gp_B, gp_cam_B = gradient_penalty(self.discriminator_B, real_B, x_ab, gan_type, cfg["GP_ld"],
                                              draws.get("alpha_B"), draws.get("noise_B"), grad_scale=scale)
            d_ad_A = d_ad_A + gp_A + gp_cam_A
            d_ad_B = d_ad_B + gp_B + gp_cam_B

        D_A_loss = cfg["adv_weight"] * d_ad_A
        D_B_loss = cfg["adv_weight"] * d_ad_B
        total = D_A_loss + D_B_loss + regularization_loss(self.d_params())
        terms = {"Discriminator_loss": total, "D_A_loss": D_A_loss, "D_B_loss": D_B_loss, **flags}
        return total, terms

    def generator_losses(self, real_A: torch.Tensor, real_B: torch.Tensor):
        """The official G loss graph -> (Generator_loss, terms, fakes) with the official summary
        names in `terms` and `fakes` = {"fake_A": x_ba, "fake_B": x_ab} (not detached)."""
        cfg = self.config
        gan_type = cfg["gan_type"]
        x_ab, cam_ab = self.generate_a2b(real_A)
        x_ba, cam_ba = self.generate_b2a(real_B)
        x_aba, _ = self.generate_b2a(x_ab)
        x_bab, _ = self.generate_a2b(x_ba)
        x_aa, cam_aa = self.generate_b2a(real_A)
        x_bb, cam_bb = self.generate_a2b(real_B)

        fake_A_logit, fake_A_cam, _, _ = self.discriminator_A(x_ba)
        fake_B_logit, fake_B_cam, _, _ = self.discriminator_B(x_ab)

        G_A_gan = cfg["adv_weight"] * (generator_loss(gan_type, fake_A_logit)
                                       + generator_loss(gan_type, fake_A_cam))
        G_B_gan = cfg["adv_weight"] * (generator_loss(gan_type, fake_B_logit)
                                       + generator_loss(gan_type, fake_B_cam))
        G_A_cycle = cfg["cycle_weight"] * l1_loss(x_bab, real_B)
        G_B_cycle = cfg["cycle_weight"] * l1_loss(x_aba, real_A)
        G_A_identity = cfg["identity_weight"] * l1_loss(x_aa, real_A)
        G_B_identity = cfg["identity_weight"] * l1_loss(x_bb, real_B)
        G_A_cam = cfg["cam_weight"] * cam_loss(source=cam_ba, non_source=cam_aa)
        G_B_cam = cfg["cam_weight"] * cam_loss(source=cam_ab, non_source=cam_bb)

        G_A_loss = G_A_gan + G_A_cycle + G_A_identity + G_A_cam
        G_B_loss = G_B_gan + G_B_cycle + G_B_identity + G_B_cam
        total = G_A_loss + G_B_loss + regularization_loss(self.g_params())
        terms = {
            "Generator_loss": total,
            "G_A_loss": G_A_loss, "G_A_gan": G_A_gan, "G_A_cycle": G_A_cycle,
            "G_A_identity": G_A_identity, "G_A_cam": G_A_cam,
            "G_B_loss": G_B_loss, "G_B_gan": G_B_gan, "G_B_cycle": G_B_cycle,
            "G_B_identity": G_B_identity, "G_B_cam": G_B_cam,
        }
        return total, terms, {"fake_A": x_ba, "fake_B": x_ab}

    # -- one official sess.run each ----------------------------------------------------------------
    @staticmethod
    def _optimizer_update(optim: TF1Adam, total: torch.Tensor, lr) -> None:
        """Gradients of `total` w.r.t. the optimizer's parameters only (others get none), then
        one TF1 Adam step."""
        params = [p for _, p in optim.named_params]
        scaler = getattr(optim, "loss_scaler", None)  # fp16 training (torch_port.train_precision)
        if scaler is not None:  # a power of two on the device: exact; the wrapped step unscales
            total = total * scaler.scale_tensor.reshape(())
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        optim.step(lr)

    def d_step(self, real_A: torch.Tensor, real_B: torch.Tensor, lr: float | None = None,
               gp_draws: Mapping[str, torch.Tensor] | None = None) -> dict:
        """One `sess.run(D_optim)`: returns {Discriminator_loss, D_A_loss, D_B_loss} as floats
        (as detached device tensors when `loss_values` is "tensor")."""
        lr = self.config["lr"] if lr is None else lr
        _, d_optim = self._optimizers(lr)
        with spectral_norm_run(self):
            total, terms = self.discriminator_losses(real_A, real_B, gp_draws)
            self._optimizer_update(d_optim, total, lr)
        return self._loss_values(terms)

    def g_step(self, real_A: torch.Tensor, real_B: torch.Tensor, lr: float | None = None) -> dict:
        """One `sess.run(G_optim)`: the official G summary terms as floats (as detached device
        tensors when `loss_values` is "tensor"), plus `fake_A` (B -> A) and `fake_B` (A -> B) as
        detached tensors."""
        lr = self.config["lr"] if lr is None else lr
        g_optim, _ = self._optimizers(lr)
        with spectral_norm_run(self):
            total, terms, fakes = self.generator_losses(real_A, real_B)
            self._optimizer_update(g_optim, total, lr)
        out = self._loss_values(terms)
        out.update({k: v.detach() for k, v in fakes.items()})
        return out

    def _loss_values(self, terms: Mapping[str, torch.Tensor]) -> dict:
        if self.loss_values == "tensor":
            return {k: v.detach() for k, v in terms.items()}
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- checkpoints -----------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict; a state dict of another config (light, ch, n_res, n_dis, sn,
        a full model's img_size: what its shapes fix) is named in the error's first line, setting by
        setting, before torch's list of every tensor that differs (hundreds of lines)."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            from .checkpoint import settings_that_differ
            try:
                differ = settings_that_differ(self, dict(state_dict))
            except Exception:  # noqa: BLE001 - whatever the state dict holds, torch's error stands
                differ = []
            if not differ:
                raise
            said = ", ".join(f"{k} {theirs} (this model: {k} {mine})" for k, mine, theirs in differ)
            raise RuntimeError(f"the state dict is of another config: {said}; build the model with "
                               f"that config (weights_convert.tf_to_torch returns it)\n{e}") from None

    def load_tf_state(self, state: Mapping[str, torch.Tensor], strict: bool = True):
        """Load converted TF weights (keys per the naming rule, `u` buffers included)."""
        return self.load_state_dict(state, strict=strict)


def build_ugatit(config: Mapping) -> UGATIT:
    """UGATIT from an options dict; needs light, ch, n_res, n_dis, img_size, sn, smoothing
    (the rest default to the official values)."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise KeyError(f"build_ugatit: config lacks {missing}")
    return UGATIT(config)
