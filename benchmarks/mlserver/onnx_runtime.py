"""A small MLServer runtime serving one ONNX model with onnxruntime (benchmark peer).

MLServer imports it from the model folder (``implementation: onnx_runtime.OnnxRuntime``
in model-settings.json); ``parameters.uri`` names the ``.onnx`` file. It decodes every
V2 input with MLServer's own ``NumpyCodec`` (typed contents or raw bytes alike), runs
the session once, and encodes every output back, which is what any MLServer runtime has
to do.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        outputs = [
            NumpyCodec.encode_output(name, array)
            for name, array in zip(self._output_names, results, strict=True)
        ]
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs
        )
