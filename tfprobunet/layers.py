"""Building blocks of the Probabilistic U-Net (Kohl et al., NeurIPS 2018).

`UNet` extracts per-pixel features, `AxisAlignedGaussian` maps an image (prior) or an image
with its segmentation (posterior) to a diagonal Gaussian over the latent space, and `FComb`
combines the features with a latent sample into segmentation logits. Defaults follow the
official implementation (github.com/SimonKohl/probabilistic_unet): He-normal kernels, biases
from a truncated N(0, 0.001), 2x2 average pooling down, bilinear upsampling up, L2 weight decay on
kernels only (as the official training script applies it).
"""

import contextlib

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

_PACKAGE = "tfprobunet"


def check_num_channels(num_channels):
    """Return `num_channels` as a tuple of positive ints or raise a `ValueError`."""
    num_channels = tuple(num_channels)
    if not num_channels or not all(isinstance(c, int) and c > 0 for c in num_channels):
        raise ValueError(
            "`num_channels` must be a non-empty list of positive integers, one per U-Net "
            f"level, e.g. [32, 64, 128, 192]. Received: num_channels={list(num_channels)}"
        )
    return num_channels


def size_divisor(num_channels):
    """Image height and width must be multiples of this: one 2x2 pooling per level below the first."""
    return 2 ** (len(num_channels) - 1)


def padded_size(size, divisor):
    """`size` rounded up to a multiple of `divisor` (e.g. `size_divisor(num_channels)`): the
    height or width an image is padded to for the U-Net."""
    return -(-size // divisor) * divisor


def check_spatial_size(height, width, num_channels):
    """Raise a `ValueError` naming valid sizes if `height` or `width` is not divisible."""
    divisor = size_divisor(num_channels)
    for name, size in (("height", height), ("width", width)):
        if size is not None and size % divisor:
            lower = max(divisor, size // divisor * divisor)
            raise ValueError(
                f"Image {name} must be divisible by 2**(len(num_channels) - 1) = {divisor} for "
                f"num_channels={list(num_channels)}. Received {name}={size}; the nearest sizes "
                f"that work are {lower} and {lower + divisor}."
            )


@contextlib.contextmanager
def global_dtype_policy(policy):
    """Keras' global dtype policy set to `policy` (a name or a `DTypePolicy`) while the block
    runs, and restored after it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def own_policy(layer):
    """`global_dtype_policy(layer.dtype_policy)`: a layer (or model) that creates sublayers
    creates them within it, so they compute with its policy. Keras gives new layers the global
    policy; without this, a model saved under `mixed_bfloat16` and loaded in a float32 session
    would compute in float32 inside and bfloat16 only at its top."""
    return global_dtype_policy(layer.dtype_policy)


def _regularizer(weight_decay):
    # The official code adds weight_decay * tf.nn.l2_loss(w) = weight_decay * sum(w**2) / 2.
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def _official_init(weight_decay):
    """Initialisers and regulariser of the official code, as Keras layer arguments: L2 decay on
    kernels only, as the official training script (`training/train_prob_unet.py`) passes
    `regularizers={'w': l2_regularizer(1.0)}` (the model's own default would decay biases
    too)."""
    return dict(
        kernel_initializer="he_normal",
        bias_initializer=keras.initializers.TruncatedNormal(stddev=0.001),
        kernel_regularizer=_regularizer(weight_decay),
    )


def _conv(filters, kernel_size, weight_decay, name):
    """A 3x3 (or k x k) convolution + ReLU."""
    return keras.layers.Conv2D(filters, kernel_size, padding="same", activation="relu", name=name,
                               **_official_init(weight_decay))


def _dense(units, weight_decay, name):
    """The weights of a 1x1 convolution, held by a dense layer (`_matmul` applies them)."""
    return keras.layers.Dense(units, name=name, **_official_init(weight_decay))


def _matmul(x, kernel, bias=None):
    """A 1x1 convolution of `x (..., c_in)`: one 2-D MatMul (+ BiasAdd), which TF fuses with a
    following ReLU on CPU; a rank-4 matmul would broadcast and run several times slower."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    y = tf.reshape(y, tf.concat([shape[:-1], tf.shape(kernel)[-1:]], 0))
    y.set_shape(x.shape[:-1].concatenate(kernel.shape[-1:]))
    return y


def _upsample(x):
    """Bilinear x2 upsampling (half-pixel centres). Unlike `keras.layers.UpSampling2D`, it works
    when height and width are unknown until run time, as in an exported serving signature."""
    size = tf.shape(x)[1:3] * 2
    y = tf.image.resize(x, size, method="bilinear")
    y.set_shape([x.shape[0], None if x.shape[1] is None else 2 * x.shape[1],
                 None if x.shape[2] is None else 2 * x.shape[2], x.shape[3]])
    return y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Container(keras.layers.Layer):
    """A block of 3x3 convolutions + ReLU applied in order; indexable like a list of them.

    Each convolution is an attribute of the block, so Keras saves every weight on every 3.x
    version: Keras < 3.15 silently drops layers kept in nested Python lists. The class and
    attribute names give the weight paths that tfprobunet 0.1 wrote with nested lists on Keras
    3.15 (`blocks/container/conv2d`, `blocks/container_1/conv2d_1`, ...), so its `.keras` files
    still load. Do not rename the class or the attributes: Keras derives the paths of saved
    weights from them (the snake-cased class name, the attribute names).

    Args:
        filters: output channels of every convolution.
        num_convs: convolutions in the block.
        weight_decay: L2 coefficient on kernels (biases are not decayed).
        name: the block's name, also the prefix of its convolutions' (`{name}_conv{j}`).

    Call arguments:
        inputs: `(b, h, w, c)`.

    Returns:
        `(b, h, w, filters)`.
    """

    def __init__(self, filters, num_convs, weight_decay=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_convs = num_convs
        self.weight_decay = weight_decay
        with own_policy(self):
            for j in range(num_convs):
                setattr(self, self._attribute(j),
                        _conv(filters, 3, weight_decay, f"{self.name}_conv{j}"))

    @staticmethod
    def _attribute(j):
        # The names Keras' saving gave the j-th layer of a list of Conv2D layers.
        return "conv2d" if j == 0 else f"conv2d_{j}"

    def __getitem__(self, j):
        return getattr(self, self._attribute(range(self.num_convs)[j]))

    def __len__(self):
        return self.num_convs

    def build(self, input_shape):
        channels = input_shape[-1]
        for j in range(self.num_convs):
            self[j].build((None, None, None, channels))
            channels = self[j].filters
        self.built = True

    def call(self, inputs):
        x = inputs
        for j in range(self.num_convs):
            x = self[j](x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, num_convs=self.num_convs,
                      weight_decay=self.weight_decay)
        return config


class _ConvNet(keras.layers.Layer):
    """The arguments every conv net here shares, stored and serialised once."""

    def __init__(self, num_channels, convs_per_block=3, weight_decay=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = check_num_channels(num_channels)
        self.convs_per_block = convs_per_block
        self.weight_decay = weight_decay

    def get_config(self):
        config = super().get_config()
        config.update(
            num_channels=list(self.num_channels),
            convs_per_block=self.convs_per_block,
            weight_decay=self.weight_decay,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Encoder(_ConvNet):
    """VGG-style encoder: per level, 2x2 average pooling (except the first) and 3x3 convs + ReLU.

    Args:
        num_channels: filters per level, e.g. `[32, 64, 128, 192]`.
        convs_per_block: 3x3 convolutions per level.
        weight_decay: L2 coefficient on kernels (official: 1e-5); biases are not decayed.

    Call arguments:
        inputs: `(b, h, w, c)`, h and w divisible by `2**(len(num_channels) - 1)`.
        dropout: None, or a function `(x, j) -> x` applied to the input of each of the
            `dropout_blocks` inner-most levels (`j` counts them from 0). The first level's
            input, the image, is never dropped: with `dropout_blocks >= len(num_channels)`,
            the inputs of every level but the first are.

    Returns:
        A list with one `(b, h / 2**i, w / 2**i, num_channels[i])` tensor per level `i`.
    """

    def __init__(self, num_channels, convs_per_block=3, weight_decay=1e-5, **kwargs):
        super().__init__(num_channels, convs_per_block, weight_decay, **kwargs)
        with own_policy(self):
            self.pool = keras.layers.AveragePooling2D(2, name="pool")
            self.blocks = [Container(filters, convs_per_block, weight_decay, name=f"level{i}")
                           for i, filters in enumerate(self.num_channels)]

    def build(self, input_shape):
        channels = input_shape[-1]
        for block in self.blocks:
            block.build((None, None, None, channels))
            channels = block.filters
        self.built = True

    def call(self, inputs, dropout=None, dropout_blocks=0):
        outputs = []
        x = inputs
        # Never the first level: its input is the image itself.
        first_dropped = max(len(self.blocks) - dropout_blocks, 1)
        for i, block in enumerate(self.blocks):
            if i:
                x = self.pool(x)
            if dropout is not None and i >= first_dropped:
                x = dropout(x, i - first_dropped)
            x = block(x)
            outputs.append(x)
        return outputs


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UNet(_ConvNet):
    """The U-Net feature extractor f_U-Net(X): encoder, then bilinear upsampling + skip concat.

    There is no class head: the output is the last decoder feature map, which `FComb`
    combines with a latent sample.

    Args:
        num_channels: filters per level (default `[32, 64, 128, 192]`: see `ProbabilisticUNet`).
        convs_per_block: 3x3 convolutions per block, encoder and decoder.
        weight_decay: L2 coefficient on kernels; biases are not decayed.

    Call arguments:
        images: `(b, h, w, c)`, h and w divisible by `2**(len(num_channels) - 1)`.
        dropout: None, or a function `(x, j) -> x` applied to the input of each of the
            `dropout_blocks` inner-most encoder and decoder blocks (`j` counts them), as the
            paper's Dropout U-Net baseline does. The image is never dropped: a U-Net of L
            levels has L - 1 decoder blocks, and its first encoder block's input is the image,
            so with `dropout_blocks >= L` dropout acts on the inputs of encoder blocks 2 to L
            and of all L - 1 decoder blocks.
        dropout_blocks: how many inner-most encoder (and decoder) blocks `dropout` acts on
            (the paper's: 3).
        return_bottleneck: also return the deepest encoder map (MoSE's gate reads it).

    Returns:
        features `(b, h, w, num_channels[0])`; with `return_bottleneck`, `(features,
        bottleneck (b, h / 2**(L-1), w / 2**(L-1), num_channels[-1]))`.
    """

    def __init__(self, num_channels=(32, 64, 128, 192), convs_per_block=3, weight_decay=1e-5,
                 **kwargs):
        super().__init__(num_channels, convs_per_block, weight_decay, **kwargs)
        with own_policy(self):
            self.encoder = Encoder(self.num_channels, convs_per_block, weight_decay,
                                   name="encoder")
            self.up_blocks = [Container(self.num_channels[i], convs_per_block, weight_decay,
                                        name=f"up{i}")
                              for i in range(len(self.num_channels) - 2, -1, -1)]

    def build(self, input_shape):
        self.encoder.build(input_shape)
        channels = self.num_channels[-1]
        for i, block in zip(range(len(self.num_channels) - 2, -1, -1), self.up_blocks):
            block.build((None, None, None, channels + self.num_channels[i]))
            channels = block.filters
        self.built = True

    def call(self, images, dropout=None, dropout_blocks=3, return_bottleneck=False):
        if dropout is None:
            skips = self.encoder(images)
        else:
            skips = self.encoder(images, dropout=dropout, dropout_blocks=dropout_blocks)
        x = skips[-1]
        for i, (skip, block) in enumerate(zip(reversed(skips[:-1]), self.up_blocks)):
            x = keras.ops.concatenate([_upsample(x), skip], axis=-1)
            if dropout is not None and i < dropout_blocks:
                x = dropout(x, dropout_blocks + i)
            x = block(x)
        return (x, skips[-1]) if return_bottleneck else x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AxisAlignedGaussian(_ConvNet):
    """A conv net that maps its input to a Gaussian with diagonal covariance over R^latent_dim.

    Encoder, spatial mean, then a 1x1 conv to `2 * latent_dim` values split into `loc` and
    `log_scale`. Used as the prior net P(z|X) (input: the image) and the posterior net
    Q(z|X, Y) (input: `concat(image, one_hot(segmentation) - 0.5)`).

    `log_scale` is kept in `(-max_log_scale, max_log_scale)` by a soft clamp
    `max_log_scale * tanh(raw / max_log_scale)`: the identity near 0 (so training starts as in the
    official code), but the scale can never reach 0 or infinity, which is how the KL term
    otherwise turns into NaN after a few thousand steps at beta = 1.

    Args:
        latent_dim: dimension N of the latent space (official: 6).
        num_channels: encoder filters per level.
        convs_per_block: 3x3 convolutions per level.
        weight_decay: L2 coefficient on kernels (biases are not decayed).
        max_log_scale: bound of the soft clamp on `log_scale`.

    Call arguments:
        inputs: `(b, h, w, c)`.

    Returns:
        `tfd.MultivariateNormalDiag` with `loc` and `scale_diag` of shape `(b, latent_dim)`.
    """

    def __init__(self, latent_dim=6, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 weight_decay=1e-5, max_log_scale=6.0, **kwargs):
        super().__init__(num_channels, convs_per_block, weight_decay, **kwargs)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"`latent_dim` must be a positive integer. Received: {latent_dim!r}")
        if max_log_scale <= 0:
            raise ValueError(f"`max_log_scale` must be > 0. Received: {max_log_scale!r}")
        self.latent_dim = latent_dim
        self.max_log_scale = float(max_log_scale)
        with own_policy(self):
            self.encoder = Encoder(self.num_channels, convs_per_block, weight_decay,
                                   name="encoder")
            self.head = _dense(2 * latent_dim, weight_decay, "loc_log_scale")

    def build(self, input_shape):
        self.encoder.build(input_shape)
        self.head.build((None, self.num_channels[-1]))
        self.built = True

    def loc_log_scale(self, inputs):
        """`(loc, log_scale)`, each `(b, latent_dim)` float32 whatever the layer's compute dtype
        (mixed precision keeps the distributions in float32): the parameters, before building a
        distribution."""
        encoding = keras.ops.mean(self.encoder(inputs)[-1], axis=(1, 2))
        loc, raw = keras.ops.split(keras.ops.cast(self.head(encoding), "float32"), 2, axis=-1)
        return loc, self.max_log_scale * keras.ops.tanh(raw / self.max_log_scale)

    def call(self, inputs):
        loc, log_scale = self.loc_log_scale(inputs)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=keras.ops.exp(log_scale))

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, max_log_scale=self.max_log_scale)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FComb(keras.layers.Layer):
    """f_comb: the latent sample broadcast over the image, concatenated to the U-Net features,
    `num_layers` 1x1 convs + ReLU and a 1x1 conv to the class logits.

    The first 1x1 conv acts on `concat(features, z)`, which equals
    `features @ W_f + z @ W_z + b`: the features' part is computed once per image and only the
    `z @ W_z` part once per sample, so m samples cost one feature projection, not m.

    Args:
        num_classes: K, the number of output classes.
        channels: filters of the hidden 1x1 convs (official: the U-Net's first-level channels).
        num_layers: hidden 1x1 convs (official: 3).
        weight_decay: L2 coefficient on the hidden layers (the logits layer is not decayed, as in
            the official code).

    Call arguments:
        features: `(b, h, w, F)`.
        z: `(b, N)` for one sample per image, or `(b, m, N)` for m samples per image.

    Returns:
        logits `(b, h, w, K)` for `z (b, N)`, `(b, m, h, w, K)` for `z (b, m, N)`, float32 (under
        mixed precision too: computed in the compute dtype, then cast for the softmax).
    """

    def __init__(self, num_classes, channels, num_layers=3, weight_decay=1e-5, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1 (official: 3). Received: {num_layers}")
        self.num_classes = num_classes
        self.channels = channels
        self.num_layers = num_layers
        self.weight_decay = weight_decay
        with own_policy(self):
            self.hidden = [_dense(channels, weight_decay, f"conv1x1_{i}")
                           for i in range(num_layers)]
            self.logits = _dense(num_classes, 0.0, "logits")

    def build(self, features_shape, z_shape):
        self.hidden[0].build((None, features_shape[-1] + z_shape[-1]))
        for layer in self.hidden[1:]:
            layer.build((None, self.channels))
        self.logits.build((None, self.channels))
        self.built = True

    def call(self, features, z):
        features = keras.ops.cast(features, self.compute_dtype)
        z = keras.ops.cast(z, self.compute_dtype)
        first = self.hidden[0]
        num_features = features.shape[-1]
        projected = _matmul(features, first.kernel[:num_features])  # (b, h, w, C), once per image
        shift = tf.matmul(z, first.kernel[num_features:]) + first.bias  # (b, C) or (b, m, C)
        if z.shape.rank == 2:
            return self._head(projected + shift[:, None, None, :])
        # One sample at a time: a sample's activations stay in cache, which makes 16 samples at
        # 128x128 four times faster than one (b, m, h, w, C) tensor (bench/sampling.py).
        shifts = tf.transpose(shift, (1, 0, 2))  # (m, b, C)
        if tf.executing_eagerly():
            # Eagerly, map_fn re-traces its function at every call (~0.4 s); a Python loop runs
            # the same ops without that cost.
            per_sample = tf.stack([self._head(projected + s[:, None, None, :]) for s in shifts])
        else:
            per_sample = tf.map_fn(lambda s: self._head(projected + s[:, None, None, :]), shifts,
                                   fn_output_signature=tf.float32)
        return tf.transpose(per_sample, (1, 0, 2, 3, 4))

    def _head(self, x):
        """ReLU of the first layer's pre-activation, the other hidden layers, the logits."""
        x = tf.nn.relu(x)
        for layer in self.hidden[1:]:
            x = tf.nn.relu(_matmul(x, layer.kernel, layer.bias))
        return keras.ops.cast(_matmul(x, self.logits.kernel, self.logits.bias), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            num_layers=self.num_layers,
            weight_decay=self.weight_decay,
        )
        return config
