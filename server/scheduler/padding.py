"""Variable-length batching: requests whose shapes differ only in a declared padded
dimension share a lane, and are padded to the longest (or its length bucket) when batched.

```yaml
scheduling:
  padding:                      # input: the dimension (batch dim = 0) and the pad value
    input_ids: {dim: 1, value: 0}
    attention_mask: {dim: 1, value: 0}
  padding_buckets: [16, 32, 64, 128]   # optional: pad up to the next bucket; lanes per bucket
  padded_outputs: {token_logits: 1}    # optional: outputs sliced back to each request's length
```

Without buckets every length shares one lane and a batch is padded to its longest
request. With buckets a request joins the lane of the smallest bucket >= its length (a
longer one keeps a lane of its own length) and the batch is padded to that bucket, so a
batch never pads more than one bucket's step. The model must give padded positions no
weight (an attention mask), so each row's answer equals its unpadded run.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..types import ModelSignature

ANY_LENGTH = -1  # the lane key's stand-in for a padded dimension without buckets


class PaddingConfigError(ValueError):
    """A padding setting that does not fit the model: the message names it."""


@dataclass(frozen=True)
class Padding:
    dims: Mapping[str, int]  # input -> padded dim (batch dim = 0)
    values: Mapping[str, float]
    buckets: tuple[int, ...] = ()
    outputs: Mapping[str, int] | None = None  # output -> dim sliced back per request

    @classmethod
    def parse(cls, padding: object, buckets: object, outputs: object,
              signature: ModelSignature) -> Padding | None:
        """The settings checked against the model's signature (None: no padding)."""
        if not padding:
            return None
        if not isinstance(padding, dict) or signature.max_batch_size <= 0:
            raise PaddingConfigError("scheduling.padding must map input names to {dim, value} on a "
                                     "model that batches")
        dims, values = {}, {}
        for name, spec in padding.items():
            entry = signature.input(name)
            if entry is None:
                raise PaddingConfigError(f"scheduling.padding: the model has no input '{name}'")
            dim = spec.get("dim") if isinstance(spec, dict) else None
            if not isinstance(dim, int) or not 1 <= dim < len(entry.shape) or entry.shape[dim] != -1:
                raise PaddingConfigError(f"scheduling.padding.{name}.dim must name a dynamic non-batch "
                                         f"dimension of {list(entry.shape)}, not {dim!r}")
            dims[name], values[name] = dim, spec.get("value", 0)
        buckets = tuple(sorted(buckets or ()))
        if any(not isinstance(b, int) or b < 1 for b in buckets):
            raise PaddingConfigError("scheduling.padding_buckets must be positive integers")
        outputs = dict(outputs or {})
        for name, dim in outputs.items():
            if signature.output(name) is None or not isinstance(dim, int) or dim < 1:
                raise PaddingConfigError(f"scheduling.padded_outputs: '{name}: {dim}' is not an output "
                                         "and non-batch dimension of the model")
        return cls(dims, values, buckets, outputs)

    def target(self, length: int) -> int:
        """The padded length of a lane holding `length`: its bucket, or any (-1)."""
        if not self.buckets:
            return ANY_LENGTH
        i = bisect.bisect_left(self.buckets, length)
        return self.buckets[i] if i < len(self.buckets) else length

    def lane_key(self, shape_key: tuple) -> tuple:
        """The shape key with each padded dimension replaced by its lane's length."""
        key = []
        for name, dims in shape_key:
            dim = self.dims.get(name)
            if dim is not None and dim - 1 < len(dims):
                dims = tuple(self.target(d) if i == dim - 1 else d for i, d in enumerate(dims))
            key.append((name, dims))
        return tuple(key)

    def length(self, inputs: Mapping[str, np.ndarray]) -> int:
        """A request's own length along the padded dimension (the longest over inputs)."""
        return max(inputs[name].shape[dim] for name, dim in self.dims.items() if name in inputs)

    def gather(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        """One input of a batch: `parts` padded to the batch's length, then concatenated."""
        dim = self.dims.get(name)
        if dim is None:
            return np.concatenate(parts, axis=0)
        longest = max(p.shape[dim] for p in parts)
        target = max(longest, self.target(longest)) if self.buckets else longest
        shape = list(parts[0].shape)
        shape[0], shape[dim] = sum(p.shape[0] for p in parts), target
        out = np.full(shape, self.values[name], dtype=parts[0].dtype)
        row = 0
        for p in parts:
            index = [slice(row, row + p.shape[0])] + [slice(None)] * (p.ndim - 1)
            index[dim] = slice(0, p.shape[dim])
            out[tuple(index)] = p
            row += p.shape[0]
        return out

    def trim(self, part: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
        """A request's outputs with the declared padded output dims cut to its length."""
        if not self.outputs:
            return part
        out = dict(part)
        for name, dim in self.outputs.items():
            if name in out and out[name].ndim > dim:
                index = [slice(None)] * out[name].ndim
                index[dim] = slice(0, length)
                out[name] = out[name][tuple(index)]
        return out
