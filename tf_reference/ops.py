"""The official U-GAT-IT layers in `tf.compat.v1` graph mode, without the TF1 layers and contrib modules.

Every variable is created with `get_variable` under the name the official code gives it
(layers conv2d → `<scope>/conv2d/kernel|bias`, layers dense → `<scope>/dense/...`,
contrib instance_norm → `<scope>/beta|gamma`), so official checkpoints load unchanged.
Layer outputs are recorded by scope name (see `record_endpoints`) for the parity harness.
"""
import contextlib

from .compat import tf

weight_init = tf.random_normal_initializer(mean=0.0, stddev=0.02)
L2_SCALE = 1e-4


def weight_regularizer(w):
    """contrib l2_regularizer(1e-4): scale * sum(w**2) / 2, collected in REGULARIZATION_LOSSES."""
    return tf.multiply(tf.convert_to_tensor(L2_SCALE, dtype=w.dtype.base_dtype), tf.nn.l2_loss(w),
                       name="l2_regularizer")


# ---------------------------------------------------------------- activation recording
_ENDPOINTS = []


@contextlib.contextmanager
def record_endpoints():
    """Collect {scope name: output tensor} of every layer built inside the block."""
    acts = {}
    _ENDPOINTS.append(acts)
    try:
        yield acts
    finally:
        _ENDPOINTS.pop()


def _record(x, suffix=""):
    if _ENDPOINTS:
        # fetch through an identity: grappler's remapper may fuse (and drop) the layer's own node
        _ENDPOINTS[-1][tf.get_variable_scope().name + suffix] = tf.identity(x)
    return x


# ---------------------------------------------------------------- layers
def conv_padding(kernel, stride, pad):
    """Official padding rule: symmetric if (kernel - stride) is even, else (pad, kernel-stride-pad)."""
    if (kernel - stride) % 2 == 0:
        return pad, pad, pad, pad
    return pad, kernel - stride - pad, pad, kernel - stride - pad


def conv(x, channels, kernel=4, stride=2, pad=0, pad_type="zero", use_bias=True, sn=False, scope="conv_0"):
    with tf.variable_scope(scope):
        if pad > 0:
            top, bottom, left, right = conv_padding(kernel, stride, pad)
            mode = "REFLECT" if pad_type == "reflect" else "CONSTANT"
            x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], mode=mode)
        in_ch = x.get_shape()[-1]
        if sn:
            # spectral-norm convs create kernel/bias directly under the scope
            w = tf.get_variable("kernel", shape=[kernel, kernel, in_ch, channels], initializer=weight_init,
                                regularizer=weight_regularizer)
            x = tf.nn.conv2d(x, spectral_norm(w), strides=[1, stride, stride, 1], padding="VALID")
            if use_bias:
                bias = tf.get_variable("bias", [channels], initializer=tf.constant_initializer(0.0))
                x = tf.nn.bias_add(x, bias)
        else:
            # what the TF1 conv2d layer creates: <scope>/conv2d/kernel|bias
            with tf.variable_scope("conv2d"):
                w = tf.get_variable("kernel", shape=[kernel, kernel, in_ch, channels], initializer=weight_init,
                                    regularizer=weight_regularizer)
                b = tf.get_variable("bias", [channels], initializer=tf.zeros_initializer()) if use_bias else None
            x = tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding="VALID")
            if use_bias:
                x = tf.nn.bias_add(x, b)
        return _record(x)


def flatten(x):
    return tf.reshape(x, [tf.shape(x)[0], -1]) if x.get_shape()[1:].num_elements() is None else \
        tf.reshape(x, [-1, x.get_shape()[1:].num_elements()])


def fully_connected_with_w(x, use_bias=True, sn=False, reuse=False, scope="linear"):
    """CAM logit: one [C, 1] kernel and scalar bias; the channel weights are kernel + bias."""
    with tf.variable_scope(scope, reuse=reuse):
        x = flatten(x)
        channels = x.get_shape().as_list()[-1]
        w = tf.get_variable("kernel", [channels, 1], initializer=weight_init,
                            regularizer=weight_regularizer)
        if sn:
            w = spectral_norm(w)
        if use_bias:
            bias = tf.get_variable("bias", [1], initializer=tf.constant_initializer(0.0))
            x = tf.matmul(x, w) + bias
            weights = tf.gather(tf.transpose(tf.nn.bias_add(w, bias)), 0)
        else:
            x = tf.matmul(x, w)
            weights = tf.gather(tf.transpose(w), 0)
        return x, weights


def fully_connected(x, units, use_bias=True, sn=False, scope="linear"):
    with tf.variable_scope(scope):
        x = flatten(x)
        channels = x.get_shape().as_list()[-1]
        if sn:
            w = tf.get_variable("kernel", [channels, units], initializer=weight_init,
                                regularizer=weight_regularizer)
            x = tf.matmul(x, spectral_norm(w))
            if use_bias:
                x = x + tf.get_variable("bias", [units], initializer=tf.constant_initializer(0.0))
        else:
            # what the TF1 dense layer creates: <scope>/dense/kernel|bias
            with tf.variable_scope("dense"):
                w = tf.get_variable("kernel", [channels, units], initializer=weight_init,
                                    regularizer=weight_regularizer)
                b = tf.get_variable("bias", [units], initializer=tf.zeros_initializer()) if use_bias else None
            x = tf.matmul(x, w)
            if use_bias:
                x = tf.nn.bias_add(x, b)
        return _record(x)


def resblock(x_init, channels, use_bias=True, scope="resblock_0"):
    with tf.variable_scope(scope):
        with tf.variable_scope("res1"):
            x = conv(x_init, channels, kernel=3, stride=1, pad=1, pad_type="reflect", use_bias=use_bias)
            x = instance_norm(x)
            x = relu(x)
        with tf.variable_scope("res2"):
            x = conv(x, channels, kernel=3, stride=1, pad=1, pad_type="reflect", use_bias=use_bias)
            x = instance_norm(x)
        return _record(x + x_init)


def adaptive_ins_layer_resblock(x_init, channels, gamma, beta, use_bias=True, smoothing=True,
                                scope="adaptive_resblock"):
    with tf.variable_scope(scope):
        with tf.variable_scope("res1"):
            x = conv(x_init, channels, kernel=3, stride=1, pad=1, pad_type="reflect", use_bias=use_bias)
            x = adaptive_instance_layer_norm(x, gamma, beta, smoothing)
            x = relu(x)
        with tf.variable_scope("res2"):
            x = conv(x, channels, kernel=3, stride=1, pad=1, pad_type="reflect", use_bias=use_bias)
            x = adaptive_instance_layer_norm(x, gamma, beta, smoothing)
        return _record(x + x_init)


def up_sample(x, scale_factor=2):
    _, h, w, _ = x.get_shape().as_list()
    return tf.image.resize_nearest_neighbor(x, size=[h * scale_factor, w * scale_factor])


def global_avg_pooling(x):
    return tf.reduce_mean(x, axis=[1, 2])


def global_max_pooling(x):
    return tf.reduce_max(x, axis=[1, 2])


def lrelu(x, alpha=0.01):
    return tf.nn.leaky_relu(x, alpha)


def relu(x):
    return tf.nn.relu(x)


def tanh(x):
    return tf.tanh(x)


# ---------------------------------------------------------------- normalisation
def _rho_constraint(x):
    return tf.clip_by_value(x, clip_value_min=0.0, clip_value_max=1.0)


def _ins_and_layer_norm(x, eps=1e-5):
    ins_mean, ins_sigma = tf.nn.moments(x, axes=[1, 2], keep_dims=True)
    x_ins = (x - ins_mean) / (tf.sqrt(ins_sigma + eps))
    ln_mean, ln_sigma = tf.nn.moments(x, axes=[1, 2, 3], keep_dims=True)
    x_ln = (x - ln_mean) / (tf.sqrt(ln_sigma + eps))
    return x_ins, x_ln


def adaptive_instance_layer_norm(x, gamma, beta, smoothing=True, scope="instance_layer_norm"):
    """AdaLIN: rho (init 1, clipped to [0,1] by the optimizer) mixes instance and layer norm;
    with smoothing the effective rho is clip(rho - 0.1, 0, 1)."""
    with tf.variable_scope(scope):
        ch = x.shape[-1]
        x_ins, x_ln = _ins_and_layer_norm(x)
        rho = tf.get_variable("rho", [ch], initializer=tf.constant_initializer(1.0), constraint=_rho_constraint)
        if smoothing:
            rho = tf.clip_by_value(rho - 0.1, 0.0, 1.0)
        x_hat = rho * x_ins + (1 - rho) * x_ln
        return _record(x_hat * gamma + beta)


def layer_instance_norm(x, scope="layer_instance_norm"):
    """LIN of the decoder: rho init 0, gamma 1, beta 0, per channel."""
    with tf.variable_scope(scope):
        ch = x.shape[-1]
        x_ins, x_ln = _ins_and_layer_norm(x)
        rho = tf.get_variable("rho", [ch], initializer=tf.constant_initializer(0.0), constraint=_rho_constraint)
        gamma = tf.get_variable("gamma", [ch], initializer=tf.constant_initializer(1.0))
        beta = tf.get_variable("beta", [ch], initializer=tf.constant_initializer(0.0))
        x_hat = rho * x_ins + (1 - rho) * x_ln
        return _record(x_hat * gamma + beta)


def instance_norm(x, scope="instance_norm"):
    """contrib.layers.instance_norm(epsilon=1e-5, center, scale): beta then gamma, evaluated as
    nn.batch_normalization: x * (rsqrt(var+eps)*gamma) + (beta - mean * rsqrt(var+eps)*gamma)."""
    with tf.variable_scope(scope):
        ch = x.get_shape()[-1]
        beta = tf.get_variable("beta", [ch], initializer=tf.zeros_initializer())
        gamma = tf.get_variable("gamma", [ch], initializer=tf.ones_initializer())
        mean, variance = tf.nn.moments(x, [1, 2], keep_dims=True)
        beta = tf.reshape(beta, [1, 1, 1, -1])
        gamma = tf.reshape(gamma, [1, 1, 1, -1])
        return _record(tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-5))


def spectral_norm(w, iteration=1):
    """One power iteration from the stored `u`; `u` is assigned on every evaluation (test phase too)."""
    w_shape = w.shape.as_list()
    w = tf.reshape(w, [-1, w_shape[-1]])
    u = tf.get_variable("u", [1, w_shape[-1]], initializer=tf.random_normal_initializer(), trainable=False)
    u_hat = u
    v_hat = None
    for _ in range(iteration):
        v_hat = tf.nn.l2_normalize(tf.matmul(u_hat, tf.transpose(w)))
        u_hat = tf.nn.l2_normalize(tf.matmul(v_hat, w))
    u_hat = tf.stop_gradient(u_hat)
    v_hat = tf.stop_gradient(v_hat)
    sigma = tf.matmul(tf.matmul(v_hat, w), tf.transpose(u_hat))
    with tf.control_dependencies([u.assign(u_hat)]):
        w_norm = tf.reshape(w / sigma, w_shape)
    return w_norm


# ---------------------------------------------------------------- losses
def L1_loss(x, y):
    return tf.reduce_mean(tf.abs(x - y))


def cam_loss(source, non_source):
    identity_loss = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(source), logits=source))
    non_identity_loss = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(non_source), logits=non_source))
    return identity_loss + non_identity_loss


def regularization_loss(scope_name):
    """Sum of the collected L2 terms whose name contains `scope_name` ('generator'/'discriminator')."""
    items = [item for item in tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES) if scope_name in item.name]
    return tf.reduce_sum(items)


def discriminator_loss(loss_func, real, fake):
    loss = []
    for i in range(2):
        if "wgan" in loss_func:
            real_loss = -tf.reduce_mean(real[i])
            fake_loss = tf.reduce_mean(fake[i])
        elif loss_func == "lsgan":
            real_loss = tf.reduce_mean(tf.squared_difference(real[i], 1.0))
            fake_loss = tf.reduce_mean(tf.square(fake[i]))
        elif loss_func in ("gan", "dragan"):
            real_loss = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(real[i]), logits=real[i]))
            fake_loss = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(fake[i]), logits=fake[i]))
        elif loss_func == "hinge":
            real_loss = tf.reduce_mean(relu(1.0 - real[i]))
            fake_loss = tf.reduce_mean(relu(1.0 + fake[i]))
        else:
            raise ValueError(f"unknown gan_type {loss_func!r}")
        loss.append(real_loss + fake_loss)
    return sum(loss)


def generator_loss(loss_func, fake):
    loss = []
    for i in range(2):
        if "wgan" in loss_func or loss_func == "hinge":
            fake_loss = -tf.reduce_mean(fake[i])
        elif loss_func == "lsgan":
            fake_loss = tf.reduce_mean(tf.squared_difference(fake[i], 1.0))
        elif loss_func in ("gan", "dragan"):
            fake_loss = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(fake[i]), logits=fake[i]))
        else:
            raise ValueError(f"unknown gan_type {loss_func!r}")
        loss.append(fake_loss)
    return sum(loss)
