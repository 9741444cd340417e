"""The floor for ``python -m benchmarks server``: a minimal hand-written grpc.aio V2 server.

Only ``ModelInfer`` (raw contents in and out), ``ServerReady`` and ``ModelReady``; no
model repository, validation, metrics, thread hop or batching: the request is decoded
with ``np.frombuffer``, onnxruntime runs inline on the event loop (a tiny model finishes
in microseconds), and the output goes back as raw bytes. Anything a real server adds
costs something against this.

    python benchmarks/minimal_grpc/server.py --model path/to/model.onnx --name tiny --port 0 \
        [--loop asyncio|uvloop]

prints ``minimal-grpc: listening on 127.0.0.1:PORT`` once it serves; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from streamserve.protos.v2 import grpc_service_pb2 as pb
from streamserve.protos.v2 import grpc_service_pb2_grpc as pb_grpc

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
V2_NAMES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


class MinimalInference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session = session
        self.name = name
        self.output_names = [output.name for output in session.get_outputs()]

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name == self.name)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        feeds = {
            tensor.name: np.frombuffer(raw, DTYPES[tensor.datatype]).reshape(tensor.shape)
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        results = self.session.run(self.output_names, feeds)
        response = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        for name, array in zip(self.output_names, results, strict=True):
            response.outputs.add(name=name, datatype=V2_NAMES[array.dtype], shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


async def serve(model: str, name: str, host: str, port: int) -> None:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(MinimalInference(session, name), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"minimal-grpc: listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of the .onnx file")
    parser.add_argument("--name", default="tiny", help="model name clients use")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (streamserve itself runs on uvloop when installed)",
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.model, args.name, args.host, args.port))
    else:
        asyncio.run(serve(args.model, args.name, args.host, args.port))


if __name__ == "__main__":
    main()
