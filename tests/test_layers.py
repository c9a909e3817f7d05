import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfprobunet import layers


def test_fcomb_equals_concat_then_1x1_convs_in_numpy():
    rng = np.random.default_rng(0)
    fcomb = layers.FComb(num_classes=3, channels=5, num_layers=2)
    features = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
    z = rng.normal(size=(2, 3, 2)).astype(np.float32)
    got = fcomb(features, z).numpy()
    assert got.shape == (2, 3, 4, 4, 3)

    # Reference: tile z over the image, concatenate, then dense layers, per sample.
    weights = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in fcomb.hidden]
    logits_w, logits_b = fcomb.logits.kernel.numpy(), fcomb.logits.bias.numpy()
    for b in range(2):
        for m in range(3):
            x = np.concatenate([features[b], np.broadcast_to(z[b, m], (4, 4, 2))], axis=-1)
            for w, bias in weights:
                x = np.maximum(x @ w + bias, 0.0)
            np.testing.assert_allclose(got[b, m], x @ logits_w + logits_b, rtol=1e-4,
                                       atol=1e-5)
    # z of rank 2 is one sample per image.
    np.testing.assert_allclose(fcomb(features, z[:, 0]).numpy(), got[:, 0], rtol=1e-5,
                               atol=1e-6)


def test_unet_output_shape_and_official_initialisation():
    unet = layers.UNet([8, 16, 32, 48], convs_per_block=3)
    out = unet(np.zeros((2, 32, 24, 1), np.float32))
    assert out.shape == (2, 32, 24, 8)
    # 3 convs per block, 4 encoder + 3 decoder blocks, kernel and bias each.
    assert len(unet.trainable_weights) == 2 * 3 * 7
    kernel = unet.encoder.blocks[1][0].kernel.numpy()  # 3x3x8 -> 16: He-normal std sqrt(2/72)
    assert abs(kernel.std() - np.sqrt(2 / 72)) < 0.03
    # L2 on kernels only: weight_decay * sum(w^2) / 2, as the official l2_loss.
    conv = unet.encoder.blocks[0][0]
    expected = 1e-5 * np.sum(conv.kernel.numpy() ** 2) / 2
    np.testing.assert_allclose(conv.kernel.regularizer(conv.kernel), expected, rtol=1e-5)
    assert conv.bias_regularizer is None


def test_gaussian_returns_a_distribution_with_bounded_log_scale():
    gaussian = layers.AxisAlignedGaussian(latent_dim=3, num_channels=[4, 8], max_log_scale=2.0)
    dist = gaussian(np.random.default_rng(0).random((5, 8, 8, 2), dtype=np.float32))
    assert isinstance(dist, tfp.distributions.MultivariateNormalDiag)
    assert dist.batch_shape == (5,) and dist.event_shape == (3,)
    # Push the raw log-scale far out: the clamp keeps it inside (-2, 2).
    gaussian.head.bias.assign(np.array([0, 0, 0, 1e4, -1e4, 0.5], np.float32))
    _, log_scale = gaussian.loc_log_scale(np.zeros((1, 8, 8, 2), np.float32))
    assert np.all(np.abs(log_scale.numpy()) <= 2.0)
    np.testing.assert_allclose(log_scale.numpy()[0, 2], 2.0 * np.tanh(0.25), rtol=1e-3)


def test_spatial_size_error_names_valid_sizes():
    with pytest.raises(ValueError, match=r"divisible by .* = 8.*height=20.*16 and 24"):
        layers.check_spatial_size(20, 16, (8, 16, 32, 64))
    with pytest.raises(ValueError, match="num_channels"):
        layers.UNet([])


def test_layer_configs_round_trip():
    for layer in (layers.UNet([4, 8], 2, 0.0), layers.AxisAlignedGaussian(3, [4, 8], 1, 1e-4, 5.0),
                  layers.FComb(4, 8, 2, 1e-3)):
        config = layer.get_config()
        clone = layer.__class__.from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer)


def test_bilinear_upsampling_hand_worked_and_with_unknown_sizes():
    # Half-pixel centres: output coordinate (i + 0.5) / 2 - 0.5, clamped at the edges, so a
    # row [0, 1] becomes [0, 0.25, 0.75, 1].
    x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[None, :, :, None]
    rows = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], np.float32)
    expected = rows @ x[0, :, :, 0] @ rows.T
    np.testing.assert_allclose(layers._upsample(x)[0, :, :, 0], expected, rtol=1e-6)
    unet = layers.UNet([4, 8], 1)
    run = tf.function(unet, input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
    assert run(np.zeros((1, 12, 20, 1), np.float32)).shape == (1, 12, 20, 4)


def test_conv_block_config_round_trip_and_list_access():
    block = layers.Container(4, 2, weight_decay=0.0, name="level1")
    images = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    out = block(images)
    assert out.shape == (2, 8, 8, 4) and len(block) == 2
    assert [conv.name for conv in block] == ["level1_conv0", "level1_conv1"]
    clone = layers.Container.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    clone.build(images.shape)
    clone.set_weights(block.get_weights())
    np.testing.assert_array_equal(clone(images), out)
    # The two convolutions applied in order, by hand.
    expected = images
    for conv in (block[0], block[1]):
        expected = np.maximum(conv.convolution_op(expected, conv.kernel) + conv.bias, 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size, divisor, expected", [(243, 8, 248), (240, 8, 240), (1, 4, 4),
                                                     (200, 1, 200), (129, 128, 256)])
def test_padded_size_rounds_up_to_the_divisor(size, divisor, expected):
    assert layers.padded_size(size, divisor) == expected
