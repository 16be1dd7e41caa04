"""Config: defaults, YAML inheritance, overrides, errors that name the bad key, presets by name (also from a wheel)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from streamseg.config import (
    PRESETS_DIR,
    Config,
    _config_path,
    load_config,
    parse_override,
    presets,
)
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
    ("track.enabled=maybe", "track.enabled must be auto, true or false"),
    ("track.checkpoint_frames=0", "track.checkpoint_frames"),
    ("track.low_score=2", "track.low_score"),
    ("render.trail_frames=-1", "render.trail_frames"),
    ("model.input=640", "model.input must be WxH"),
])
def test_bad_values(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(sets=[override])


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=true") == {"a": {"b": True}}
    assert parse_override("a=1.5") == {"a": 1.5}


def test_auto_true_false_keys_take_yaml_s_booleans() -> None:
    """``enabled: false`` in YAML (or --set) is the boolean false: an auto/true/false key takes it."""
    config = load_config(sets=["track.enabled=false", "input.live=true"])
    assert (config.track.enabled, config.input.live) == ("false", "true")
    with pytest.raises(ConfigError, match="'output.video': False is not a str"):
        load_config(sets=["output.video=false"])  # a name, not a switch
    with pytest.raises(ConfigError, match="render.trail_frames needs render.workers: 1"):
        load_config(sets=["render.trail_frames=8", "render.workers=2"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "pipelines").glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_yaml_files_load(path: Path) -> None:
    config = load_config([path])
    # every key the file (and its _base_ chain) sets is in the config, as written there
    layers, at = [], path
    while at is not None:
        data = yaml.safe_load(at.read_text()) or {}
        base = data.pop("_base_", None)
        layers.insert(0, data)
        at = (at.parent / base) if base else None
    written = {(section, key): value for layer in layers for section, keys in layer.items()
               for key, value in keys.items()}
    assert written, f"{path} sets nothing"
    for (section, key), value in written.items():
        got = getattr(getattr(config, section), key)
        assert got == (tuple(value) if isinstance(value, list) else value), f"{section}.{key}"
    assert config != Config()


# Presets by name: the YAML files of configs/ and pipelines/ travel in the package (streamseg/presets/).

SHIPPED = {p.stem: p for folder in ("configs", "pipelines") for p in sorted((ROOT / folder).glob("*.yaml"))}


def test_repository_folders_are_the_packaged_presets() -> None:
    assert (ROOT / "configs").resolve() == PRESETS_DIR / "configs"
    assert (ROOT / "pipelines").resolve() == PRESETS_DIR / "pipelines"
    assert sorted(presets()) == sorted(SHIPPED) and len(SHIPPED) == 8
    assert all(path.is_file() and path.parent.parent == PRESETS_DIR for path in presets().values())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_preset_by_name_is_its_file(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ or pipelines/ here, as after a pip install
    from_file = load_config([SHIPPED[name]])
    assert from_file != Config()
    assert load_config([name]) == from_file
    assert load_config([f"{name}.yaml"]) == from_file


def test_unknown_preset_lists_the_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="neither a file nor a preset name") as info:
        load_config(["cocoa"])
    assert all(name in str(info.value) for name in SHIPPED)
    # a checkout's path given outside a checkout points to the name
    with pytest.raises(ConfigError, match="not found.*--config coco"):
        load_config(["configs/coco.yaml"])
    with pytest.raises(ConfigError, match="not found.*presets: coco, cpu"):
        load_config(["configs/nothing.yaml"])


def test_existing_file_wins_over_a_preset_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco.yaml").write_text("model:\n  name: mine\n")
    assert load_config(["coco.yaml"]).model.name == "mine"
    assert load_config(["coco"]).model.name == "maskrcnn_resnet50_fpn_v2"


def test_a_name_in_both_folders_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "presets"
    for rel in ("configs/twice.yaml", "pipelines/twice.yaml", "configs/once.yaml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("batch:\n  max_batch: 2\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ambiguous") as info:
        _config_path("twice", root)
    assert str(root / "configs/twice.yaml") in str(info.value) and str(root / "pipelines/twice.yaml") in str(info.value)
    assert _config_path("once", root) == root / "configs/once.yaml"
    with pytest.raises(ConfigError, match=r"\(presets: once\)"):
        _config_path("thrice", root)


@pytest.mark.slow
def test_wheel_carries_the_presets(tmp_path: Path) -> None:
    """A real wheel, built from the package alone (no top-level folders), unzipped, then loaded by name
    in a fresh interpreter from another folder, without site-packages (where an editable install points
    to the checkout)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "streamseg", src / "streamseg", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "-q", "-w", str(dist)],
                   check=True, cwd=tmp_path, timeout=120)
    (wheel,) = dist.glob("streamseg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        members = {info.filename: info for info in archive.infolist()}
        for path in SHIPPED.values():
            info = members[f"streamseg/presets/{path.parent.name}/{path.name}"]
            assert stat.S_ISREG(info.external_attr >> 16) and archive.read(info) == path.read_bytes()
        archive.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, streamseg.config as c; print(json.dumps({'file': c.__file__, 'presets': sorted(c.presets()),"
            " 'configs': {n: c.load_config([n]).to_dict() for n in ('coco', 'rtsp_to_publish', 'file_to_video.yaml')}}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(Path(yaml.__file__).parent.parent)])
    out = subprocess.run([sys.executable, "-S", "-c", code], check=True, cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout)
    assert Path(result["file"]) == tmp_path / "site" / "streamseg" / "config.py"
    assert result["presets"] == sorted(SHIPPED)
    for name, config in result["configs"].items():
        expected = load_config([SHIPPED[name.removesuffix(".yaml")]]).to_dict()
        assert config == json.loads(json.dumps(expected))


def test_a_typo_in_a_config_file_names_the_file_and_the_key_it_meant(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("model:\n  scor_thresh: 0.3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(["mine.yaml"])
    assert str(caught.value) == "mine.yaml: unknown config key 'model.scor_thresh' (did you mean 'model.score_thresh'?)"
    with pytest.raises(ConfigError, match=r"^--set: unknown config key 'input.zzz' \(\d+ keys in this section"):
        load_config(sets=["input.zzz=1"])


def test_weights_of_another_model_say_which_one_in_a_short_line() -> None:
    import torch

    from streamseg.models.registry import _misfit, get_entry

    with torch.device("meta"):
        small = get_entry("streamseg-small").build().state_dict()
        r50 = get_entry("maskrcnn_resnet50_fpn").build().state_dict()
    text = _misfit("r50.pth", "streamseg-small", small, r50)
    assert text.startswith("weights r50.pth do not fit model streamseg-small: ")
    assert text.endswith("they fit maskrcnn_resnet50_fpn: add --model maskrcnn_resnet50_fpn") and len(text) < 300
    assert "they fit" not in _misfit("x.pt", "streamseg-small", small, {"not": torch.zeros(1)})
