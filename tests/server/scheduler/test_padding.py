"""Variable-length batching: lane keys, padding a batch, cutting outputs back."""

from __future__ import annotations

import numpy as np
import pytest
from kairos.server.scheduler.padding import ANY_LENGTH, Padding, PaddingConfigError
from kairos.server.types import ModelSignature, TensorSpec

SIGNATURE = ModelSignature(
    (TensorSpec("input_ids", "INT64", (-1, -1)), TensorSpec("attention_mask", "INT64", (-1, -1))),
    (TensorSpec("logits", "FP32", (-1, 10)), TensorSpec("tokens", "FP32", (-1, -1, 4))),
    64,
)
SPEC = {"input_ids": {"dim": 1, "value": 0}, "attention_mask": {"dim": 1, "value": 0}}


def _key(length: int) -> tuple:
    return (("input_ids", (length,)), ("attention_mask", (length,)))


def test_without_buckets_every_length_shares_one_lane():
    padding = Padding.parse(SPEC, [], None, SIGNATURE)
    assert padding.lane_key(_key(9)) == padding.lane_key(_key(120)) == _key(ANY_LENGTH)


def test_buckets_make_one_lane_per_bucket():
    padding = Padding.parse(SPEC, [32, 16, 64], None, SIGNATURE)
    assert padding.lane_key(_key(9)) == padding.lane_key(_key(16)) == _key(16)
    assert padding.lane_key(_key(17)) == _key(32)
    assert padding.lane_key(_key(200)) == _key(200)  # beyond the last bucket: its own lane


def test_gather_pads_to_the_longest_or_the_bucket_and_trim_cuts_back():
    parts = [np.ones((2, 3), np.int64), np.full((1, 5), 7, np.int64)]
    joined = Padding.parse(SPEC, [], None, SIGNATURE).gather("input_ids", parts)
    np.testing.assert_array_equal(joined, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [7, 7, 7, 7, 7]])
    assert Padding.parse(SPEC, [8], None, SIGNATURE).gather("input_ids", parts).shape == (3, 8)
    padding = Padding.parse(SPEC, [], {"tokens": 1}, SIGNATURE)
    part = padding.trim({"tokens": np.zeros((1, 5, 4)), "logits": np.zeros((1, 10))}, 3)
    assert part["tokens"].shape == (1, 3, 4) and part["logits"].shape == (1, 10)
    assert padding.length({"input_ids": parts[1], "attention_mask": parts[1]}) == 5


@pytest.mark.parametrize(("spec", "message"), [
    ({"nope": {"dim": 1}}, "no input 'nope'"),
    ({"input_ids": {"dim": 0}}, "dynamic non-batch dimension"),
    ({"input_ids": {"dim": 2}}, "dynamic non-batch dimension"),
])
def test_bad_settings_name_the_problem(spec, message):
    with pytest.raises(PaddingConfigError, match=message):
        Padding.parse(spec, [], None, SIGNATURE)


def test_config_file_settings_parse():
    from kairos.server.repository.config import parse_settings

    settings = parse_settings({"scheduling": {"padding": SPEC, "padding_buckets": [16, 32],
                                              "padded_outputs": {"tokens": 1}}})
    padding = Padding.parse(settings.scheduling.padding, settings.scheduling.padding_buckets,
                            settings.scheduling.padded_outputs, SIGNATURE)
    assert padding.buckets == (16, 32) and padding.outputs == {"tokens": 1}
