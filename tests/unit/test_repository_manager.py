"""ModelManager lifecycle: policies, polling, failed loads, warm-up, refcounted unload.

Real ONNX models (``build_tiny``) and the real runtime loader where the lifecycle is
the point; a fake loader where a test needs to control when or how a load ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import Code, InvalidArgument, NotFound
from streamserve.models.toy import build_tiny
from streamserve.repository import (
    ModelConfig,
    ModelManager,
    VersionPolicy,
    VersionState,
    VersionStatus,
)
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.runtimes.registry import load_servable
from streamserve.waiting import WaitTimeout, wait_until

POLL = 0.05
DEADLINE = 20.0
X = np.zeros((2, 64), dtype=np.float32)


def add_version(base: Path, version: int, build: Callable[[Path], object] = build_tiny) -> Path:
    """Build a version beside ``base`` and move it in, so the poller never sees half a model."""
    staging = base.parent / f".staging-{base.name}-{version}"
    build(staging)
    base.mkdir(parents=True, exist_ok=True)
    return staging.rename(base / str(version))


def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    try:
        return bool(wait_until(condition, timeout, "condition", interval=0.01))
    except WaitTimeout:
        return False


@pytest.fixture
def make_manager() -> Iterator[Callable[..., ModelManager]]:
    managers: list[ModelManager] = []

    def make(configs: Sequence[ModelConfig], **options: object) -> ModelManager:
        options.setdefault("file_system_poll_wait_seconds", POLL)
        manager = ModelManager(configs, **options)  # type: ignore[arg-type]
        managers.append(manager)
        manager.start()
        return manager

    yield make
    for manager in managers:
        manager.stop()


class FakeServable:
    """Adds its version to ``x``; remembers calls and whether it was closed."""

    def __init__(self, version: int, fail_predict: bool = False) -> None:
        self.version = version
        self.fail_predict = fail_predict
        self.calls: list[Mapping[str, np.ndarray]] = []
        self.closed = False

    @property
    def signatures(self) -> Mapping[str, Signature]:
        spec = TensorSpec("x", np.dtype(np.float32), (None, 4))
        return {"serving_default": Signature("serving_default", {"x": spec}, {"y": spec})}

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = "serving_default",
        output_filter: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        assert not self.closed, "predict on a closed servable"
        self.calls.append(inputs)
        if self.fail_predict:
            raise InvalidArgument("this model rejects everything")
        return {"y": inputs["x"] + self.version}

    def close(self) -> None:
        self.closed = True


class FakeLoader:
    """Loads ``FakeServable`` s; a ``broken`` file fails the load; gates can hold a load."""

    def __init__(self, fail_predict: bool = False) -> None:
        self.loaded: dict[int, FakeServable] = {}
        self.gates: dict[int, threading.Event] = {}
        self.fail_predict = fail_predict

    def __call__(self, version_dir: Path) -> FakeServable:
        version = int(version_dir.name)
        if version in self.gates:
            assert self.gates[version].wait(DEADLINE)
        if (version_dir / "broken").exists():
            raise InvalidArgument(f"cannot parse {version_dir / 'broken'}")
        servable = self.loaded[version] = FakeServable(version, self.fail_predict)
        return servable


def fake_version(base: Path, version: int, broken: bool = False) -> Path:
    def build(path: Path) -> None:
        path.mkdir(parents=True)
        (path / ("broken" if broken else "model.fake")).write_text("x")

    return add_version(base, version, build)


def states(manager: ModelManager, name: str = "m") -> dict[int, VersionState]:
    return {s.version: s.state for s in manager.status(name)}


# --------------------------------------------------------------------------- policies


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy.latest(), {3: VersionState.AVAILABLE}),
        (VersionPolicy.latest(2), {2: VersionState.AVAILABLE, 3: VersionState.AVAILABLE}),
        (VersionPolicy.all(), {v: VersionState.AVAILABLE for v in (1, 2, 3)}),
        (VersionPolicy.specific([1, 3]), {1: VersionState.AVAILABLE, 3: VersionState.AVAILABLE}),
    ],
)
def test_policy_decides_which_versions_load(tmp_path: Path, make_manager, policy, expected) -> None:
    for version in (1, 2, 3):
        add_version(tmp_path / "m", version)
    manager = make_manager([ModelConfig("m", tmp_path / "m", version_policy=policy)])
    assert states(manager) == expected
    with manager.handle("m") as handle:
        assert handle.version == max(expected)
        assert handle.servable.predict({"x": X})["y"].shape == (2, 64)


def test_new_version_is_served_and_old_one_unloaded_within_the_poll(
    tmp_path: Path, make_manager
) -> None:
    add_version(tmp_path / "m", 1)
    manager = make_manager([ModelConfig("m", tmp_path / "m")])
    assert states(manager) == {1: VersionState.AVAILABLE}

    add_version(tmp_path / "m", 2)

    assert manager.wait_for_state("m", 2, VersionState.AVAILABLE, timeout=DEADLINE)
    assert manager.wait_for_state("m", 1, VersionState.END, timeout=DEADLINE)
    assert manager.status("m") == [
        VersionStatus(2, VersionState.AVAILABLE),
        VersionStatus(1, VersionState.END),
    ]
    with manager.handle("m") as handle:
        assert handle.version == 2
    with pytest.raises(NotFound, match=r"Servable not found for request: Specific\(m, 1\)"):
        manager.handle("m", version=1)


def test_corrupt_version_records_its_error_and_the_previous_one_keeps_serving(
    tmp_path: Path, make_manager
) -> None:
    add_version(tmp_path / "m", 2)
    manager = make_manager([ModelConfig("m", tmp_path / "m")])

    def corrupt(path: Path) -> None:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"this is not an onnx model")

    add_version(tmp_path / "m", 3, corrupt)

    assert manager.wait_for_state("m", 3, VersionState.END, timeout=DEADLINE)
    [failed] = manager.status("m", version=3)
    assert failed.state == VersionState.END
    assert failed.error_code != Code.OK and failed.error_message
    manager.poll_once()  # a broken version is not retried while it stays on disk
    assert manager.status("m", version=3) == [failed]
    assert manager.status("m", version=2) == [VersionStatus(2, VersionState.AVAILABLE)]
    with manager.handle("m") as handle:
        assert handle.version == 2
        assert handle.servable.predict({"x": X})["y"].shape == (2, 64)


def test_a_failed_version_is_retried_after_it_is_replaced(tmp_path: Path, make_manager) -> None:
    loader = FakeLoader()
    fake_version(tmp_path / "m", 1)
    fake_version(tmp_path / "m", 2, broken=True)
    manager = make_manager([ModelConfig("m", tmp_path / "m")], loader=loader)
    assert manager.status("m")[0].error_code == Code.INVALID_ARGUMENT

    (tmp_path / "m" / "2").rename(tmp_path / "broken-2")
    manager.poll_once()
    fake_version(tmp_path / "m", 2)
    assert manager.wait_for_state("m", 2, VersionState.AVAILABLE, timeout=DEADLINE)
    assert manager.status("m", version=2) == [VersionStatus(2, VersionState.AVAILABLE)]


# --------------------------------------------------------------------------- version switches


def test_no_request_fails_while_eight_threads_hammer_a_version_switch(
    tmp_path: Path, make_manager
) -> None:
    add_version(tmp_path / "m", 1, lambda p: build_tiny(p, seed=1))
    manager = make_manager([ModelConfig("m", tmp_path / "m")])
    failures: list[BaseException] = []
    served: set[int] = set()
    done = threading.Event()
    calls = [0] * 8

    def hammer(index: int) -> None:
        while not done.is_set():
            try:
                with manager.handle("m") as handle:
                    assert handle.servable.predict({"x": X})["y"].shape == (2, 64)
                    served.add(handle.version)
                calls[index] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        assert eventually(lambda: min(calls) > 0)
        add_version(tmp_path / "m", 2, lambda p: build_tiny(p, seed=2))
        assert manager.wait_for_state("m", 1, VersionState.END, timeout=DEADLINE)
        after_switch = sum(calls)
        assert eventually(lambda: sum(calls) > after_switch + 8)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert served == {1, 2}


def test_an_open_handle_delays_unload_until_it_is_released(tmp_path: Path, make_manager) -> None:
    loader = FakeLoader()
    fake_version(tmp_path / "m", 1)
    manager = make_manager([ModelConfig("m", tmp_path / "m")], loader=loader)
    held = manager.handle("m")
    assert held.version == 1

    fake_version(tmp_path / "m", 2)
    assert manager.wait_for_state("m", 2, VersionState.AVAILABLE, timeout=DEADLINE)
    assert manager.wait_for_state("m", 1, VersionState.UNLOADING, timeout=DEADLINE)
    manager.poll_once()

    assert states(manager)[1] == VersionState.UNLOADING
    assert not loader.loaded[1].closed
    assert held.servable.predict({"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 2.0
    with pytest.raises(NotFound):
        manager.handle("m", version=1)

    held.release()
    assert manager.wait_for_state("m", 1, VersionState.END, timeout=DEADLINE)
    assert loader.loaded[1].closed
    held.release()  # twice is harmless


def test_loads_run_off_the_request_path(tmp_path: Path, make_manager) -> None:
    loader = FakeLoader()
    fake_version(tmp_path / "m", 1)
    manager = make_manager([ModelConfig("m", tmp_path / "m")], loader=loader)
    loader.gates[2] = threading.Event()
    fake_version(tmp_path / "m", 2)
    try:
        assert manager.wait_for_state("m", 2, VersionState.LOADING, timeout=DEADLINE)
        with manager.handle("m") as handle:  # the stuck load blocks nobody
            assert handle.version == 1
        assert states(manager) == {2: VersionState.LOADING, 1: VersionState.AVAILABLE}
    finally:
        loader.gates[2].set()
    assert manager.wait_for_state("m", 1, VersionState.END, timeout=DEADLINE)


# --------------------------------------------------------------------------- warm-up, listeners


def test_new_versions_are_warmed_before_they_serve(tmp_path: Path, make_manager) -> None:
    loader = FakeLoader()
    fake_version(tmp_path / "m", 1)
    make_manager([ModelConfig("m", tmp_path / "m")], loader=loader)
    [warmup] = loader.loaded[1].calls
    np.testing.assert_array_equal(warmup["x"], np.zeros((1, 4), np.float32))


def test_warm_up_failure_is_not_fatal(tmp_path: Path, make_manager, caplog) -> None:
    fake_version(tmp_path / "m", 1)
    with caplog.at_level("WARNING", logger="streamserve.repository.warmup"):
        manager = make_manager([ModelConfig("m", tmp_path / "m")], loader=FakeLoader(True))
    assert states(manager) == {1: VersionState.AVAILABLE}
    assert any("Warm-up of servable m version 1 failed" in r.getMessage() for r in caplog.records)


def test_listeners_see_every_state_change_in_order(tmp_path: Path) -> None:
    fake_version(tmp_path / "m", 1)
    events: list[tuple[str, int, VersionState, float | None]] = []
    manager = ModelManager(
        [ModelConfig("m", tmp_path / "m")], file_system_poll_wait_seconds=0, loader=FakeLoader()
    )
    manager.add_listener(lambda *event: events.append(event))
    manager.start()
    manager.stop()  # delivers every queued event
    assert [(name, version, state) for name, version, state, _ in events] == [
        ("m", 1, VersionState.START),
        ("m", 1, VersionState.LOADING),
        ("m", 1, VersionState.AVAILABLE),
        ("m", 1, VersionState.UNLOADING),
        ("m", 1, VersionState.END),
    ]
    load_seconds = {state: seconds for _, _, state, seconds in events}
    assert load_seconds[VersionState.AVAILABLE] is not None
    assert load_seconds[VersionState.AVAILABLE] >= 0
    assert load_seconds[VersionState.LOADING] is None


# --------------------------------------------------------------------------- errors


def test_missing_base_path_is_reported_through_status(tmp_path: Path, make_manager) -> None:
    manager = make_manager([ModelConfig("m", tmp_path / "m")], loader=FakeLoader())
    with pytest.raises(NotFound) as caught:
        manager.status("m")
    assert f"No versions of servable m found under base path {tmp_path / 'm'}" in str(caught.value)
    with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(m\)"):
        manager.handle("m")

    fake_version(tmp_path / "m", 7)  # appears later: picked up by the poller
    assert manager.wait_for_state("m", 7, VersionState.AVAILABLE, timeout=DEADLINE)


def test_unknown_names_get_tf_serving_messages(tmp_path: Path, make_manager) -> None:
    fake_version(tmp_path / "m", 1)
    manager = make_manager([ModelConfig("m", tmp_path / "m")], loader=FakeLoader())
    with pytest.raises(NotFound, match=r"^Servable not found for request: Latest\(nope\)$"):
        manager.handle("nope")
    with pytest.raises(NotFound, match=r"^Servable not found for request: Specific\(m, 3\)$"):
        manager.handle("m", version=3)
    with pytest.raises(NotFound, match=r"^Unrecognized servable version label: x$"):
        manager.handle("m", label="x")
    with pytest.raises(InvalidArgument, match="not both"):
        manager.handle("m", version=1, label="x")
    with pytest.raises(NotFound, match=r"^Could not find any versions of model nope$"):
        manager.status("nope")
    with pytest.raises(NotFound, match=r"^Could not find version 3 of model m$"):
        manager.status("m", version=3)
    with pytest.raises(NotFound):
        manager.config("nope")
    assert manager.config("m").name == "m"
    assert manager.model_names() == ["m"]


def test_stop_closes_every_servable(tmp_path: Path) -> None:
    loader = FakeLoader()
    for version in (1, 2):
        fake_version(tmp_path / "m", version)
    config = ModelConfig("m", tmp_path / "m", version_policy=VersionPolicy.all())
    with ModelManager([config], file_system_poll_wait_seconds=POLL, loader=loader) as manager:
        assert states(manager) == {1: VersionState.AVAILABLE, 2: VersionState.AVAILABLE}
    assert all(servable.closed for servable in loader.loaded.values())
    assert set(states(manager).values()) == {VersionState.END}


def test_real_loader_is_the_default(tmp_path: Path, make_manager) -> None:
    add_version(tmp_path / "m", 1)
    manager = make_manager([ModelConfig("m", tmp_path / "m")])
    with manager.handle("m") as handle:
        reference = load_servable(tmp_path / "m" / "1").predict({"x": X})["y"]
        np.testing.assert_allclose(handle.servable.predict({"x": X})["y"], reference)
