"""The private descriptor pool every generated streamserve message lives in.

tensorflow, tensorflow-serving-api and tritonclient register the very same full names
(``tensorflow.TensorProto``, ``inference.ModelInferRequest``...) in protobuf's default pool,
and users import them next to streamserve. Our generated modules (post-processed by
``regenerate.py``) add their files to ``POOL`` instead, so both sets coexist in one process
and stay wire-compatible.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()

# Well-known types our files import; a separate pool needs its own copy of their files.
for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
