"""Building blocks of the Hierarchical Probabilistic U-Net (Kohl et al. 2019), after the reference
code (deepmind-research `hierarchical_probabilistic_unet/`, `unet_utils.py` and `model.py`):

- `ResBlock`: a pre-activated residual block (`unet_utils.res_block`);
- `HierarchicalCore`: a residual encoder and a decoder that draws a Gaussian latent at each of
  its coarsest levels and concatenates it in front of the decoder features before going up
  (`model._HierarchicalCore`), used twice: the prior net (input: the image) and the posterior
  net (input: the one-hot segmentation concatenated with the image);
- `StitchingDecoder`: the rest of the decoder up to full resolution and the 1x1 logits
  (`model._StitchingDecoder`).

Every convolution has the reference's initialisers and regularisers: orthogonal kernels, biases
from a truncated N(0, 0.001), L2 `weight_decay * sum(w**2)` on kernels and biases. Average
pooling down, nearest-neighbour x2 up (the reference's `align_corners=True` resize by 2 picks
`floor(i / 2)`, a plain repeat). No normalisation layers, as the reference.
"""

import keras
import tensorflow as tf

from tfprobunet.layers import own_policy

_PACKAGE = "tfprobunet"


def _conv(filters, kernel_size, weight_decay, name):
    decay = keras.regularizers.L2(weight_decay) if weight_decay else None
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", name=name,
        kernel_initializer=keras.initializers.Orthogonal(gain=1.0),
        bias_initializer=keras.initializers.TruncatedNormal(stddev=0.001),
        kernel_regularizer=decay, bias_regularizer=decay)


def upsample_nearest(x):
    """x2 nearest-neighbour upsampling; works when h and w are known only at run time."""
    return tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)


def downsample(x):
    """2x2 average pooling, stride 2, 'valid'."""
    return tf.nn.avg_pool2d(x, 2, 2, "VALID")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResBlock(keras.layers.Layer):
    """A pre-activated residual block: `skip + residual` with residual = ReLU, then
    `num_convs` 3x3 convs to `down_channels` with ReLU between them (not after the last), then a
    1x1 conv to `channels` if `down_channels != channels`; the skip is the input, through a 1x1
    conv to `channels` if `input_channels != channels`.

    Args:
        input_channels: channels of the input.
        channels: output channels.
        down_channels: channels of the 3x3 convolutions.
        num_convs: 3x3 convolutions (reference: 3).
        weight_decay: L2 coefficient on kernels and biases.

    Call arguments:
        inputs: `(b, h, w, input_channels)`.

    Returns:
        `(b, h, w, channels)`.
    """

    def __init__(self, input_channels, channels, down_channels, num_convs=3, weight_decay=1e-5,
                 **kwargs):
        super().__init__(**kwargs)
        self.input_channels = input_channels
        self.channels = channels
        self.down_channels = down_channels
        self.num_convs = num_convs
        self.weight_decay = weight_decay
        with own_policy(self):
            for j in range(num_convs):
                setattr(self, f"conv{j}", _conv(down_channels, 3, weight_decay, f"conv{j}"))
            self.skip_projection = (_conv(channels, 1, weight_decay, "skip_projection")
                                    if input_channels != channels else None)
            self.residual_projection = (_conv(channels, 1, weight_decay, "residual_projection")
                                        if down_channels != channels else None)

    def build(self, input_shape=None):
        channels = self.input_channels
        for j in range(self.num_convs):
            getattr(self, f"conv{j}").build((None, None, None, channels))
            channels = self.down_channels
        if self.residual_projection is not None:
            self.residual_projection.build((None, None, None, self.down_channels))
        if self.skip_projection is not None:
            self.skip_projection.build((None, None, None, self.input_channels))
        self.built = True

    def call(self, inputs):
        skip = inputs
        residual = tf.nn.relu(inputs)
        for j in range(self.num_convs):
            residual = getattr(self, f"conv{j}")(residual)
            if j < self.num_convs - 1:
                residual = tf.nn.relu(residual)
        if self.residual_projection is not None:
            residual = self.residual_projection(residual)
        if self.skip_projection is not None:
            skip = self.skip_projection(skip)
        return skip + residual

    def get_config(self):
        config = super().get_config()
        config.update(input_channels=self.input_channels, channels=self.channels,
                      down_channels=self.down_channels, num_convs=self.num_convs,
                      weight_decay=self.weight_decay)
        return config


class _Residual(keras.layers.Layer):
    """The arguments the core and the stitching decoder share, stored and serialised once, and
    their stacks of `ResBlock`s (kept in one flat list each)."""

    def __init__(self, channels, down_channels, blocks_per_level=3, convs_per_block=3,
                 weight_decay=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(channels)
        self.down_channels = tuple(down_channels)
        self.blocks_per_level = blocks_per_level
        self.convs_per_block = convs_per_block
        self.weight_decay = weight_decay

    def _level_blocks(self, input_channels, level, name):
        """The `blocks_per_level` blocks of encoder level `level` (decoder levels are given as
        `len(channels) - 1 - level`), the first taking `input_channels`."""
        blocks = []
        for i in range(self.blocks_per_level):
            blocks.append(ResBlock(input_channels if i == 0 else self.channels[level],
                                   self.channels[level], self.down_channels[level],
                                   self.convs_per_block, self.weight_decay, name=f"{name}_{i}"))
        return blocks

    def _run_level(self, blocks, level, x):
        for block in blocks[level * self.blocks_per_level:(level + 1) * self.blocks_per_level]:
            x = block(x)
        return x

    def build(self, input_shape=None):
        for layer in self._layers_to_build():
            layer.build()
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(channels=list(self.channels), down_channels=list(self.down_channels),
                      blocks_per_level=self.blocks_per_level,
                      convs_per_block=self.convs_per_block, weight_decay=self.weight_decay)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HierarchicalCore(_Residual):
    """The prior (or posterior) net of the HPU-Net: a residual encoder, then a decoder whose
    first `len(latent_dims)` levels each predict a per-pixel diagonal Gaussian from the decoder
    features (a 1x1 conv to `(loc, log_scale)`, scale = exp(log_scale)), pick a latent z from
    it, and concatenate `[z, features]` before upsampling x2, concatenating the encoder's skip
    and running `blocks_per_level` residual blocks. A coarser latent conditions the finer
    Gaussians only through these features, as in the reference.

    Args:
        channels, down_channels: per encoder level, fine to coarse.
        latent_dims: latent channels per latent level, coarse to fine; at most
            `len(channels) - 1` levels.
        blocks_per_level, convs_per_block, weight_decay: of the residual blocks.
        input_channels: channels of the input (image; or one-hot segmentation and image).
        final_blocks: run the decoder blocks after the last latent. The posterior net does not:
            in the reference they compute features that nothing reads.

    Call arguments:
        inputs: `(b, h, w, input_channels)`.
        choose: `(level, loc, log_scale) -> z`, each `(b, h_l, w_l, latent_dims[level])`:
            which latent to inject at each level (a draw, the mean, or given latents).

    Returns:
        dict: `encoder` (list of encoder features, fine to coarse), `decoder` (the last decoder
        features), `parameters` (list of `(loc, log_scale)` float32, coarse to fine) and
        `latents` (list of the injected z).
    """

    def __init__(self, channels, down_channels, latent_dims, blocks_per_level=3,
                 convs_per_block=3, weight_decay=1e-5, input_channels=1, final_blocks=True,
                 **kwargs):
        super().__init__(channels, down_channels, blocks_per_level, convs_per_block,
                         weight_decay, **kwargs)
        self.latent_dims = tuple(latent_dims)
        self.input_channels = input_channels
        self.final_blocks = final_blocks
        levels = len(self.channels)
        reverse = levels - 1
        with own_policy(self):
            self.encoder_blocks = []
            for level in range(levels):
                previous = input_channels if level == 0 else self.channels[level - 1]
                self.encoder_blocks += self._level_blocks(previous, level, f"encoder{level}")
            self.heads = [_conv(2 * n, 1, weight_decay, f"loc_log_scale{level}")
                          for level, n in enumerate(self.latent_dims)]
            self.decoder_blocks = []
            for level in range(len(self.latent_dims) - (0 if final_blocks else 1)):
                # Decoder level `level + 1`: encoder level `reverse - level - 1`.
                incoming = (self.latent_dims[level] + self.channels[reverse - level]
                            + self.channels[reverse - level - 1])
                self.decoder_blocks += self._level_blocks(incoming, reverse - level - 1,
                                                          f"decoder{level + 1}")

    def _layers_to_build(self):
        return self.encoder_blocks + self.decoder_blocks

    def build(self, input_shape=None):
        super().build(input_shape)
        reverse = len(self.channels) - 1
        for level, head in enumerate(self.heads):
            head.build((None, None, None, self.channels[reverse - level]))

    def call(self, inputs, choose):
        return self.decode(self.encode(inputs), choose)

    def encode(self, inputs):
        """The encoder's features, a list fine to coarse."""
        encoder = []
        x = inputs
        for level in range(len(self.channels)):
            if level:
                x = downsample(x)
            x = self._run_level(self.encoder_blocks, level, x)
            encoder.append(x)
        return encoder

    def decode(self, encoder, choose):
        """The decoder with its latents on the `encoder` features: `call`'s dict."""
        parameters, latents = [], []
        features = encoder[-1]
        for level, head in enumerate(self.heads):
            loc, log_scale = tf.split(tf.cast(head(features), tf.float32), 2, axis=-1)
            z = choose(level, loc, log_scale)
            parameters.append((loc, log_scale))
            latents.append(z)
            if level == len(self.heads) - 1 and not self.final_blocks:
                break
            features = tf.concat([tf.cast(z, features.dtype), features], axis=-1)
            features = tf.concat([upsample_nearest(features), encoder[-level - 2]], axis=-1)
            features = self._run_level(self.decoder_blocks, level, features)
        return dict(encoder=encoder, decoder=features, parameters=parameters, latents=latents)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dims=list(self.latent_dims), input_channels=self.input_channels,
                      final_blocks=self.final_blocks)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StitchingDecoder(_Residual):
    """The decoder levels below the latent ones (`f_comb` of the reference): for each, upsample
    x2, concatenate the encoder's skip, `blocks_per_level` residual blocks; then a 1x1 conv to
    the class logits.

    Args:
        channels, down_channels, blocks_per_level, convs_per_block, weight_decay: as the core's.
        num_latent_levels: the core's latent levels.
        num_classes: K.

    Call arguments:
        encoder: the prior core's encoder features (fine to coarse).
        decoder: the prior core's decoder features.

    Returns:
        logits `(b, h, w, K)` float32.
    """

    def __init__(self, channels, down_channels, num_latent_levels, num_classes,
                 blocks_per_level=3, convs_per_block=3, weight_decay=1e-5, **kwargs):
        super().__init__(channels, down_channels, blocks_per_level, convs_per_block,
                         weight_decay, **kwargs)
        self.num_latent_levels = num_latent_levels
        self.num_classes = num_classes
        levels = len(self.channels)
        with own_policy(self):
            self.blocks = []
            for level in range(num_latent_levels + 1, levels):
                encoder_level = levels - 1 - level
                self.blocks += self._level_blocks(
                    self.channels[encoder_level + 1] + self.channels[encoder_level],
                    encoder_level, f"stitch{level}")
            self.logits = _conv(num_classes, 1, weight_decay, "logits")

    def _layers_to_build(self):
        return self.blocks

    def build(self, input_shape=None):
        super().build(input_shape)
        self.logits.build((None, None, None, self.channels[0]))

    def call(self, encoder, decoder):
        x = decoder
        for i, level in enumerate(range(self.num_latent_levels + 1, len(self.channels))):
            x = tf.concat([upsample_nearest(x), encoder[len(self.channels) - 1 - level]], axis=-1)
            x = self._run_level(self.blocks, i, x)
        return tf.cast(self.logits(x), tf.float32)

    def get_config(self):
        config = super().get_config()
        config.update(num_latent_levels=self.num_latent_levels, num_classes=self.num_classes)
        return config
