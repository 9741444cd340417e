"""Model config: version policies, TF Serving text proto, proto conversion, traffic splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamserve.errors import InvalidArgument
from streamserve.repository import (
    ModelConfig,
    VersionPolicy,
    apply_traffic_splits,
    load_model_configs,
    model_config_from_proto,
    model_config_to_proto,
    model_configs_from_server_config,
    model_server_config_to_proto,
    parse_model_config_file,
    parse_model_config_text,
    parse_traffic_split_text,
)
from streamserve.repository.source import VersionSource, scan_base_path

GOOD_CONFIG = """
model_config_list {
  config {
    name: 'imagenet'  base_path: '/models/imagenet'  model_platform: 'onnx'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config {
    name: "tiny"
    base_path: "/models/tiny"
    model_version_policy { all {} }
  }
  config {
    name: "latest3" base_path: "/models/l3" model_version_policy { latest { num_versions: 3 } }
  }
  config { name: "plain" base_path: "/models/plain" }
}
"""

# The colon-and-comma style TF Serving's own test configs use.
COLON_STYLE_CONFIG = """
model_config_list: {
  config: { name: "half_plus_two", base_path: "/m/a", model_platform: "tensorflow" },
  config: { name: "half_plus_three", base_path: "/m/b", model_platform: "tensorflow" }
}
"""


# --------------------------------------------------------------------------- policies


def test_latest_policy_picks_the_highest_versions() -> None:
    assert VersionPolicy.latest().select([1, 3, 2]) == {3}
    assert VersionPolicy.latest(2).select([1, 3, 2]) == {2, 3}
    assert VersionPolicy.latest(5).select([1]) == {1}
    assert VersionPolicy.latest().select([]) == set()


def test_all_policy_picks_everything_on_disk() -> None:
    assert VersionPolicy.all().select([4, 1, 7]) == {1, 4, 7}


def test_specific_policy_picks_listed_versions_that_exist() -> None:
    assert VersionPolicy.specific([1, 3]).select([1, 2]) == {1}
    assert VersionPolicy.specific([3, 1, 3]).versions == (1, 3)


def test_invalid_policies_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="num_versions >= 1"):
        VersionPolicy.latest(0)
    with pytest.raises(InvalidArgument, match="lists no versions"):
        VersionPolicy.specific([])


def test_default_model_config_serves_the_latest_version() -> None:
    config = ModelConfig("m", "/models/m")
    assert config.base_path == Path("/models/m")
    assert config.version_policy == VersionPolicy.latest(1)
    assert config.version_labels == {} and config.traffic_split == {}


# --------------------------------------------------------------------------- text proto


def test_good_config_text_parses_every_field() -> None:
    configs = {c.name: c for c in parse_model_config_text(GOOD_CONFIG)}
    assert list(configs) == ["imagenet", "tiny", "latest3", "plain"]
    imagenet = configs["imagenet"]
    assert imagenet.base_path == Path("/models/imagenet")
    assert imagenet.platform == "onnx"
    assert imagenet.version_policy == VersionPolicy.specific([1, 2])
    assert imagenet.version_labels == {"stable": 1, "canary": 2}
    assert configs["tiny"].version_policy == VersionPolicy.all()
    assert configs["latest3"].version_policy == VersionPolicy.latest(3)
    assert configs["plain"].version_policy == VersionPolicy.latest(1)


def test_colon_and_comma_style_parses() -> None:
    configs = parse_model_config_text(COLON_STYLE_CONFIG)
    assert [(c.name, c.platform) for c in configs] == [
        ("half_plus_two", "tensorflow"),
        ("half_plus_three", "tensorflow"),
    ]


def test_latest_with_zero_versions_means_one_like_tf_serving() -> None:
    text = 'model_config_list { config { name: "m" base_path: "/m" '
    text += "model_version_policy { latest {} } } }"
    assert parse_model_config_text(text)[0].version_policy == VersionPolicy.latest(1)


def test_improperly_formatted_text_fails_clearly() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_model_config_text("improperly formatted file")
    assert "Invalid model config" in caught.value.message
    assert "improperly" in caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'model_config_list { config { name: "a" base_path: "/a" } '
            'config { name: "a" base_path: "/b" } }',
            "Illegal to list model a multiple times",
        ),
        ('model_config_list { config { base_path: "/a" } }', "empty name"),
        ('model_config_list { config { name: "a" } }', "empty base_path"),
        (
            'model_config_list { config { name: "a" base_path: "/a" '
            "model_version_policy { specific {} } } }",
            "lists no versions",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/a" unknown_field: 1 } }',
            "unknown_field",
        ),
        ("custom_model_config { }", "custom_model_config is not supported"),
    ],
)
def test_bad_configs_name_the_problem(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_model_config_text(text)
    assert expected in caught.value.message


def test_config_file_resolves_relative_base_paths_next_to_it(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "m" base_path: "models/m" } }')
    assert parse_model_config_file(path)[0].base_path == tmp_path.resolve() / "models" / "m"


def test_unreadable_and_bad_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="Cannot read model config file"):
        parse_model_config_file(tmp_path / "missing.config")
    bad = tmp_path / "bad.config"
    bad.write_text("improperly formatted file")
    with pytest.raises(InvalidArgument, match=r"bad\.config.*Invalid model config"):
        parse_model_config_file(bad)


def test_proto_round_trip_keeps_every_field() -> None:
    configs = parse_model_config_text(GOOD_CONFIG)
    proto = model_server_config_to_proto(configs)
    assert model_configs_from_server_config(proto) == configs
    single = model_config_to_proto(configs[0])
    assert single.model_version_policy.specific.versions == [1, 2]
    assert model_config_from_proto(single) == configs[0]


def test_unset_server_config_means_no_action() -> None:
    from streamserve.protos.gen.tensorflow_serving.config import model_server_config_pb2

    assert model_configs_from_server_config(model_server_config_pb2.ModelServerConfig()) is None
    empty_list = model_server_config_to_proto([])
    assert model_configs_from_server_config(empty_list) == []


# --------------------------------------------------------------------------- traffic split


def _labelled(name: str = "m") -> ModelConfig:
    return ModelConfig(name, "/m", version_labels={"stable": 1, "canary": 2})


def test_traffic_split_attaches_to_its_model() -> None:
    splits = parse_traffic_split_text('{"m": {"stable": 90, "canary": 10, "version:3": 0}}')
    [config] = apply_traffic_splits([_labelled()], splits)
    assert config.traffic_split == {"stable": 90, "canary": 10, "version:3": 0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "Invalid traffic split JSON"),
        ("[1, 2]", "must be an object"),
        ('{"m": {}}', "non-empty object"),
        ('{"other": {"stable": 1}}', "not configured"),
        ('{"m": {"beta": 1}}', "neither a version label"),
        ('{"m": {"version:x": 1}}', "not 'version:<number>'"),
        ('{"m": {"stable": -1}}', "finite and >= 0"),
        ('{"m": {"stable": "90"}}', "must be a number"),
        ('{"m": {"stable": 0, "canary": 0}}', "must not all be zero"),
    ],
)
def test_bad_traffic_splits_name_the_problem(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        apply_traffic_splits([_labelled()], parse_traffic_split_text(text))
    assert expected in caught.value.message


def test_load_model_configs_reads_both_files(tmp_path: Path) -> None:
    config_file = tmp_path / "models.config"
    config_file.write_text(
        'model_config_list { config { name: "m" base_path: "/m" '
        "version_labels { key: 'stable' value: 1 } } }"
    )
    split_file = tmp_path / "split.json"
    split_file.write_text('{"m": {"stable": 3, "version:2": 1}}')
    [config] = load_model_configs(config_file, split_file)
    assert config.traffic_split == {"stable": 3, "version:2": 1}


# --------------------------------------------------------------------------- source


def test_scan_finds_integer_directories_only(tmp_path: Path) -> None:
    for child in ("1", "10", "2", "tmp-3", "assets"):
        (tmp_path / child).mkdir()
    (tmp_path / "4").write_text("a file, not a version")
    result, ignored = scan_base_path("m", tmp_path)
    assert sorted(result.versions) == [1, 2, 10]
    assert result.versions[10] == tmp_path / "10"
    assert sorted(ignored) == ["4", "assets", "tmp-3"]
    assert result.problem == ""


def test_missing_or_empty_base_path_is_explained(tmp_path: Path) -> None:
    missing, _ = scan_base_path("m", tmp_path / "nope")
    assert missing.versions == {}
    assert f"No versions of servable m found under base path {tmp_path / 'nope'}" in missing.problem
    empty, _ = scan_base_path("m", tmp_path)
    assert "No versions of servable m found under base path" in empty.problem
    assert "leaf directory as a number" in empty.problem


def test_source_logs_each_ignored_directory_once(tmp_path: Path, caplog) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "notes").mkdir()
    source = VersionSource()
    config = ModelConfig("m", tmp_path)
    with caplog.at_level("WARNING", logger="streamserve.repository.source"):
        for _ in range(3):
            assert source.aspired(config, source.scan(config)) == {1: tmp_path / "1"}
    assert [r.getMessage() for r in caplog.records].count(
        f"Ignoring {tmp_path / 'notes'} for servable m: not a directory named by a version number"
    ) == 1


def test_source_logs_missing_specific_versions_once(tmp_path: Path, caplog) -> None:
    (tmp_path / "1").mkdir()
    source = VersionSource()
    config = ModelConfig("m", tmp_path, version_policy=VersionPolicy.specific([1, 5]))
    with caplog.at_level("WARNING", logger="streamserve.repository.source"):
        for _ in range(3):
            assert list(source.aspired(config, source.scan(config))) == [1]
    assert sum("Version 5 of servable m" in r.getMessage() for r in caplog.records) == 1
