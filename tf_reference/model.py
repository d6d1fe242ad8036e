"""The official U-GAT-IT graph: generator, discriminators, losses, TF1 Adam, summaries.

`UGATITGraph(cfg).build_train(domain_A, domain_B)` builds what the official `build_model`
builds in the train phase (same scopes, same call order, so the same variables, optimizer
slots and `beta1_power`/`beta1_power_1` names); `build_test()` the test phase.
"""
import numpy as np

from .compat import tf
from .ops import (L1_loss, adaptive_ins_layer_resblock, cam_loss, conv, discriminator_loss,
                  flatten, fully_connected, fully_connected_with_w, generator_loss, global_avg_pooling,
                  global_max_pooling, instance_norm, layer_instance_norm, lrelu, regularization_loss, relu,
                  resblock, tanh, up_sample)


class UGATITGraph:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.light = cfg["light"]
        self.ch = cfg["ch"]
        self.n_res = cfg["n_res"]
        self.n_dis = cfg["n_dis"]
        self.sn = cfg["sn"]
        self.smoothing = cfg["smoothing"]
        self.gan_type = cfg["gan_type"]
        self.batch_size = cfg["batch_size"]
        self.img_size = cfg["img_size"]
        self.img_ch = cfg.get("img_ch", 3)

    # ------------------------------------------------------------ generator
    def generator(self, x_init, reuse=False, scope="generator"):
        channel = self.ch
        with tf.variable_scope(scope, reuse=reuse):
            x = conv(x_init, channel, kernel=7, stride=1, pad=3, pad_type="reflect", scope="conv")
            x = relu(instance_norm(x, scope="ins_norm"))
            for i in range(2):  # down-sampling
                x = conv(x, channel * 2, kernel=3, stride=2, pad=1, pad_type="reflect", scope="conv_" + str(i))
                x = relu(instance_norm(x, scope="ins_norm_" + str(i)))
                channel = channel * 2
            for i in range(self.n_res):  # down-sampling bottleneck
                x = resblock(x, channel, scope="resblock_" + str(i))

            # class activation map: the GMP call reuses the GAP call's CAM_logit variables
            cam_gap_logit, cam_x_weight = fully_connected_with_w(global_avg_pooling(x), scope="CAM_logit")
            x_gap = tf.multiply(x, cam_x_weight)
            cam_gmp_logit, cam_x_weight = fully_connected_with_w(global_max_pooling(x), reuse=True,
                                                                 scope="CAM_logit")
            x_gmp = tf.multiply(x, cam_x_weight)
            cam_logit = tf.concat([cam_gap_logit, cam_gmp_logit], axis=-1)
            x = tf.concat([x_gap, x_gmp], axis=-1)
            x = relu(conv(x, channel, kernel=1, stride=1, scope="conv_1x1"))
            heatmap = tf.squeeze(tf.reduce_sum(x, axis=-1))

            gamma, beta = self.MLP(x, reuse=reuse)
            for i in range(self.n_res):  # up-sampling bottleneck
                x = adaptive_ins_layer_resblock(x, channel, gamma, beta, smoothing=self.smoothing,
                                                scope="adaptive_resblock" + str(i))
            for i in range(2):  # up-sampling
                x = up_sample(x, scale_factor=2)
                x = conv(x, channel // 2, kernel=3, stride=1, pad=1, pad_type="reflect", scope="up_conv_" + str(i))
                x = relu(layer_instance_norm(x, scope="layer_ins_norm_" + str(i)))
                channel = channel // 2
            x = conv(x, channels=3, kernel=7, stride=1, pad=3, pad_type="reflect", scope="G_logit")
            return tanh(x), cam_logit, heatmap

    def MLP(self, x, use_bias=True, reuse=False, scope="MLP"):
        # Width ch * n_res (equals the residual width only for n_res == 4, as in the official code).
        channel = self.ch * self.n_res
        if self.light:
            x = global_avg_pooling(x)
        # full: fully_connected flattens the NHWC map, so the kernel rows are in (h, w, c) order
        with tf.variable_scope(scope, reuse=reuse):
            for i in range(2):
                x = relu(fully_connected(x, channel, use_bias, scope="linear_" + str(i)))
            gamma = fully_connected(x, channel, use_bias, scope="gamma")
            beta = fully_connected(x, channel, use_bias, scope="beta")
            # The official code reshapes with the configured batch size; -1 is the same tensor
            # whenever the official graph builds, and also serves the batch-1 test placeholder.
            gamma = tf.reshape(gamma, shape=[-1, 1, 1, channel])
            beta = tf.reshape(beta, shape=[-1, 1, 1, channel])
            return gamma, beta

    # ------------------------------------------------------------ discriminator
    def discriminator(self, x_init, reuse=False, scope="discriminator"):
        with tf.variable_scope(scope, reuse=reuse):
            local_x, local_cam, local_heatmap = self._discriminator_branch(x_init, self.n_dis - 3, reuse, "local")
            global_x, global_cam, global_heatmap = self._discriminator_branch(x_init, self.n_dis - 1, reuse,
                                                                              "global")
            return [local_x, global_x], [local_cam, global_cam], local_heatmap, global_heatmap

    def _discriminator_branch(self, x_init, n_down, reuse, scope):
        """local: conv_0..conv_{n_dis-4}; global: conv_0..conv_{n_dis-2}; then conv_last, CAM, D_logit."""
        with tf.variable_scope(scope, reuse=reuse):
            channel = self.ch
            x = lrelu(conv(x_init, channel, kernel=4, stride=2, pad=1, pad_type="reflect", sn=self.sn,
                           scope="conv_0"), 0.2)
            for i in range(1, n_down):
                x = lrelu(conv(x, channel * 2, kernel=4, stride=2, pad=1, pad_type="reflect", sn=self.sn,
                               scope="conv_" + str(i)), 0.2)
                channel = channel * 2
            x = lrelu(conv(x, channel * 2, kernel=4, stride=1, pad=1, pad_type="reflect", sn=self.sn,
                           scope="conv_last"), 0.2)
            channel = channel * 2

            cam_gap_logit, cam_x_weight = fully_connected_with_w(global_avg_pooling(x), sn=self.sn,
                                                                 scope="CAM_logit")
            x_gap = tf.multiply(x, cam_x_weight)
            cam_gmp_logit, cam_x_weight = fully_connected_with_w(global_max_pooling(x), sn=self.sn, reuse=True,
                                                                 scope="CAM_logit")
            x_gmp = tf.multiply(x, cam_x_weight)
            cam_logit = tf.concat([cam_gap_logit, cam_gmp_logit], axis=-1)
            x = tf.concat([x_gap, x_gmp], axis=-1)
            # the 1x1 conv after CAM has no spectral norm, even with sn
            x = lrelu(conv(x, channel, kernel=1, stride=1, scope="conv_1x1"), 0.2)
            heatmap = tf.squeeze(tf.reduce_sum(x, axis=-1))
            x = conv(x, channels=1, kernel=4, stride=1, pad=1, pad_type="reflect", sn=self.sn, scope="D_logit")
            return x, cam_logit, heatmap

    # ------------------------------------------------------------ model
    def generate_a2b(self, x_A, reuse=False):
        out, cam, _ = self.generator(x_A, reuse=reuse, scope="generator_B")
        return out, cam

    def generate_b2a(self, x_B, reuse=False):
        out, cam, _ = self.generator(x_B, reuse=reuse, scope="generator_A")
        return out, cam

    def gradient_penalty(self, real, fake, scope, alpha=None, noise=None):
        """GP for wgan-gp/wgan-lp/dragan on the patch and CAM logits. `alpha` ([B,1,1,1]) and the
        dragan `noise` (real's shape) default to fresh uniform draws, as the official code; parity
        tests feed them to inject the same draws into both frameworks."""
        if self.gan_type == "dragan":
            eps = noise if noise is not None else tf.random_uniform(shape=tf.shape(real), minval=0., maxval=1.)
            _, x_var = tf.nn.moments(real, axes=[0, 1, 2, 3])
            fake = real + 0.5 * tf.sqrt(x_var) * eps
        if alpha is None:
            alpha = tf.random_uniform(shape=[self.batch_size, 1, 1, 1], minval=0., maxval=1.)
        interpolated = real + alpha * (fake - real)
        logit, cam_logit, _, _ = self.discriminator(interpolated, reuse=True, scope=scope)

        def penalty(outputs):
            terms = []
            for out in outputs:
                grad = tf.gradients(out, interpolated)[0]
                grad_norm = tf.norm(flatten(grad), axis=1)
                if self.gan_type == "wgan-lp":
                    # the official tf.maximum(0.0, ...): its 0.0 given in the penalty's dtype (the same
                    # float32 Const, named as before) so the float64 free-run graph builds too
                    zero = np.asarray(0.0, grad_norm.dtype.as_numpy_dtype)
                    terms.append(self.ld * tf.reduce_mean(tf.square(tf.maximum(zero, grad_norm - 1.))))
                else:
                    terms.append(self.ld * tf.reduce_mean(tf.square(grad_norm - 1.)))
            return sum(terms)

        return penalty(logit), penalty(cam_logit)

    @property
    def ld(self):
        return self.cfg["GP_ld"]

    def build_train(self, domain_A, domain_B, gp_draws=None):
        """The official train graph on the given input tensors; sets losses, fakes and optimizers.
        `gp_draws` may map alpha_A/alpha_B/noise_A/noise_B to tensors (else random, as official)."""
        cfg = self.cfg
        gp_draws = gp_draws or {}
        self.lr = tf.placeholder(tf.float32, name="learning_rate")
        self.domain_A, self.domain_B = domain_A, domain_B

        x_ab, cam_ab = self.generate_a2b(domain_A)
        x_ba, cam_ba = self.generate_b2a(domain_B)
        x_aba, _ = self.generate_b2a(x_ab, reuse=True)
        x_bab, _ = self.generate_a2b(x_ba, reuse=True)
        x_aa, cam_aa = self.generate_b2a(domain_A, reuse=True)
        x_bb, cam_bb = self.generate_a2b(domain_B, reuse=True)

        real_A_logit, real_A_cam_logit, _, _ = self.discriminator(domain_A, scope="discriminator_A")
        real_B_logit, real_B_cam_logit, _, _ = self.discriminator(domain_B, scope="discriminator_B")
        fake_A_logit, fake_A_cam_logit, _, _ = self.discriminator(x_ba, reuse=True, scope="discriminator_A")
        fake_B_logit, fake_B_cam_logit, _, _ = self.discriminator(x_ab, reuse=True, scope="discriminator_B")

        if "wgan" in self.gan_type or self.gan_type == "dragan":
            GP_A, GP_CAM_A = self.gradient_penalty(domain_A, x_ba, "discriminator_A",
                                                   gp_draws.get("alpha_A"), gp_draws.get("noise_A"))
            GP_B, GP_CAM_B = self.gradient_penalty(domain_B, x_ab, "discriminator_B",
                                                   gp_draws.get("alpha_B"), gp_draws.get("noise_B"))
        else:
            GP_A = GP_CAM_A = GP_B = GP_CAM_B = 0

        G_ad_loss_A = generator_loss(self.gan_type, fake_A_logit) + generator_loss(self.gan_type, fake_A_cam_logit)
        G_ad_loss_B = generator_loss(self.gan_type, fake_B_logit) + generator_loss(self.gan_type, fake_B_cam_logit)
        D_ad_loss_A = (discriminator_loss(self.gan_type, real_A_logit, fake_A_logit)
                       + discriminator_loss(self.gan_type, real_A_cam_logit, fake_A_cam_logit) + GP_A + GP_CAM_A)
        D_ad_loss_B = (discriminator_loss(self.gan_type, real_B_logit, fake_B_logit)
                       + discriminator_loss(self.gan_type, real_B_cam_logit, fake_B_cam_logit) + GP_B + GP_CAM_B)

        adv, cyc, idt, cam = cfg["adv_weight"], cfg["cycle_weight"], cfg["identity_weight"], cfg["cam_weight"]
        t = {}
        t["G_A_gan"] = adv * G_ad_loss_A
        t["G_A_cycle"] = cyc * L1_loss(x_bab, domain_B)
        t["G_A_identity"] = idt * L1_loss(x_aa, domain_A)
        t["G_A_cam"] = cam * cam_loss(source=cam_ba, non_source=cam_aa)
        t["G_B_gan"] = adv * G_ad_loss_B
        t["G_B_cycle"] = cyc * L1_loss(x_aba, domain_A)
        t["G_B_identity"] = idt * L1_loss(x_bb, domain_B)
        t["G_B_cam"] = cam * cam_loss(source=cam_ab, non_source=cam_bb)
        t["G_A_loss"] = t["G_A_gan"] + t["G_A_cycle"] + t["G_A_identity"] + t["G_A_cam"]
        t["G_B_loss"] = t["G_B_gan"] + t["G_B_cycle"] + t["G_B_identity"] + t["G_B_cam"]
        t["D_A_loss"] = adv * D_ad_loss_A
        t["D_B_loss"] = adv * D_ad_loss_B
        self.Generator_loss = t["G_A_loss"] + t["G_B_loss"] + regularization_loss("generator")
        self.Discriminator_loss = t["D_A_loss"] + t["D_B_loss"] + regularization_loss("discriminator")
        t["Generator_loss"] = self.Generator_loss
        t["Discriminator_loss"] = self.Discriminator_loss
        self.terms = t

        self.fake_A, self.fake_B = x_ba, x_ab
        self.real_A, self.real_B = domain_A, domain_B

        t_vars = tf.trainable_variables()
        G_vars = [v for v in t_vars if "generator" in v.name]
        D_vars = [v for v in t_vars if "discriminator" in v.name]
        # G optimizer first: its powers are beta1_power/beta2_power, D's get the _1 suffix.
        self.G_optim = tf.train.AdamOptimizer(self.lr, beta1=0.5, beta2=0.999).minimize(
            self.Generator_loss, var_list=G_vars)
        self.D_optim = tf.train.AdamOptimizer(self.lr, beta1=0.5, beta2=0.999).minimize(
            self.Discriminator_loss, var_list=D_vars)
        self._build_summaries()
        return self

    def _build_summaries(self):
        s = tf.summary
        g_names = ["G_A_loss", "G_A_gan", "G_A_cycle", "G_A_identity", "G_A_cam",
                   "G_B_loss", "G_B_gan", "G_B_cycle", "G_B_identity", "G_B_cam"]
        g_list = [s.scalar(n, self.terms[n]) for n in g_names] + [s.scalar("Generator_loss", self.Generator_loss)]
        for var in tf.trainable_variables():
            if "rho" in var.name:
                g_list += [s.histogram(var.name, var), s.scalar(var.name + "_min", tf.reduce_min(var)),
                           s.scalar(var.name + "_max", tf.reduce_max(var)),
                           s.scalar(var.name + "_mean", tf.reduce_mean(var))]
        d_list = [s.scalar("D_A_loss", self.terms["D_A_loss"]), s.scalar("D_B_loss", self.terms["D_B_loss"]),
                  s.scalar("Discriminator_loss", self.Discriminator_loss)]
        self.G_summary = s.merge(g_list)
        self.D_summary = s.merge(d_list)

    def build_test(self):
        """The official test graph: one placeholder per domain, batch 1."""
        shape = [1, self.img_size, self.img_size, self.img_ch]
        self.test_domain_A = tf.placeholder(tf.float32, shape, name="test_domain_A")
        self.test_domain_B = tf.placeholder(tf.float32, shape, name="test_domain_B")
        self.test_fake_B, _ = self.generate_a2b(self.test_domain_A)
        self.test_fake_A, _ = self.generate_b2a(self.test_domain_B)
        return self
