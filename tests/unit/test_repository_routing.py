"""Version labels, A/B traffic splits, config reloads and the config file poller."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import Code, FailedPrecondition, InvalidArgument, NotFound, StreamserveError
from streamserve.models.toy import build_tiny
from streamserve.repository import (
    ConfigFilePoller,
    ModelConfig,
    ModelManager,
    VersionPolicy,
    VersionState,
    config_file_poller,
    load_model_configs,
)
from streamserve.repository.routing import pick_weighted, stable_fraction
from streamserve.runtimes.base import Signature
from streamserve.waiting import WaitTimeout, wait_until

POLL = 0.05
DEADLINE = 20.0
X = np.zeros((1, 64), dtype=np.float32)


class Servable:
    """Minimal servable: no signatures (so no warm-up), tracks close()."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.closed = False

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return {}

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = "serving_default",
        output_filter: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        return {"version": np.array([self.version])}

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self) -> None:
        self.loaded: list[Servable] = []
        self.lock = threading.Lock()

    def __call__(self, version_dir: Path) -> Servable:
        servable = Servable(int(version_dir.name))
        with self.lock:
            self.loaded.append(servable)
        return servable


def versions_dir(base: Path, *versions: int) -> Path:
    for version in versions:
        (base / str(version)).mkdir(parents=True, exist_ok=True)
    return base


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
        options.setdefault("loader", Loader())
        manager = ModelManager(configs, **options)  # type: ignore[arg-type]
        managers.append(manager)
        manager.start()
        return manager

    yield make
    for manager in managers:
        manager.stop()


def labelled(base: Path, split: Mapping[str, float] | None = None) -> ModelConfig:
    return ModelConfig(
        "m",
        versions_dir(base, 1, 2),
        version_policy=VersionPolicy.specific([1, 2]),
        version_labels={"stable": 1, "canary": 2},
        traffic_split=split or {},
    )


def served_version(manager: ModelManager, **request: object) -> int:
    with manager.handle("m", **request) as handle:  # type: ignore[arg-type]
        return handle.version


# --------------------------------------------------------------------------- labels


def test_labels_and_versions_both_reach_real_models(tmp_path: Path, make_manager) -> None:
    for version in (1, 2):
        build_tiny(tmp_path / "m" / str(version), seed=version)
    config = labelled(tmp_path / "m")
    manager = make_manager([config], loader=None)  # the real runtime loader
    outputs = {}
    for request in ({"label": "stable"}, {"version": 1}, {"label": "canary"}, {"version": 2}):
        with manager.handle("m", **request) as handle:
            outputs[tuple(request.items())] = (handle.version, handle.servable.predict({"x": X}))
    assert outputs[(("label", "stable"),)][0] == outputs[(("version", 1),)][0] == 1
    assert outputs[(("label", "canary"),)][0] == outputs[(("version", 2),)][0] == 2
    np.testing.assert_array_equal(
        outputs[(("label", "stable"),)][1]["y"], outputs[(("version", 1),)][1]["y"]
    )
    assert not np.array_equal(
        outputs[(("label", "stable"),)][1]["y"], outputs[(("label", "canary"),)][1]["y"]
    )
    assert [s.version for s in manager.status("m", label="canary")] == [2]
    with pytest.raises(NotFound, match="Unrecognized servable version label: beta"):
        manager.status("m", label="beta")


def test_label_on_an_unavailable_version_is_refused(tmp_path: Path) -> None:
    config = ModelConfig(
        "m", versions_dir(tmp_path / "m", 1), version_labels={"stable": 1, "canary": 2}
    )
    manager = ModelManager([config], file_system_poll_wait_seconds=POLL, loader=Loader())
    with pytest.raises(FailedPrecondition) as caught:
        manager.start()
    assert caught.value.message == (
        "Request to assign label to version 2 of model m, "
        "which is not currently available for inference"
    )


def test_label_on_an_unavailable_version_is_allowed_by_the_flag(
    tmp_path: Path, make_manager
) -> None:
    config = ModelConfig(
        "m", versions_dir(tmp_path / "m", 1), version_labels={"stable": 1, "canary": 2}
    )
    manager = make_manager([config], allow_version_labels_for_unavailable_models=True)
    assert served_version(manager, label="stable") == 1
    with pytest.raises(NotFound, match=r"Specific\(m, 2\)"):
        manager.handle("m", label="canary")
    versions_dir(tmp_path / "m", 2)
    manager.poll_once()  # latest(1) now aspires 2; the label follows without a reload
    assert served_version(manager, label="canary") == 2


# --------------------------------------------------------------------------- A/B split


def test_ninety_ten_split_over_ten_thousand_calls(tmp_path: Path, make_manager) -> None:
    manager = make_manager([labelled(tmp_path / "m", {"stable": 90, "canary": 10})])
    counts = Counter(served_version(manager) for _ in range(10_000))
    assert set(counts) == {1, 2}
    assert abs(counts[2] / 10_000 - 0.10) <= 0.02


def test_routing_keys_stick_to_one_version(tmp_path: Path, make_manager) -> None:
    manager = make_manager([labelled(tmp_path / "m", {"stable": 90, "version:2": 10})])
    first = {f"user-{i}": served_version(manager, routing_key=f"user-{i}") for i in range(1000)}
    for _ in range(3):
        assert all(served_version(manager, routing_key=key) == v for key, v in first.items())
    share = Counter(first.values())[2] / len(first)
    assert 0.05 < share < 0.15
    assert served_version(manager, routing_key=b"user-1") == first["user-1"]


def test_split_skips_targets_that_are_not_available(tmp_path: Path, make_manager) -> None:
    config = labelled(tmp_path / "m", {"canary": 50, "version:3": 50})
    manager = make_manager([config])
    assert {served_version(manager) for _ in range(200)} == {2}


def test_unversioned_requests_without_split_get_the_latest(tmp_path: Path, make_manager) -> None:
    manager = make_manager([labelled(tmp_path / "m")])
    assert {served_version(manager, routing_key="k") for _ in range(50)} == {2}


def test_weighted_pick_and_stable_hash() -> None:
    targets = [(1, 90.0), (2, 10.0)]
    assert pick_weighted(targets, 0.0) == 1
    assert pick_weighted(targets, 0.8999) == 1
    assert pick_weighted(targets, 0.9) == 2
    assert pick_weighted(targets, 0.99999) == 2
    assert stable_fraction("abc") == stable_fraction(b"abc")
    assert 0.0 <= stable_fraction("abc") < 1.0
    assert stable_fraction("abc") != stable_fraction("abd")


# --------------------------------------------------------------------------- reload


def test_reload_adds_and_removes_models(tmp_path: Path, make_manager) -> None:
    loader = Loader()
    a = ModelConfig("a", versions_dir(tmp_path / "a", 1))
    b = ModelConfig("b", versions_dir(tmp_path / "b", 4))
    manager = make_manager([a], loader=loader)
    held = manager.handle("a")

    manager.reload_config([b])

    assert manager.model_names() == ["b"]
    with manager.handle("b") as handle:
        assert handle.version == 4
    with pytest.raises(NotFound, match=r"Latest\(a\)"):
        manager.handle("a")
    [servable_a] = [s for s in loader.loaded if s is held.servable]
    assert not servable_a.closed  # the in-flight request finishes on it
    held.release()
    assert eventually(lambda: servable_a.closed)


def test_reload_updates_policy_and_moves_labels(tmp_path: Path, make_manager) -> None:
    base = versions_dir(tmp_path / "m", 1, 2)
    manager = make_manager([ModelConfig("m", base, version_labels={"stable": 2})])
    assert [s.version for s in manager.status("m")] == [2]

    both = ModelConfig("m", base, version_policy=VersionPolicy.all(), version_labels={"stable": 1})
    manager.reload_config([both])

    assert {s.version: s.state for s in manager.status("m")} == {
        1: VersionState.AVAILABLE,
        2: VersionState.AVAILABLE,
    }
    assert served_version(manager, label="stable") == 1
    assert manager.config("m").version_policy == VersionPolicy.all()


def test_reload_refuses_to_move_a_label_to_an_unavailable_version(
    tmp_path: Path, make_manager
) -> None:
    base = versions_dir(tmp_path / "m", 1)
    manager = make_manager(
        [ModelConfig("m", base, version_labels={"stable": 1})],
        allow_version_labels_for_unavailable_models=True,
    )
    with pytest.raises(FailedPrecondition, match="version 9 of model m"):
        manager.reload_config([ModelConfig("m", base, version_labels={"stable": 9})])
    assert served_version(manager, label="stable") == 1


def test_reload_with_a_new_base_path_swaps_without_a_gap(tmp_path: Path, make_manager) -> None:
    loader = Loader()
    manager = make_manager([ModelConfig("m", versions_dir(tmp_path / "old", 1))], loader=loader)
    old = loader.loaded[0]

    manager.reload_config([ModelConfig("m", versions_dir(tmp_path / "new", 5))])

    assert served_version(manager) == 5
    assert eventually(lambda: old.closed)
    assert manager.config("m").base_path == tmp_path / "new"


def test_reload_reports_new_models_that_did_not_load(tmp_path: Path, make_manager) -> None:
    manager = make_manager([ModelConfig("a", versions_dir(tmp_path / "a", 1))])
    with pytest.raises(StreamserveError) as caught:
        manager.reload_config(
            [ModelConfig("a", tmp_path / "a"), ModelConfig("empty", tmp_path / "empty")]
        )
    assert caught.value.code == Code.NOT_FOUND  # no version found, not UNKNOWN
    assert "1 model(s) did not become available" in caught.value.message
    assert "No versions of servable empty found" in caught.value.message
    assert manager.model_names() == ["a", "empty"]  # kept: it loads when versions appear
    versions_dir(tmp_path / "empty", 1)
    assert manager.wait_for_state("empty", 1, VersionState.AVAILABLE, timeout=DEADLINE)


def test_reload_rejects_invalid_configs_without_changing_anything(
    tmp_path: Path, make_manager
) -> None:
    a = ModelConfig("a", versions_dir(tmp_path / "a", 1))
    manager = make_manager([a])
    with pytest.raises(InvalidArgument, match="multiple times"):
        manager.reload_config([a, a])
    assert served_version_of(manager, "a") == 1


def served_version_of(manager: ModelManager, name: str) -> int:
    with manager.handle(name) as handle:
        return handle.version


# --------------------------------------------------------------------------- config file poller


def write_config(path: Path, *models: tuple[str, Path]) -> None:
    entries = "".join(f'config {{ name: "{n}" base_path: "{p}" }} ' for n, p in models)
    replace_file(path, f"model_config_list {{ {entries}}}")


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` as an operator's tooling should (atomically), so that the poller
    never reads a half-written (e.g. empty) file."""
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    staged.replace(path)


def test_config_file_poller_reloads_when_the_file_changes(
    tmp_path: Path, make_manager, caplog
) -> None:
    a, b = versions_dir(tmp_path / "a", 1), versions_dir(tmp_path / "b", 1)
    config_file = tmp_path / "models.config"
    write_config(config_file, ("a", a))
    manager = make_manager([ModelConfig("a", a)])
    with config_file_poller(manager, config_file, POLL):
        write_config(config_file, ("a", a), ("b", b))
        assert eventually(lambda: manager.model_names() == ["a", "b"])
        with caplog.at_level("ERROR", logger="streamserve.repository.poller"):
            replace_file(config_file, "improperly formatted file")
            assert eventually(lambda: "Model config reload" in caplog.text)
        assert manager.model_names() == ["a", "b"]  # a bad file changes nothing
        write_config(config_file, ("b", b))
        assert eventually(lambda: manager.model_names() == ["b"])


def test_config_file_poller_watches_the_traffic_split_file(tmp_path: Path, make_manager) -> None:
    base = versions_dir(tmp_path / "m", 1, 2)
    config_file = tmp_path / "models.config"
    config_file.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        "model_version_policy { all {} } version_labels { key: 'stable' value: 1 } } }"
    )
    split_file = tmp_path / "split.json"
    split_file.write_text('{"m": {"stable": 1}}')
    manager = make_manager(load_model_configs(config_file, split_file))
    assert {served_version(manager) for _ in range(20)} == {1}
    poller = ConfigFilePoller(manager, config_file, 3600, traffic_split_file=split_file)
    assert poller.poll_once() is False  # unchanged since construction

    split_file.write_text('{"m": {"version:2": 1}}')

    assert poller.poll_once() is True
    assert {served_version(manager) for _ in range(20)} == {2}
    assert poller.poll_once() is False
