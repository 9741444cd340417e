"""Our TF Serving protos against tensorflow-serving-api / tensorflow in the same process.

Importing tensorflow_serving loads TensorFlow (~15 s), hence the ``tensorflow`` marker.
"""

from __future__ import annotations

import importlib
from concurrent import futures

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, text_format
from test_protos import compare_file  # tests/unit is on sys.path (rootdir-less layout)

from streamserve import tensors
from streamserve.protos import tfs

pytestmark = pytest.mark.tensorflow

# Their modules register the reference descriptors in protobuf's default pool.
REFERENCE_MODULES = [
    "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.inference_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.regression_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
]


@pytest.fixture(scope="module")
def tf():
    """TensorFlow and tensorflow-serving-api, imported only when a test here runs (not at
    collection: TensorFlow takes ~15 s to import)."""
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    for name in REFERENCE_MODULES:
        importlib.import_module(name)
    return importlib.import_module("tensorflow")


def their(module: str):
    return importlib.import_module(module)


OUR_FILES_COMPLETE = [
    tfs.types_pb2,
    tfs.tensor_shape_pb2,
    tfs.tensor_pb2,
    tfs.example_pb2,
    tfs.feature_pb2,
    tfs.error_codes_pb2,
    tfs.model_pb2,
    tfs.predict_pb2,
    tfs.classification_pb2,
    tfs.regression_pb2,
    tfs.inference_pb2,
    tfs.input_pb2,
    tfs.get_model_metadata_pb2,
    tfs.get_model_status_pb2,
    tfs.status_pb2,
    tfs.model_management_pb2,
    tfs.model_service_pb2,
    tfs.prediction_service_pb2,
    tfs.model_server_config_pb2,
    tfs.logging_config_pb2,
    tfs.file_system_storage_path_source_pb2,
]


@pytest.mark.parametrize("module", OUR_FILES_COMPLETE, ids=lambda m: m.DESCRIPTOR.name)
def test_file_matches_tensorflow_serving(tf, module):
    assert compare_file(module.DESCRIPTOR, descriptor_pool.Default()) >= 1


def test_signature_def_subset_matches_tensorflow(tf):
    checked = compare_file(
        tfs.meta_graph_pb2.DESCRIPTOR, descriptor_pool.Default(), subset={"tensorflow.TensorInfo"}
    )
    assert checked >= 3


def test_classes_differ_but_names_agree(tf):
    predict_pb2 = their("tensorflow_serving.apis.predict_pb2")
    assert tfs.predict_pb2.PredictRequest is not predict_pb2.PredictRequest
    assert (
        tfs.predict_pb2.PredictRequest.DESCRIPTOR.full_name
        == predict_pb2.PredictRequest.DESCRIPTOR.full_name
    )


SAMPLES = [
    np.array([[1.5, -2.0], [0.0, 3.25]], dtype=np.float32),
    np.array([1.0, np.nan, np.inf], dtype=np.float64),
    np.array([[1, -2, 3]], dtype=np.int32),
    np.array([1, 2, 250], dtype=np.uint8),
    np.array([-3, 4], dtype=np.int16),
    np.array([-128, 127], dtype=np.int8),
    np.array([65535, 1], dtype=np.uint16),
    np.array([2**40, -1], dtype=np.int64),
    np.array([2**32 - 1, 0], dtype=np.uint32),
    np.array([2**64 - 1, 0], dtype=np.uint64),
    np.array([True, False, True]),
    np.array([0.5, -65504.0], dtype=np.float16),
    np.array([1 + 2j, -3j], dtype=np.complex64),
    np.array([1 + 2j], dtype=np.complex128),
    np.array([[b"a", b"\xff\xfe"], [b"", b"long" * 10]], dtype=object),
    np.zeros((0, 3), dtype=np.float32),
    np.float32(7.0),
]


@pytest.mark.parametrize("array", SAMPLES, ids=lambda a: f"{a.dtype}{list(np.shape(a))}")
@pytest.mark.parametrize("use_tensor_content", [True, False])
def test_our_tensor_protos_parse_in_tensorflow(tf, array, use_tensor_content):
    tf_tensor = their("tensorflow.core.framework.tensor_pb2")
    ours = tensors.numpy_to_tensor_proto(array, use_tensor_content=use_tensor_content)
    theirs = tf_tensor.TensorProto.FromString(ours.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(theirs), np.asarray(array))


@pytest.mark.parametrize("array", SAMPLES, ids=lambda a: f"{a.dtype}{list(np.shape(a))}")
def test_tensorflow_tensor_protos_parse_in_ours(tf, array):
    theirs = tf.make_tensor_proto(array)
    ours = tfs.tensor_pb2.TensorProto.FromString(theirs.SerializeToString())
    decoded = tensors.tensor_proto_to_numpy(ours)
    assert decoded.dtype == np.asarray(array).dtype
    np.testing.assert_array_equal(decoded, np.asarray(array))


def test_bfloat16_both_ways(tf):
    tf_tensor = their("tensorflow.core.framework.tensor_pb2")
    values = tf.constant([1.5, -2.0, 3.0], dtype=tf.bfloat16)
    theirs = tf.make_tensor_proto(values)
    decoded = tensors.tensor_proto_to_numpy(
        tfs.tensor_pb2.TensorProto.FromString(theirs.SerializeToString())
    )
    assert decoded.astype(np.float32).tolist() == [1.5, -2.0, 3.0]
    ours = tensors.numpy_to_tensor_proto(decoded, use_tensor_content=False)
    back = tf.make_ndarray(tf_tensor.TensorProto.FromString(ours.SerializeToString()))
    assert back.astype(np.float32).tolist() == [1.5, -2.0, 3.0]


def test_predict_request_round_trip(tf):
    predict_pb2 = their("tensorflow_serving.apis.predict_pb2")
    theirs = predict_pb2.PredictRequest()
    theirs.model_spec.name = "m"
    theirs.model_spec.version_label = "canary"
    theirs.model_spec.signature_name = "serving_default"
    theirs.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((2, 3), np.float32)))
    theirs.inputs["s"].CopyFrom(tf.make_tensor_proto([b"jpeg", b"png"]))
    theirs.output_filter.append("y")
    ours = tfs.predict_pb2.PredictRequest.FromString(theirs.SerializeToString())
    assert ours.model_spec.version_label == "canary"
    assert tensors.tensor_proto_to_numpy(ours.inputs["x"]).shape == (2, 3)
    assert tensors.tensor_proto_to_numpy(ours.inputs["s"]).tolist() == [b"jpeg", b"png"]
    assert predict_pb2.PredictRequest.FromString(ours.SerializeToString()) == theirs


def _our_metadata_response() -> tfs.get_model_metadata_pb2.GetModelMetadataResponse:
    signatures = tfs.get_model_metadata_pb2.SignatureDefMap()
    signature = signatures.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    signature.inputs["x"].name = "x:0"
    signature.inputs["x"].dtype = tfs.types_pb2.DT_FLOAT
    signature.inputs["x"].tensor_shape.dim.add().size = -1
    signature.outputs["y"].name = "y:0"
    response = tfs.get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 3
    response.metadata["signature_def"].Pack(signatures)
    return response


def test_metadata_any_unpacks_with_tensorflow_serving(tf):
    get_model_metadata_pb2 = their("tensorflow_serving.apis.get_model_metadata_pb2")
    ours = _our_metadata_response()
    theirs = get_model_metadata_pb2.GetModelMetadataResponse.FromString(ours.SerializeToString())
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert theirs.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.inputs["x"].tensor_shape.dim[0].size == -1
    assert signature.outputs["y"].name == "y:0"
    # and back: their packing unpacks in ours
    again = tfs.get_model_metadata_pb2.GetModelMetadataResponse.FromString(
        theirs.SerializeToString()
    )
    mine = tfs.get_model_metadata_pb2.SignatureDefMap()
    assert again.metadata["signature_def"].Unpack(mine)
    assert mine.signature_def["serving_default"].method_name == "tensorflow/serving/predict"


def test_model_server_config_text_agrees(tf):
    model_server_config_pb2 = their("tensorflow_serving.config.model_server_config_pb2")
    their_management = their("tensorflow_serving.apis.model_management_pb2")
    text = """model_config_list { config { name: 'a' base_path: '/m/a' model_platform: 'onnx'
      model_version_policy { latest { num_versions: 2 } } version_labels { key: 'x' value: 1 }}}"""
    ours = text_format.Parse(text, tfs.model_server_config_pb2.ModelServerConfig())
    theirs = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    reload = their_management.ReloadConfigRequest(config=theirs)
    assert (
        tfs.model_management_pb2.ReloadConfigRequest.FromString(reload.SerializeToString()).config
        == ours
    )


def test_status_and_multi_inference_cross_parse(tf):
    get_model_status_pb2 = their("tensorflow_serving.apis.get_model_status_pb2")
    inference_pb2 = their("tensorflow_serving.apis.inference_pb2")
    tf_example = their("tensorflow.core.example.example_pb2")
    status = tfs.get_model_status_pb2.GetModelStatusResponse()
    version = status.model_version_status.add(version=1, state=30)
    version.status.error_code = tfs.error_codes_pb2.NOT_FOUND
    version.status.error_message = "gone"
    theirs = get_model_status_pb2.GetModelStatusResponse.FromString(status.SerializeToString())
    assert theirs.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert theirs.model_version_status[0].status.error_message == "gone"

    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(method_name="tensorflow/serving/classify").model_spec.name = "m"
    example = tf_example.Example()
    example.features.feature["age"].float_list.value.append(3.5)
    request.input.example_list.examples.append(example)
    ours = tfs.inference_pb2.MultiInferenceRequest.FromString(request.SerializeToString())
    feature = ours.input.example_list.examples[0].features.feature["age"]
    assert list(feature.float_list.value) == [3.5]


def test_tensorflow_serving_stubs_talk_to_our_services(tf):
    predict_pb2 = their("tensorflow_serving.apis.predict_pb2")
    get_model_metadata_pb2 = their("tensorflow_serving.apis.get_model_metadata_pb2")
    get_model_status_pb2 = their("tensorflow_serving.apis.get_model_status_pb2")
    prediction_grpc = their("tensorflow_serving.apis.prediction_service_pb2_grpc")
    model_service_grpc = their("tensorflow_serving.apis.model_service_pb2_grpc")

    class Prediction(tfs.prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            response = tfs.predict_pb2.PredictResponse(model_spec=request.model_spec)
            doubled = tensors.tensor_proto_to_numpy(request.inputs["x"], "x") * 2
            tensors.numpy_to_tensor_proto(doubled, out=response.outputs["y"])
            return response

        def GetModelMetadata(self, request, context):
            return _our_metadata_response()

    class Models(tfs.model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no versions of {request.model_spec.name}")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tfs.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    tfs.model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.arange(3, dtype=np.float32)))
            response = stub.Predict(request, timeout=10)
            assert tf.make_ndarray(response.outputs["y"]).tolist() == [0.0, 2.0, 4.0]
            metadata = stub.GetModelMetadata(
                get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
                timeout=10,
            )
            assert metadata.model_spec.version.value == 3
            models = model_service_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failure:
                models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=10)
            assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None)
