"""Choosing a version for a request: labels and weighted A/B traffic splits.

A split maps targets (version labels or ``"version:N"``) to relative weights. Only
targets whose version is AVAILABLE take part, their weights renormalised, so a canary
that fails to load sends no traffic anywhere it cannot be served. With a routing key
the choice is sticky: a stable hash of the key picks the same version on every call
and in every process, as long as the set of available targets stays the same.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping

from streamserve.errors import NotFound
from streamserve.repository.config import ModelConfig, split_key_version

RoutingKey = str | bytes | Callable[[], str | bytes | None] | None
"""A request's sticky A/B key, or a function giving it: called only when the model has a
traffic split (reading a key from request metadata costs something on every request)."""


def resolve_routing_key(key: RoutingKey) -> str | bytes | None:
    return key() if callable(key) else key


def resolve_label(labels: Mapping[str, int], label: str) -> int:
    """Label → version; an unknown label is NotFound (404), like an unknown version.

    TF Serving itself answers INVALID_ARGUMENT here; we treat a label as a name for a
    version, so a missing one is "not found", which clients can tell from bad input.
    """
    version = labels.get(label)
    if version is None:
        raise NotFound(f"Unrecognized servable version label: {label}")
    return version


def label_assignment_error(
    config: ModelConfig,
    current: Mapping[str, int],
    is_available: Callable[[int], bool],
    allow_unavailable: bool,
) -> str:
    """Why ``config.version_labels`` may not be installed now, or '' when they may.

    TF Serving's rule: labels point at AVAILABLE versions. The
    ``allow_version_labels_for_unavailable_models`` flag lets a new label point at a
    version still to come, but never moves an existing label onto one.
    """
    for label, version in config.version_labels.items():
        if is_available(version):
            continue
        if allow_unavailable and current.get(label, version) == version:
            continue
        return (
            f"Request to assign label to version {version} of model {config.name}, "
            "which is not currently available for inference"
        )
    return ""


def stable_fraction(routing_key: str | bytes) -> float:
    """A uniform number in [0, 1) that depends only on the key (not on PYTHONHASHSEED)."""
    data = routing_key.encode("utf-8") if isinstance(routing_key, str) else routing_key
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_targets(
    split: Mapping[str, float], labels: Mapping[str, int], is_available: Callable[[int], bool]
) -> list[tuple[int, float]]:
    """(version, weight) for every split target that resolves to an AVAILABLE version."""
    targets: list[tuple[int, float]] = []
    for key, weight in sorted(split.items()):  # order-independent, so sticky keys stay put
        version = split_key_version(key)
        if version is None:
            version = labels.get(key)
        if version is not None and weight > 0 and is_available(version):
            targets.append((version, float(weight)))
    return targets


def pick_weighted(targets: list[tuple[int, float]], point: float) -> int:
    """The target whose cumulative weight interval holds ``point`` (in [0, 1))."""
    total = sum(weight for _, weight in targets)
    threshold = point * total
    cumulative = 0.0
    for version, weight in targets:
        cumulative += weight
        if threshold < cumulative:
            return version
    return targets[-1][0]


def choose_split_version(
    split: Mapping[str, float],
    labels: Mapping[str, int],
    is_available: Callable[[int], bool],
    routing_key: str | bytes | None,
    rng: random.Random,
) -> int | None:
    """The version an unversioned request goes to, or None when no split target is available."""
    targets = split_targets(split, labels, is_available)
    if not targets:
        return None
    point = stable_fraction(routing_key) if routing_key is not None else rng.random()
    return pick_weighted(targets, point)
