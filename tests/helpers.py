"""Test-only helpers shared by the test modules (not part of the installed package).

:func:`build_image_classifier` writes a tiny ONNX image classifier with ``processing.json``
and ``labels.txt`` (needs the ``onnx`` package), so image pipelines can be tested without
the real ImageNet model; :func:`image_bytes` makes a solid-colour image.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

IMAGE_PROCESSING = {
    "signatures": {
        "serving_default": {
            "image_input": {
                "name": "images",
                "model_input": "input",
                "resize_short": 32,
                "crop": 32,
                "mean": [127.0, 127.0, 127.0],
                "std": [128.0, 128.0, 128.0],
                "layout": "NCHW",
                "color": "RGB",
                "max_pixels": 40_000_000,
                "max_bytes": 20_000_000,
            },
            "topk_output": {
                "model_output": "logits",
                "k": 2,
                "softmax": True,
                "labels_file": "labels.txt",
                "classes_name": "classes",
                "scores_name": "scores",
            },
        },
    },
    "raw_signature_name": "tensor",
}
COLOR_LABELS = ("red", "green", "blue")


def build_tiny_model(tmp_path_factory: pytest.TempPathFactory, width: int) -> Path:
    """A fresh model base path holding version 1 of the tiny model (x[N,width] -> y)."""
    from streamserve.models.toy import build_tiny

    base = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(base / "1", width=width)
    return base


def build_image_classifier(version_dir: Path) -> Path:
    """A colour classifier: mean R, G, B of a 32x32 crop → logits for red/green/blue.

    Deterministic and meaningful: a red image is classified ``red`` with the top score.
    """
    from onnx import TensorProto, checker, helper, numpy_helper

    weight = np.eye(3, dtype=np.float32) * 10.0
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "colors",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    (version_dir / "processing.json").write_text(json.dumps(IMAGE_PROCESSING, indent=2))
    (version_dir / "labels.txt").write_text("\n".join(COLOR_LABELS) + "\n")
    return version_dir


def image_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (48, 40), image_format: str = "PNG"
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


@dataclass(frozen=True)
class Certificates:
    """PEM files of a test CA, a server certificate (for 127.0.0.1 and localhost) and a
    client certificate, both signed by the CA; see :func:`make_certificates`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def ssl_config(self, client_verify: bool) -> str:
        """TF Serving's ``SSLConfig`` text proto (PEM contents, not paths)."""
        fields = {
            "server_key": self.server_key.read_text(),
            "server_cert": self.server_cert.read_text(),
            "custom_ca": self.ca.read_text(),
        }
        text = "".join(f"{name}: {json.dumps(value)}\n" for name, value in fields.items())
        return text + f"client_verify: {str(client_verify).lower()}\n"


def make_certificates(folder: Path) -> Certificates:
    """A throw-away CA plus server and client certificates, written under ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(issuer_key, hashes.SHA256())

    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        "streamserve test CA", ca_key, None, [(x509.BasicConstraints(True, None), True)]
    )
    ca_issuer = (ca.subject, ca_key)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    server = certificate(
        "localhost",
        server_key,
        ca_issuer,
        [(names, False), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
    )
    client = certificate(
        "streamserve test client",
        client_key,
        ca_issuer,
        [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": key_pem(server_key),
        "client.pem": client.public_bytes(serialization.Encoding.PEM),
        "client.key": key_pem(client_key),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return Certificates(
        *(
            folder / name
            for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
        )
    )
