"""The model builder on real MobileNetV2 weights: weight loading, in-graph preprocessing, parts."""

import shutil

import keras
import numpy as np
import pytest

from shared_data import SHARED, WEIGHTS_035_H5, WEIGHTS_035_KERAS3, WEIGHTS_100_H5, require_shared
from facecls import model as model_module
from facecls.errors import FaceclsError
from facecls.model import (
    build_classifier,
    imagenet_weights_file_name,
    load_base,
    predict_batched,
    split_classifier,
    unfreeze_top,
)

SIZE = 96


@pytest.fixture(scope="module")
def weights():
    require_shared()
    return WEIGHTS_035_H5


@pytest.fixture(scope="module")
def classifier(weights):
    keras.utils.set_random_seed(0)
    return build_classifier(load_base(0.35, SIZE, str(weights)), num_classes=4, dropout=0.2)


@pytest.fixture(scope="module")
def pixels():
    generator = np.random.default_rng(0)
    smooth = generator.integers(0, 256, size=(6, 12, 12, 3)).repeat(8, axis=1).repeat(8, axis=2)
    return smooth.astype(np.uint8)


def test_preprocessing_lives_inside_the_model(classifier, pixels):
    base = model_module.base_of(classifier)
    dense = classifier.get_layer(model_module.PROBABILITIES_LAYER)
    kernel, bias = (np.asarray(value) for value in dense.get_weights())
    mid_map, last_map = base.predict_on_batch(pixels.astype(np.float32) / 127.5 - 1.0)
    assert mid_map.shape[1:3] == (6, 6) and last_map.shape[1:3] == (3, 3)  # 96-pixel input
    # The head reads the global mean of the last map and a 3x3 grid of 2x2 windows (stride 2) of the mid map.
    grid = np.stack(
        [np.stack([mid_map[:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2].mean(axis=(1, 2)) for col in range(3)], 1)
         for row in range(3)],
        1,
    )
    features = np.concatenate([last_map.mean(axis=(1, 2)), grid.reshape(len(grid), -1)], axis=1)
    logits = features @ kernel + bias
    manual = np.exp(logits - logits.max(axis=1, keepdims=True))
    manual /= manual.sum(axis=1, keepdims=True)
    probabilities = predict_batched(classifier, pixels)
    np.testing.assert_allclose(probabilities, manual, atol=1e-5)
    # Feeding already scaled pixels must not give the same answer: scaling is not skipped.
    rescaled = predict_batched(classifier, pixels.astype(np.float32) / 127.5 - 1.0)
    assert np.abs(rescaled - probabilities).max() > 1e-3


def test_model_has_only_builtin_layers(classifier):
    names = {type(layer).__name__ for layer in classifier.layers}
    assert names == {
        "InputLayer", "Rescaling", "Functional", "GlobalAveragePooling2D", "AveragePooling2D", "Flatten",
        "Concatenate", "Dropout", "Dense",
    }


@pytest.mark.parametrize(("side", "expected"), [(14, (3, 6, 4)), (7, (3, 3, 2)), (6, (3, 2, 2)), (2, (2, 1, 1)), (1, (1, 1, 1))])
def test_grid_pooling_tiles_the_whole_map(side, expected):
    cells, window, stride = model_module.grid_pooling(side)
    assert (cells, window, stride) == expected
    assert (cells - 1) * stride + window == side  # the last window ends at the map's edge


def test_both_weight_formats_load_the_same_pretrained_arrays(weights):
    legacy = load_base(0.35, SIZE, str(WEIGHTS_035_H5))
    keras3 = load_base(0.35, 64, str(WEIGHTS_035_KERAS3))
    fresh = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None)
    for loaded_array, other_array in zip(legacy.get_weights(), keras3.get_weights()):
        np.testing.assert_array_equal(loaded_array, other_array)
    moving_variance = legacy.get_layer("bn_Conv1").moving_variance.numpy()
    assert not np.allclose(moving_variance, fresh.get_layer("bn_Conv1").moving_variance.numpy())


def test_wrong_alpha_weights_name_the_file_and_the_alpha(weights):
    with pytest.raises(FaceclsError) as caught:
        load_base(0.35, SIZE, str(WEIGHTS_100_H5))
    message = str(caught.value)
    assert WEIGHTS_100_H5.name in message and "alpha 0.35" in message and "--weights" in message
    assert "\n" not in message


def test_missing_and_non_weights_files_are_one_line_errors(weights, tmp_path):
    with pytest.raises(FaceclsError, match="not found.*--weights"):
        load_base(0.35, SIZE, str(tmp_path / "absent.h5"))
    with pytest.raises(FaceclsError, match="must end with .h5"):
        load_base(0.35, SIZE, str(SHARED / "weights" / "PROVENANCE.md"))
    junk = tmp_path / "photo.weights.h5"
    junk.write_bytes(b"\xff\xd8\xff not weights at all")
    with pytest.raises(FaceclsError) as caught:
        load_base(0.35, SIZE, str(junk))
    assert "photo.weights.h5" in str(caught.value) and "\n" not in str(caught.value)


def test_imagenet_download_failure_tells_the_user_to_pass_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/unreachable/")
    with pytest.raises(FaceclsError) as caught:
        load_base(0.35, SIZE, "imagenet", cache_dir=tmp_path)
    message = str(caught.value)
    assert "--weights PATH" in message and "alpha 0.35" in message
    assert imagenet_weights_file_name(0.35) in message and "\n" not in message


def test_imagenet_from_the_keras_cache_works_at_any_input_size(weights, tmp_path):
    (tmp_path / "models").mkdir()
    shutil.copy(WEIGHTS_035_H5, tmp_path / "models" / imagenet_weights_file_name(0.35))
    from_cache = load_base(0.35, SIZE, "imagenet", cache_dir=tmp_path)
    from_path = load_base(0.35, SIZE, str(WEIGHTS_035_H5))
    for cached_array, path_array in zip(from_cache.get_weights(), from_path.get_weights()):
        np.testing.assert_array_equal(cached_array, path_array)


def test_parts_compute_what_the_full_classifier_computes(classifier, pixels):
    parts = split_classifier(classifier, "block_13_expand")
    full = predict_batched(classifier, pixels)
    cut = predict_batched(parts.bottom, pixels)
    np.testing.assert_allclose(predict_batched(parts.top, cut), full, atol=1e-6)
    np.testing.assert_allclose(predict_batched(parts.head, predict_batched(parts.pooled, cut)), full, atol=1e-6)


def test_a_cut_spanned_by_a_residual_connection_is_rejected(classifier):
    with pytest.raises(FaceclsError, match="block_12_add also reads block_11_add.*block_13_expand"):
        split_classifier(classifier, "block_12_depthwise")
    with pytest.raises(FaceclsError, match="must name a layer"):
        split_classifier(classifier, "block_99_expand")
    split_classifier(classifier, "block_12_expand")  # the residual starts at the cut tensor itself


def test_a_cut_above_the_mid_level_layer_is_rejected(classifier):
    with pytest.raises(FaceclsError) as caught:
        split_classifier(classifier, "block_14_expand")
    message = str(caught.value)
    assert "block_13_expand or a layer below it" in message and "block_13_expand_relu" in message
    assert "'block_14_expand'" in message


def test_fine_tuning_keeps_batchnorm_statistics_and_the_bottom(weights, pixels):
    keras.utils.set_random_seed(0)
    base = load_base(0.35, SIZE, str(weights))
    classifier = build_classifier(base, num_classes=3, dropout=0.0)
    parts = split_classifier(classifier, "block_13_expand")
    before = {layer.name: [np.array(value) for value in layer.get_weights()] for layer in base.layers}
    trainable = unfreeze_top(base, parts.top_layers)
    assert "block_13_expand" in trainable and "block_12_expand" not in trainable
    assert not any("BN" in name or name.endswith("_bn") for name in trainable)
    parts.top.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    parts.top.fit(predict_batched(parts.bottom, pixels), np.arange(len(pixels)) % 3, epochs=3, verbose=0)
    base.trainable = False
    for layer in base.layers:
        after = layer.get_weights()
        changed = any(not np.array_equal(old, new) for old, new in zip(before[layer.name], after))
        if isinstance(layer, keras.layers.BatchNormalization) or layer.name in ("block_12_expand", "Conv1"):
            assert not changed, layer.name
    assert any(
        not np.array_equal(old, new)
        for old, new in zip(before["block_16_project"], base.get_layer("block_16_project").get_weights())
    )


def test_predict_batched_pads_the_last_batch_and_checks_shapes(classifier, pixels):
    one_by_one = np.concatenate([predict_batched(classifier, pixels[index : index + 1]) for index in range(5)])
    np.testing.assert_allclose(predict_batched(classifier, pixels[:5], batch_size=4), one_by_one, atol=1e-6)
    assert predict_batched(classifier, pixels[:0]).shape == (0, 4)
    with pytest.raises(FaceclsError, match=r"shape \(N, 96, 96, 3\). Received: \(2, 64, 64, 3\)"):
        predict_batched(classifier, np.zeros((2, 64, 64, 3), np.uint8))
