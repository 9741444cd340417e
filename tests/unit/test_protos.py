"""Our generated protos: private pool, regeneration, V2 wire compatibility with tritonclient.

TF Serving / TensorFlow comparisons (which import tensorflow, ~15 s) are in
test_protos_tfserving.py.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool

import streamserve.protos.gen as gen
from streamserve.protos import _pool, regenerate, tfs, v2

GEN_DIR = Path(gen.__file__).parent


def _generated_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(gen.__path__, gen.__name__ + ".")
        if info.name.endswith(("_pb2", "_pb2_grpc"))
    ]


def test_every_generated_module_imports_into_the_private_pool():
    modules = [importlib.import_module(name) for name in _generated_modules()]
    assert len(modules) >= 30
    for module in modules:
        if module.__name__.endswith("_pb2"):
            assert module.DESCRIPTOR.pool is _pool.POOL, module.__name__


def test_nothing_lands_in_the_default_pool():
    default = descriptor_pool.Default()
    with pytest.raises(KeyError):
        default.FindFileByName("tensorflow_serving/example/inception_inference.proto")
    with pytest.raises(KeyError):
        default.FindMessageTypeByName("tensorflow.serving.InceptionRequest")
    with pytest.raises(KeyError):
        default.FindFileByName("inference/grpc_service.proto")


def test_generated_code_never_imports_tensorflow_or_checks_exact_versions():
    forbidden = re.compile(
        r"^\s*(from|import) (tensorflow|tensorflow_serving|inference|tritonclient)\b"
        r"|_runtime_version|GRPC_GENERATED_VERSION|_descriptor_pool\.Default\(\)",
        re.MULTILINE,
    )
    for path in GEN_DIR.rglob("*.py"):
        assert not forbidden.search(path.read_text()), path


def test_committed_code_matches_the_protos(tmp_path):
    pytest.importorskip("grpc_tools")
    regenerate.regenerate(tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.py*")}
    committed = {
        p.relative_to(GEN_DIR): p.read_text()
        for p in GEN_DIR.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    assert fresh.keys() == committed.keys()
    stale = [str(path) for path, text in fresh.items() if committed[path] != text]
    assert not stale, f"run python -m streamserve.protos.regenerate; stale: {stale}"


def test_well_known_types_work_in_the_private_pool():
    request = tfs.predict_pb2.PredictRequest()
    request.model_spec.version.value = 7
    assert request.model_spec.WhichOneof("version_choice") == "version"
    signatures = tfs.get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def["serving_default"].method_name = "tensorflow/serving/predict"
    response = tfs.get_model_metadata_pb2.GetModelMetadataResponse()
    response.metadata["signature_def"].Pack(signatures)
    assert (
        response.metadata["signature_def"].type_url
        == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    )
    unpacked = tfs.get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(unpacked)
    assert unpacked == signatures


def test_text_format_model_server_config():
    from google.protobuf import text_format

    text = """
    model_config_list {
      config {
        name: 'imagenet'  base_path: '/models/imagenet'  model_platform: 'onnx'
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: 'stable' value: 1 }
        version_labels { key: 'canary' value: 2 }
      }
    }"""
    config = text_format.Parse(text, tfs.model_server_config_pb2.ModelServerConfig())
    model = config.model_config_list.config[0]
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}


def test_batching_and_monitoring_files_parse():
    from google.protobuf import text_format

    batching = text_format.Parse(
        "max_batch_size { value: 32 } batch_timeout_micros { value: 2000 } "
        "num_batch_threads { value: 4 } max_enqueued_batches { value: 100 } "
        "allowed_batch_sizes: 8 allowed_batch_sizes: 32 pad_variable_length_inputs: true",
        tfs.session_bundle_config_pb2.BatchingParameters(),
    )
    assert batching.max_batch_size.value == 32
    assert list(batching.allowed_batch_sizes) == [8, 32]
    monitoring = text_format.Parse(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }',
        tfs.monitoring_config_pb2.MonitoringConfig(),
    )
    assert monitoring.prometheus_config.enable


# Field numbers fixed by the public protos that tensorflow-serving-api does not ship.
_EXPECTED_NUMBERS = {
    "tensorflow.serving.InceptionRequest": {"jpeg_encoded": 1},
    "tensorflow.serving.InceptionResponse": {"scores": 2, "classes": 3},
    "tensorflow.serving.BatchingParameters": {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
        "thread_pool_name": 5,
        "allowed_batch_sizes": 6,
        "pad_variable_length_inputs": 7,
        "enable_large_batch_splitting": 8,
        "max_execution_batch_size": 9,
    },
    "tensorflow.serving.MonitoringConfig": {"prometheus_config": 1},
    "tensorflow.serving.PrometheusConfig": {"enable": 1, "path": 2},
}


@pytest.mark.parametrize("full_name", sorted(_EXPECTED_NUMBERS))
def test_field_numbers_of_messages_without_a_reference_package(full_name):
    descriptor = _pool.POOL.FindMessageTypeByName(full_name)
    assert {f.name: f.number for f in descriptor.fields} == _EXPECTED_NUMBERS[full_name]


def test_inception_service_name():
    service = _pool.POOL.FindServiceByName("tensorflow.serving.InceptionService")
    assert [m.name for m in service.methods] == ["Classify"]


# --- V2: compare with tritonclient ---------------------------------------------------------


@pytest.fixture
def triton_service():
    return pytest.importorskip("tritonclient.grpc.service_pb2")


def describe_message(descriptor) -> dict[str, tuple]:
    return {
        field.name: (
            field.number,
            field.type,
            field.is_repeated if hasattr(field, "is_repeated") else field.label,
            field.message_type.full_name if field.message_type else None,
            field.enum_type.full_name if field.enum_type else None,
            field.containing_oneof.name if field.containing_oneof else None,
        )
        for field in descriptor.fields
    }


def compare_file(ours, theirs_pool, subset: set[str] = frozenset()) -> int:
    """Assert every message/enum/service of our file matches its namesake in theirs_pool."""
    checked = 0
    pending = list(ours.message_types_by_name.values())
    while pending:
        message = pending.pop()
        pending.extend(message.nested_types)
        theirs = theirs_pool.FindMessageTypeByName(message.full_name)
        mine, reference = describe_message(message), describe_message(theirs)
        if message.full_name in subset:
            assert mine.items() <= reference.items(), message.full_name
        else:
            assert mine == reference, message.full_name
        checked += 1
    for enum in ours.enum_types_by_name.values():
        theirs = theirs_pool.FindEnumTypeByName(enum.full_name)
        assert {v.name: v.number for v in enum.values} == {
            v.name: v.number for v in theirs.values
        }, enum.full_name
        checked += 1
    for service in ours.services_by_name.values():
        theirs = theirs_pool.FindServiceByName(service.full_name)
        reference = {m.name: m for m in theirs.methods}
        for method in service.methods:
            other = reference[method.name]
            assert method.input_type.full_name == other.input_type.full_name
            assert method.output_type.full_name == other.output_type.full_name
            assert method.client_streaming == other.client_streaming
            assert method.server_streaming == other.server_streaming
        checked += 1
    return checked


def test_v2_protos_match_triton(triton_service):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")

    default = descriptor_pool.Default()
    subset = {
        "inference.ModelConfig",
        "inference.ModelInput",
        "inference.ModelOutput",
        "inference.ModelDynamicBatching",
    }
    assert compare_file(v2.model_config_pb2.DESCRIPTOR, default, subset) >= 8
    assert compare_file(v2.grpc_service_pb2.DESCRIPTOR, default) >= 30


def test_model_infer_request_bytes_cross_parse(triton_service):
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    images = np.arange(12, dtype=np.float32).reshape(2, 6)
    words = np.array([b"ab", b"\xff\x00", b""], dtype=object)
    theirs = triton_service.ModelInferRequest(model_name="m", model_version="2", id="r1")
    theirs.parameters["priority"].int64_param = 3
    first = theirs.inputs.add(name="images", datatype="FP32", shape=[2, 6])
    first.parameters["binary_data_size"].int64_param = 48
    theirs.inputs.add(name="words", datatype="BYTES", shape=[3])
    theirs.outputs.add(name="scores")
    theirs.raw_input_contents.extend([images.tobytes(), serialize_byte_tensor(words).item()])

    ours = v2.grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.parameters["priority"].int64_param == 3
    assert [i.name for i in ours.inputs] == ["images", "words"]
    assert np.array_equal(np.frombuffer(ours.raw_input_contents[0], np.float32), images.ravel())
    assert ours.SerializeToString() == theirs.SerializeToString()

    back = triton_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert list(deserialize_bytes_tensor(back.raw_input_contents[1])) == list(words)


def test_tritonclient_talks_to_our_v2_service():
    """tritonclient's real gRPC client against a servicer built from our generated code."""
    triton = pytest.importorskip("tritonclient.grpc")

    from streamserve import tensors

    class Echo(v2.grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            return v2.grpc_service_pb2.ServerLiveResponse(live=True)

        def ModelInfer(self, request, context):
            response = v2.grpc_service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version="1", id=request.id
            )
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
                array = tensors.infer_input_to_numpy(tensor, raw)
                out, data = tensors.numpy_to_infer_output(tensor.name + "_out", array, raw=True)
                response.outputs.append(out)
                response.raw_output_contents.append(data)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    v2.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        half = np.array([[0.5, -1.25]], dtype=np.float16)
        words = np.array([["x", "yz"]], dtype=object)
        inputs = [
            triton.InferInput("half", [1, 2], "FP16"),
            triton.InferInput("w", [1, 2], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(half)
        inputs[1].set_data_from_numpy(words)
        result = client.infer("echo", inputs, request_id="42")
        assert result.get_response().id == "42"
        assert np.array_equal(result.as_numpy("half_out"), half)
        assert result.as_numpy("w_out").tolist() == [[b"x", b"yz"]]
        client.close()
    finally:
        server.stop(None)
