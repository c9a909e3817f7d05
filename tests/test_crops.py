"""`tfprobunet.data.crops.random_windows`: images whose pixel values are their coordinates, so
that each window says where it was cut, in the image and in every mask; windows within each
example's own extent, never its padding; a single-pixel lesion in every window with
`labelled_share=1`, in the share worked out by hand with the default; uniform positions with
`labelled_share=0`; seeds; small examples padded with the ignore label; refused arguments."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tfprobunet
from fixtures import write_folder_cases
from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.data import checks, crops

SIDE = 48   # every example's array; its extent may be smaller, the rest padding
RATERS = 3


def _examples(extents, lesions=None, side=SIDE):
    """A dataset of `side x side` examples padded at the bottom and right beyond their
    `extents` [(h, w)]: the image (2 channels) holds `row * 1000 + col` and `-1` in the padding
    (no padding rule would repeat it), rater `a`'s mask `a * 100000 + row * 1000 + col` and 255
    in the padding. With `lesions` [(rater, row, col)], the masks are background (0) but for
    that one pixel."""
    rows, cols = np.mgrid[:side, :side]
    images, masks = [], []
    for index, (height, width) in enumerate(extents):
        inside = (rows < height) & (cols < width)
        image = np.where(inside, rows * 1000 + cols, -1).astype(np.float32)
        if lesions is None:
            mask = np.stack([a * 100000 + rows * 1000 + cols for a in range(RATERS)])
        else:
            mask = np.zeros((RATERS, side, side), np.int32)
            rater, row, col = lesions[index]
            mask[rater, row, col] = 1
        images.append(np.stack([image, image], axis=-1))
        masks.append(np.where(inside, mask, IGNORE_LABEL).astype(np.int32))
    return tf.data.Dataset.from_tensor_slices((np.stack(images), np.stack(masks)))


def _windows(dataset, passes, **kwargs):
    """`(images, masks)` of `passes` passes of `random_windows(dataset, **kwargs)`."""
    windows = crops.random_windows(dataset, **kwargs).repeat(passes).batch(1000)
    batches = list(windows.as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _starts(images):
    """The (row, col) of each window's top-left pixel, read from its value."""
    return np.divmod(images[:, 0, 0, 0].astype(np.int64), 1000)


@pytest.mark.parametrize("labelled_share", [0.0, crops.LABELLED_SHARE, 1.0])
def test_the_image_and_every_mask_are_cut_at_the_same_place_within_the_extent(labelled_share):
    extents = [(40, 36), (SIDE, SIDE), (24, 47)]
    images, masks = _windows(_examples(extents), 40, size=(16, 24),
                             labelled_share=labelled_share)
    assert images.shape == (120, 16, 24, 2) and images.dtype == np.float32
    assert masks.shape == (120, RATERS, 16, 24) and masks.dtype == np.int32
    row, col = _starts(images)
    expected = ((row[:, None, None] + np.arange(16)[:, None]) * 1000
                + col[:, None, None] + np.arange(24))
    np.testing.assert_array_equal(images[..., 0], expected)
    np.testing.assert_array_equal(images[..., 1], expected)
    for a in range(RATERS):
        np.testing.assert_array_equal(masks[:, a], a * 100000 + expected)
    extent = np.array(extents * 40)  # the examples in order, pass after pass
    assert (row >= 0).all() and (col >= 0).all()
    assert (row + 16 <= extent[:, 0]).all() and (col + 24 <= extent[:, 1]).all()
    # Not always the same place: the windows move within each example.
    assert len(set(zip(row[::3], col[::3]))) > 10


def test_windows_of_a_folder_of_mixed_sizes_never_show_its_padding(tmp_path):
    root = str(tmp_path)
    written = {**write_folder_cases(root, ["big0", "big1"], size=(75, 90)),
               **write_folder_cases(root, ["small0", "small1"], size=(40, 50), seed=1)}
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1, 0, 0))
    examples = list(source.dataset.as_numpy_iterator())
    assert examples[0][1].shape == (RATERS, 80, 96) and (examples[0][1] == IGNORE_LABEL).any()
    windows = crops.random_windows(source.dataset, (32, 48), seed=1)
    assert checks.is_checked(windows)  # as from_folders' dataset was: the same labels, or 255
    for _ in range(5):
        for (image, masks), name in zip(windows.as_numpy_iterator(), sorted(written)):
            assert image.shape == (32, 48, 1) and masks.shape == (RATERS, 32, 48)
            assert not (masks == IGNORE_LABEL).any()
            # The window is a piece of the image as written.
            grey, _ = written[name]
            pieces = np.lib.stride_tricks.sliding_window_view(grey / 255.0, (32, 48))
            assert np.isclose(pieces, image[..., 0], atol=1e-6).all(axis=(2, 3)).any()


@pytest.mark.parametrize("lesion", [(2, 30, 25), (0, 0, 0), (1, 59, 49), (2, 3, 48)])
def test_with_labelled_share_1_every_window_holds_a_single_pixel_lesion(lesion):
    rater, row, col = lesion
    dataset = _examples([(60, 50)], [lesion], side=64)
    images, masks = _windows(dataset, 200, size=(16, 16), labelled_share=1)
    assert (masks[:, rater].sum(axis=(1, 2)) == 1).all()
    assert not (masks == IGNORE_LABEL).any()
    if lesion == (2, 30, 25):
        # Centred as far as the extent allows: the lesion at the window's (8, 8).
        np.testing.assert_array_equal(masks[:, rater, 8, 8], 1)
        # Uniform windows miss it most of the time (16 / 45 rows times 16 / 35 columns).
        _, uniform = _windows(dataset, 200, size=(16, 16), labelled_share=0)
        assert (uniform[:, rater].sum(axis=(1, 2)) == 1).mean() < 0.3


def test_the_default_share_of_windows_is_centred_on_the_lesion():
    # A window of 16 holds the pixel (30, 25) of a 60 x 50 extent from 16 of its 45 row starts
    # and 16 of its 35 column starts: uniform windows hold it with p = 256 / 1575, and with a
    # third centred on it, 1/3 + 2/3 * 256 / 1575 = 0.4417 of the windows do.
    dataset = _examples([(60, 50)], [(1, 30, 25)], side=64)
    _, masks = _windows(dataset, 4000, size=(16, 16))
    expected = 1 / 3 + 2 / 3 * 256 / 1575
    standard_error = np.sqrt(expected * (1 - expected) / 4000)
    assert abs((masks[:, 1].sum(axis=(1, 2)) == 1).mean() - expected) < 4 * standard_error
    assert crops.LABELLED_SHARE == pytest.approx(1 / 3)


def test_with_labelled_share_0_window_positions_are_uniform_over_the_extent():
    # A 40 x 36 extent, 16 x 16 windows: 25 x 21 starts. A lesion in a corner, which share 0
    # must not favour.
    draws = 10500
    dataset = _examples([(40, 36)], [(0, 0, 0)])
    images, _ = _windows(_examples([(40, 36)]), draws, size=(16, 16), labelled_share=0)
    row, col = _starts(images)
    counts = np.zeros((25, 21))
    np.add.at(counts, (row, col), 1)
    assert counts.sum() == draws and (counts > 0).all()  # every start reached, and no other
    expected = draws / counts.size
    chi_square = ((counts - expected) ** 2 / expected).sum()
    dof = counts.size - 1
    assert chi_square < dof + 6 * np.sqrt(2 * dof)
    for starts, n in ((row, 25), (col, 21)):
        standard_error = np.sqrt((n ** 2 - 1) / 12 / draws)
        assert abs(starts.mean() - (n - 1) / 2) < 4 * standard_error
    images, masks = _windows(dataset, 2000, size=(16, 16), labelled_share=0)
    row, col = _starts(images)
    assert abs(row.mean() - 12) < 4 * np.sqrt((25 ** 2 - 1) / 12 / 2000)
    assert (masks[:, 0, 0, 0] == 1).mean() < 0.01  # the corner starts 1 window in 525


def test_same_seed_same_windows_another_seed_or_pass_other_windows():
    dataset = _examples([(40, 36), (SIDE, SIDE)])

    def starts(seed, passes=1):
        windows = crops.random_windows(dataset.repeat(20), (16, 16), seed=seed)
        return [_starts(np.stack([image for image, _ in windows.as_numpy_iterator()]))
                for _ in range(passes)]

    first, second = starts(3, passes=2)
    np.testing.assert_array_equal(starts(3)[0], first)
    assert not np.array_equal(starts(4)[0], first)
    assert not np.array_equal(second, first)  # each pass draws new windows


def test_examples_smaller_than_the_window_are_padded_with_the_ignore_label():
    images, masks = _windows(_examples([(10, 12), (40, 6)]), 5, size=(16, 16))
    for image, mask, (height, width) in zip(images, masks, [(10, 12), (40, 6)] * 5):
        row, col = _starts(image[None])
        top = min(height, 16)
        assert col[0] == 0 and (height > 16 or row[0] == 0)
        # Rows and columns beyond the extent repeat its last ones in the image (never the
        # source's -1), and are ignored in every mask.
        rows = np.minimum(row[0] + np.arange(16), height - 1)
        cols = np.minimum(np.arange(16), width - 1)
        np.testing.assert_array_equal(image[..., 0], rows[:, None] * 1000 + cols)
        inside = (np.arange(16)[:, None] < top) & (np.arange(16) < width)
        assert (mask[:, ~inside] == IGNORE_LABEL).all()
        assert not (mask[:, inside] == IGNORE_LABEL).any()


@pytest.mark.parametrize("size", [128, (128,), (128, 128, 1), (0, 16), (16, -1), (16.0, 16),
                                  ("16", "16"), (True, 16), None])
def test_a_bad_size_is_refused_naming_it(size):
    expected = r"two positive ints.*Received: size=" + re.escape(repr(size))
    with pytest.raises(ValueError, match=expected):
        crops.random_windows(_examples([(40, 36)]), size)


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), "half", None, True])
def test_a_share_outside_0_1_is_refused_naming_it(share):
    with pytest.raises(ValueError, match=r"\[0, 1\].*Received: labelled_share="):
        crops.random_windows(_examples([(40, 36)]), (16, 16), labelled_share=share)


def test_a_dataset_of_other_elements_is_refused():
    images = tf.data.Dataset.from_tensor_slices(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(image \(h, w, c\), annotations \(A, h, w\)\)"):
        crops.random_windows(images, (4, 4))


def test_the_step_cost_table_and_its_sentence_are_their_json():
    """docs/data.md's step-cost table and the sentence below it, cell by cell and number by
    number, from docs/results/speed/step_cost.json (bench/step_cost.py)."""
    import json
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "results", "speed", "step_cost.json")) as f:
        measured = json.load(f)
    with open(os.path.join(root, "docs", "data.md")) as f:
        page = f.read()
    table = page.split("<!-- step-cost: docs/results/speed/step_cost.json -->")[1].split(
        "<!-- end step-cost -->")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()
            [2:]]
    results, speedup = measured["results"], measured["crop_speedup"]
    crop = "x".join(map(str, measured["config"]["crop"]))
    assert [row[0] for row in rows] == list(speedup)
    for size, whole, cropped, per_pixel, faster in rows:
        assert whole == f"{results[size]['seconds_per_step']['median']:.3f}"
        assert cropped == f"{results[f'{size}_crop_{crop}']['seconds_per_step']['median']:.3f}"
        assert per_pixel == f"{results[size]['microseconds_per_pixel']:.2f}"
        assert faster == f"{speedup[size]:.2f}x"
    sentence = " ".join(page.split("<!-- end step-cost -->")[1].split("\n\n")[1].split())
    per_pixel = [results[size]["microseconds_per_pixel"] for size in speedup]
    assert f"({min(per_pixel):.2f} to {max(per_pixel):.2f} µs here)" in sentence
    assert f"train {speedup['256x208']:.2f} times as fast" in sentence
    assert f"128x128 windows: {speedup['64x64']:.2f}x)" in sentence
    assert speedup["64x64"] < 1 < speedup["256x208"] and re.search(r"costs more", sentence)
