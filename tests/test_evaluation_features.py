"""Feature spaces: the flattened samples, batched featurisation."""
import numpy as np

from pipeline.evaluation.features import data_features, features_in_batches, pixel_features


def test_pixel_features_flatten_each_sample():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(pixel_features(x), x.reshape(2, 12))


def test_batches_give_the_whole_array_in_order():
    x = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
    fn = lambda a: a @ np.arange(8, dtype=np.float32).reshape(4, 2)  # noqa: E731
    np.testing.assert_allclose(features_in_batches(fn, x, batch_size=5), x @ np.arange(8.0).reshape(4, 2), rtol=1e-5)


def test_data_other_than_digits_is_scored_in_pixels(tmp_path):
    fn, label = data_features("npz", tmp_path)
    assert label == "pixels" and fn is pixel_features and not list(tmp_path.iterdir())
