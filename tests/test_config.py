import pytest

from recsys_spark.config import ConfigError, load_config


def test_defaults_and_dataset_layering():
    cfg = load_config(dataset="movielens-100k")
    assert cfg.dataset.source.fixed_event_type == "rating"
    assert cfg.dataset.source.columns.value == "rating"
    # base.yaml values survive the dataset layer
    assert cfg.tables.event_weights["purchase"] == 8.0


def test_conf_files_override_the_dataset_file_and_set_overrides_both(tmp_path):
    """The demo's --conf sizes must win over the dataset file's defaults."""
    run = tmp_path / "run.yaml"
    run.write_text("synthetic:\n  num_events: 300000\n  num_users: 5000\n")
    cfg = load_config([run], dataset="synthetic")
    assert (cfg.synthetic.num_events, cfg.synthetic.num_users) == (300_000, 5000)
    assert cfg.synthetic.num_items == load_config(dataset="synthetic").synthetic.num_items
    cfg = load_config([run], dataset="synthetic", overrides=["synthetic.num_events=7"])
    assert cfg.synthetic.num_events == 7


def test_demo_conf_sizes_reach_the_demo():
    from recsys_spark.config import CONF_DIR

    cfg = load_config([CONF_DIR / "demo.yaml"], dataset="synthetic")
    assert cfg.synthetic.num_events == 300_000 and cfg.dataset.source.path == "data/demo/events"


def test_set_override_parses_yaml_scalars():
    cfg = load_config(overrides=["synthetic.num_users=123", "clean.rating_max=10"])
    assert cfg.synthetic.num_users == 123
    assert cfg.clean.rating_max == 10.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("clean.bot.max_events_per_minute=abc", "clean.bot.max_events_per_minute"),
        ("clean.nope=1", "clean.nope"),
        ("dataset.source.format=xml", "dataset.source.format"),
        ("run_date=2026-13-01", "run_date"),
        ("clean.on_unreadable_file=skip", "clean.on_unreadable_file"),
        ("clean.max_id_length=0", "clean.max_id_length"),
    ],
)
def test_malformed_override_names_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(overrides=[override])


def test_malformed_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  min_user_interactions: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(files=[bad])
    assert str(bad) in str(err.value)
    assert "tables.min_user_interactions" in str(err.value)


def test_per_model_trainer_settings_apply_to_that_model_only():
    cfg = load_config(overrides=["neural.batch_size=1024", "neural.per_model={multvae: {batch_size: 64, epochs: 7}}"])
    vae = cfg.for_neural_model("multvae")
    assert (vae.neural.batch_size, vae.neural.epochs) == (64, 7)
    assert vae.neural.learning_rate == cfg.neural.learning_rate
    assert cfg.for_neural_model("neumf").neural.batch_size == 1024 and cfg.neural.batch_size == 1024
    bad = load_config(overrides=["neural.per_model={multvae: {batch_sise: 64}}"])
    with pytest.raises(ConfigError, match="neural.per_model.multvae.*batch_sise"):
        bad.for_neural_model("multvae")
    wrong_type = load_config(overrides=["neural.per_model={multvae: {batch_size: many}}"])
    with pytest.raises(ConfigError, match="batch_size"):
        wrong_type.for_neural_model("multvae")
