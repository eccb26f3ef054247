"""Requests merge only within a lane of equal shapes: the shape key of a variable-length
(encoder) request names every non-batch dim, so different sequence lengths never share a
batch, while different row counts of one length do."""

from __future__ import annotations

import numpy as np
from kairos.server.types import ModelSignature, TensorSpec
from kairos.server.validation import validate_inputs

ENCODER = ModelSignature(
    (TensorSpec("input_ids", "INT64", (-1, -1)), TensorSpec("attention_mask", "INT64", (-1, -1))),
    (TensorSpec("logits", "FP32", (-1, 10)),),
    64,
)


def _request(rows: int, length: int) -> dict[str, np.ndarray]:
    ids = np.ones((rows, length), np.int64)
    return {"input_ids": ids, "attention_mask": ids}


def test_sequence_length_is_part_of_the_shape_key():
    rows_a, key_a = validate_inputs(ENCODER, _request(2, 17))
    rows_b, key_b = validate_inputs(ENCODER, _request(3, 17))
    _, key_c = validate_inputs(ENCODER, _request(2, 18))
    assert (rows_a, rows_b) == (2, 3)
    assert key_a == key_b  # same length, any rows: one lane, may batch
    assert key_a != key_c  # another length: another lane, never padded together
    assert key_a == (("input_ids", (17,)), ("attention_mask", (17,)))
