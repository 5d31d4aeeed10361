"""The typed config: YAML + overrides, and one-line errors that name the key."""

from pathlib import Path

import pytest

from dist_train.config import Config, load_config, to_yaml
from dist_train.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.5\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["optim.lr=0.2", "schedule.milestones=[1,2]", "model.name=resnet20"])
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 0.2 and cfg.train.epochs == 3 and cfg.schedule.milestones == [1.0, 2.0]
    assert cfg.model.name == "resnet20" and cfg.optim.momentum == 0.9
    assert cfg.name == "exp"  # defaults to the file's stem


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["optim.lrr=0.1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        (["optm.lr=0.1"], "did you mean 'optim.lr'?"),
        (["optim.lr=fast"], "bad value for 'optim.lr'"),
        (["data.dataset=cifar11"], "unknown data.dataset 'cifar11'; choose one of"),
        (["optim.lr"], "bad override 'optim.lr'"),
        (["train.epochs=0"], "train.epochs must be at least 1"),
        (["data.dataset=mnist"], "data.root is required"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(path)


def test_mistyped_value_in_yaml(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"bad value for 'data\.batch_size'"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "optim: [unclosed\n"))


@pytest.mark.slow
def test_every_shipped_config_loads_and_round_trips(tmp_path):
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path, ["data.root=/data"])
        dumped = tmp_path / path.name
        dumped.write_text(to_yaml(cfg))
        assert load_config(dumped) == cfg


def test_base_files_are_merged_first(tmp_path):
    (tmp_path / "small.yaml").write_text("data:\n  batch_size: 128\noptim:\n  lr: 0.1\n")
    (tmp_path / "large.yaml").write_text("base: small.yaml\ndata:\n  batch_size: 4096\n")
    cfg = load_config(tmp_path / "large.yaml", ["regime.lr_rule=sqrt"])
    assert cfg.data.batch_size == 4096 and cfg.optim.lr == 0.1 and cfg.name == "large"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "c.yaml")


def test_paper_recipes_differ_only_in_their_switches():
    sb = load_config(REPO / "configs" / "cifar10_resnet44_sb.yaml")
    ra = load_config(REPO / "configs" / "cifar10_resnet44_lb_lr_gbn_ra.yaml")
    assert (sb.data.batch_size, ra.data.batch_size) == (128, 4096)
    assert ra.regime.reference_batch_size == 128 and ra.regime.lr_rule == "sqrt" and ra.regime.adapt
    assert ra.bn.ghost_batch_size == 128 and sb.bn.ghost_batch_size == 0
    assert ra.schedule.milestones == sb.schedule.milestones == [81, 122, 164] and ra.optim == sb.optim
