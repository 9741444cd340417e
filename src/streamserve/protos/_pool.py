"""The private descriptor pool every generated streamserve message lives in.

tensorflow, tensorflow-serving-api and tritonclient register the very same full names
(``tensorflow.TensorProto``, ``inference.ModelInferRequest``...) in protobuf's default pool,
and users import them next to streamserve. Our generated modules (post-processed by
``regenerate.py``) add their files to ``POOL`` instead, so both sets coexist in one process
and stay wire-compatible.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, message_factory, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()

# Well-known types our files import; a separate pool needs its own copy of their files, and
# (for the pure-Python protobuf runtime) message classes built for them before first use.
for _well_known in (any_pb2, wrappers_pb2):
    _file = POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
    for _message in _file.message_types_by_name.values():
        message_factory.GetMessageClass(_message)
