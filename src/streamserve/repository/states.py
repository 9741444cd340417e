"""Version lifecycle states, as TF Serving's ``ModelVersionStatus.State`` numbers them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from streamserve.errors import Code


class VersionState(enum.IntEnum):
    """START → LOADING → AVAILABLE → UNLOADING → END (a failed load goes straight to END)."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    """One version's state plus the error of its last load (``Code.OK`` when none)."""

    version: int
    state: VersionState
    error_code: Code = Code.OK
    error_message: str = ""
