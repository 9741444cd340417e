from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class InceptionRequest(_message.Message):
    __slots__ = ("jpeg_encoded",)
    JPEG_ENCODED_FIELD_NUMBER: _ClassVar[int]
    jpeg_encoded: bytes
    def __init__(self, jpeg_encoded: _Optional[bytes] = ...) -> None: ...

class InceptionResponse(_message.Message):
    __slots__ = ("scores", "classes")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., classes: _Optional[_Iterable[str]] = ...) -> None: ...
