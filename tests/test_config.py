"""Config: defaults, YAML inheritance, overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamseg.config import Config, load_config, parse_override
from streamseg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    config = load_config()
    assert config == Config()
    assert config.batch.max_batch == 4 and config.model.device == "auto"


def test_base_inheritance_and_set_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("batch:\n  max_batch: 8\nmodel:\n  score_thresh: 0.3\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  score_thresh: 0.6\n")
    config = load_config([tmp_path / "child.yaml"], sets=["batch.max_wait_ms=5", "model.weights=null"])
    assert config.batch.max_batch == 8
    assert config.model.score_thresh == 0.6
    assert config.batch.max_wait_ms == 5.0
    assert config.model.weights is None


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch.max_btch"):
        load_config(sets=["batch.max_btch=3"])
    (tmp_path / "bad.yaml").write_text("modle:\n  name: x\n")
    with pytest.raises(ConfigError, match="'modle'"):
        load_config([tmp_path / "bad.yaml"])


@pytest.mark.parametrize("override, needle", [
    ("batch.max_batch=two", "batch.max_batch"),
    ("batch.max_batch=0", "max_batch"),
    ("model.score_thresh=1.5", "score_thresh"),
    ("model.device=tpu", "model.device"),
    ("batch=3", "batch"),
    ("nokey", "section.key=value"),
])
def test_bad_values(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(sets=[override])


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=true") == {"a": {"b": True}}
    assert parse_override("a=1.5") == {"a": 1.5}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "pipelines").glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_yaml_files_load(path: Path) -> None:
    load_config([path])
