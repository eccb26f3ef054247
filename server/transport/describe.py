"""Model metadata and configuration messages built from a served model version."""

from __future__ import annotations

import json

from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import model_config_pb2 as mc

from ..repository import ServedVersion
from ..types import TensorSpec

_CONFIG_TYPE = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32, "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32, "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING, "BF16": mc.TYPE_BF16,
}
PLATFORM = "onnxruntime_onnx"


def model_metadata(served: ServedVersion, versions: list[str]) -> pb.ModelMetadataResponse:
    def tensor(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
        )

    signature = served.signature
    return pb.ModelMetadataResponse(
        name=served.model,
        versions=versions,
        platform=PLATFORM,
        inputs=[tensor(s) for s in signature.inputs],
        outputs=[tensor(s) for s in signature.outputs],
    )


def _dims(spec: TensorSpec, batching: bool) -> list[int]:
    # The config's dims leave the batch dimension out when the model batches.
    return list(spec.shape[1:] if batching else spec.shape)


def model_config(served: ServedVersion) -> mc.ModelConfig:
    signature, settings = served.signature, served.settings
    batching = signature.max_batch_size > 0
    scheduling = settings.scheduling
    config = mc.ModelConfig(
        name=served.model,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=signature.max_batch_size,
        input=[
            mc.ModelInput(name=s.name, data_type=_CONFIG_TYPE[s.datatype], dims=_dims(s, batching))
            for s in signature.inputs
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=_CONFIG_TYPE[s.datatype], dims=_dims(s, batching))
            for s in signature.outputs
        ],
        instance_group=[
            mc.ModelInstanceGroup(
                count=scheduling.executors,
                kind=mc.ModelInstanceGroup.KIND_GPU
                if served.backend.provider != "CPUExecutionProvider"
                else mc.ModelInstanceGroup.KIND_CPU,
            )
        ],
        default_model_filename="model.onnx",
    )
    policy = settings.version_policy
    if policy.kind == "all":
        config.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        config.version_policy.specific.versions.extend(policy.specific)
    else:
        config.version_policy.latest.num_versions = policy.latest
    if batching and scheduling.policy != "none":
        config.dynamic_batching.preferred_batch_size.extend(scheduling.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = int(
            scheduling.max_queue_delay_ms * 1000
        )
    parameters = {
        "kairos.policy": scheduling.policy,
        "kairos.provider": served.backend.provider,
        "kairos.slo_ms": "" if settings.slo_ms is None else str(settings.slo_ms),
        "kairos.scheduler": json.dumps(served.dispatcher.describe(), default=str),
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config
