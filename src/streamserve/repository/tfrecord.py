"""TFRecord files, read and written without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length           (little-endian)
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

CRC-32C is the Castagnoli polynomial; TensorFlow "masks" it (rotate right by 15 bits,
add a constant) so that a CRC of data that itself holds CRCs stays well distributed.
Both CRCs are verified: a file that is cut short, padded or corrupted raises
:class:`~streamserve.errors.DataLoss` naming the record and what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from streamserve.errors import DataLoss

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER_BYTES = _LENGTH.size + _CRC.size
_MASK_DELTA = 0xA282EAD8
_CASTAGNOLI_REVERSED = 0x82F63B78


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; pure Python, fine for warm-up-sized files."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = _LENGTH.pack(len(record))
    return b"".join(
        (length, _CRC.pack(masked_crc32c(length)), record, _CRC.pack(masked_crc32c(record)))
    )


def write_records(path: str | Path, records: Iterable[bytes]) -> int:
    """Write ``records`` to a TFRecord file at ``path``; returns how many were written."""
    count = 0
    with open(path, "wb") as file:
        for record in records:
            file.write(frame(record))
            count += 1
    return count


def read_records(path: str | Path) -> Iterator[bytes]:
    """Yield the records of a TFRecord file; ``DataLoss`` when the framing or a CRC is bad."""
    data = Path(path).read_bytes()
    yield from parse_records(data, str(path))


def parse_records(data: bytes, source: str = "TFRecord data") -> Iterator[bytes]:
    """Yield the records framed in ``data``; ``source`` names it in errors."""
    offset, index = 0, 0
    while offset < len(data):
        record, offset = _record_at(data, offset, index, source)
        yield record
        index += 1


def _record_at(data: bytes, offset: int, index: int, source: str) -> tuple[bytes, int]:
    where = f"{source}: record {index} at byte {offset}"
    if len(data) - offset < _HEADER_BYTES:
        raise DataLoss(f"{where}: truncated header ({len(data) - offset} bytes left)")
    length_bytes = data[offset : offset + _LENGTH.size]
    (length_crc,) = _CRC.unpack_from(data, offset + _LENGTH.size)
    if masked_crc32c(length_bytes) != length_crc:
        raise DataLoss(f"{where}: corrupted record length (CRC mismatch); not a TFRecord file?")
    (length,) = _LENGTH.unpack(length_bytes)
    start = offset + _HEADER_BYTES
    end = start + length
    if end + _CRC.size > len(data):
        raise DataLoss(f"{where}: truncated record (length {length}, file ends before it)")
    record = data[start:end]
    (data_crc,) = _CRC.unpack_from(data, end)
    if masked_crc32c(record) != data_crc:
        raise DataLoss(f"{where}: corrupted record data (CRC mismatch)")
    return record, end + _CRC.size
