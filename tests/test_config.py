import dataclasses

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
    assert cfg.synthetic.num_events == 100_000 and cfg.dataset.source.path == "data/demo/events"


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


def test_a_later_layers_neural_setting_wins_over_an_earlier_per_model_default():
    """base.yaml's neural.per_model settings are defaults: a later layer's neural.* (a --set, the demo's
    file) means every model; a per-model setting in that later layer wins again."""
    from recsys_spark.config import CONF_DIR

    assert load_config().for_neural_model("neumf").neural.epochs == 40  # base.yaml's NeuMF default
    cfg = load_config(overrides=["neural.epochs=3"])
    assert cfg.for_neural_model("neumf").neural.epochs == 3 and cfg.for_neural_model("multvae").neural.epochs == 3
    assert cfg.for_neural_model("multvae").neural.batch_size == 32  # not set later: still the model's own
    cfg = load_config(overrides=["neural.epochs=3", "neural.per_model.neumf.epochs=5"])
    assert cfg.for_neural_model("neumf").neural.epochs == 5 and cfg.for_neural_model("sasrec").neural.epochs == 3
    cfg = load_config(overrides=["neural.per_model.neumf.epochs=5", "neural.epochs=3"])
    assert cfg.for_neural_model("neumf").neural.epochs == 3
    demo = load_config(files=[CONF_DIR / "demo.yaml"])
    by_model = {m: demo.for_neural_model(m).neural for m in ("multvae", "gru4rec", "caser", "neumf", "lightgcn")}
    assert {m: (n.epochs, n.patience) for m, n in by_model.items()} == {
        "multvae": (20, 3), "gru4rec": (20, 3), "caser": (10, 3), "neumf": (30, 8), "lightgcn": (30, 3)}
    assert by_model["lightgcn"].learning_rate == 0.005 and by_model["caser"].history_length == 50


# --------------------------------------------------------------------------- typed choices and ranges


@pytest.mark.parametrize(
    "override, fragment",
    [
        # Each names the key and, for a choice, every allowed value.
        ("neural.use_gpu=maybe", r"neural\.use_gpu.*'auto', 'true' or 'false'.*maybe"),
        ("neural.negative_sampling=pop", r"neural\.negative_sampling.*'uniform' or 'popularity'"),
        ("split.protocol=sideways", r"split\.protocol.*'temporal', 'leave_last_n' or 'random'"),
        ("dataset.source.timestamp_format=epoch_us", r"dataset\.source\.timestamp_format.*'epoch_ms'"),
        ("dataset.items.format=json", r"dataset\.items\.format.*'csv' or 'parquet'"),
        ("clean.on_unreadable_file=skip", r"clean\.on_unreadable_file.*'quarantine' or 'fail'"),
        ("recommend.mmr_similarity=cosine", r"recommend\.mmr_similarity.*'auto', 'embedding' or 'genres'"),
        ("evaluation.primary_metric=ndcg10", r"evaluation\.primary_metric.*<metric>_at_<k>.*ndcg, recall"),
        ("evaluation.primary_metric=map_at_10", r"evaluation\.primary_metric"),  # the trainer cannot stop on map
        ("evaluation.primary_metric=ndcg_at_5", r"evaluation\.primary_metric.*k=5.*evaluation\.ks"),
        ("split.test_fraction=1.5", r"split\.test_fraction"),
        ("split.validation_fraction=0", r"split\.validation_fraction"),
        ("recommend.mmr_lambda=1.2", r"recommend\.mmr_lambda"),
        ("recommend.min_coverage=-0.1", r"recommend\.min_coverage"),
        ("recommend.n=0", r"recommend\.n\b"),
        ("neural.epochs=0", r"neural\.epochs"),
        ("neural.epochs=2.5", r"neural\.epochs"),
        ("neural.epochs='3'", r"neural\.epochs"),  # text is not a number
        ("neural.refit=yes please", r"neural\.refit"),
        ("als.ranks=[16, 0]", r"als\.ranks\[1\]"),
        ("evaluation.ks=[]", r"evaluation\.ks"),
        ("cluster.master_port=70000", r"cluster\.master_port"),
        ("cluster.worker_memory=lots", r"cluster\.worker_memory.*memory size"),
        ("synthetic.start_date=soon", r"synthetic\.start_date"),
        ("clean.min_timestamp=yesterday", r"clean\.min_timestamp"),
        ("clean.rating_min=6", r"clean\.rating_min.*clean\.rating_max"),
    ],
)
def test_choices_and_ranges_are_checked_at_load(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("neural.use_gpu=true", "true"),  # a YAML boolean, as docs and base.yaml write it
        ("neural.use_gpu=false", "false"),
        ("neural.use_gpu='true'", "true"),  # quoted: the text
        ("neural.use_gpu=auto", "auto"),
    ],
)
def test_use_gpu_takes_true_false_and_auto(override, expected):
    assert load_config(overrides=[override]).neural.use_gpu == expected


def test_accepted_values_keep_their_types():
    cfg = load_config(overrides=[
        "neural.negative_sampling=popularity", "split.protocol=leave_last_n", "recommend.mmr_similarity=genres",
        "evaluation.primary_metric=hit_rate_at_20", "recommend.mmr_lambda=1", "spark.extra={spark.cores.max: 2}",
        "ease.l2_grid=[100]",
    ])
    assert (cfg.neural.negative_sampling, cfg.split.protocol, cfg.recommend.mmr_similarity) == (
        "popularity", "leave_last_n", "genres")
    assert cfg.evaluation.primary_metric == "hit_rate_at_20"
    assert cfg.recommend.mmr_lambda == 1.0 and isinstance(cfg.recommend.mmr_lambda, float)
    assert cfg.ease.l2_grid == [100.0] and isinstance(cfg.ease.l2_grid[0], float)
    assert cfg.spark.extra == {"spark.cores.max": "2"}  # Spark properties are text


def test_keys_checked_together_may_be_completed_by_a_later_layer():
    """A check that ties two keys runs on the result, not on each --set in turn."""
    cfg = load_config(overrides=["evaluation.ks=[5]", "evaluation.primary_metric=recall_at_5"])
    assert cfg.evaluation.primary_metric == "recall_at_5"
    with pytest.raises(ConfigError, match=r"evaluation\.primary_metric"):
        load_config(overrides=["evaluation.ks=[5]"])


def test_sections_are_still_dataclasses():
    """Callers use dataclasses.asdict / replace on sections (the manifest, the sweep); replace checks too."""
    import dataclasses

    cfg = load_config()
    assert dataclasses.asdict(cfg.neural)["epochs"] == cfg.neural.epochs == cfg.to_dict()["neural"]["epochs"]
    assert dataclasses.replace(cfg.neural, epochs=3).epochs == 3
    with pytest.raises(ValueError):
        dataclasses.replace(cfg.neural, negative_sampling="pop")


def test_primary_metrics_are_the_ones_the_trainer_computes():
    from recsys_spark.config import PRIMARY_METRICS
    from recsys_spark.train.local_metrics import METRICS

    assert set(PRIMARY_METRICS) == set(METRICS)


# --------------------------------------------------------------------------- one set of defaults


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty mapping stays a value."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(written: dict, defaults: dict) -> list[str]:
    a, b = _flat(written), _flat(defaults)
    return [f"{k}: file {a.get(k, '(absent)')!r}, code {b.get(k, '(absent)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, KeyError) != b.get(k, KeyError)]


def test_base_yaml_states_exactly_the_code_defaults():
    """conf/base.yaml writes out the dataclass defaults with their comments: every key of one is a key of
    the other, with the same value. The dataset section is each dataset file's; the generator's section
    is written out in the synthetic dataset's file."""
    from recsys_spark.config import CONF_DIR, Config, SearchDim, _read_yaml

    defaults = Config().to_dict()
    base = _read_yaml(CONF_DIR / "base.yaml")
    # The search space is written compactly ({low, high, log}); the code's form has every field.
    space = base["neural"]["search"]["space"]
    base["neural"]["search"]["space"] = {model: {key: dataclasses.asdict(SearchDim(**dim)) for key, dim in dims.items()}
                                         for model, dims in space.items()}
    assert not _differences(base, {k: v for k, v in defaults.items() if k not in ("dataset", "synthetic")})
    synthetic = _read_yaml(CONF_DIR / "datasets" / "synthetic.yaml")["synthetic"]
    assert not _differences(synthetic, defaults["synthetic"])


def test_the_defaults_comparison_sees_a_drift():
    assert _differences({"neural": {"epochs": 20, "per_model": {}}}, {"neural": {"epochs": 20}}) == [
        "neural.per_model: file {}, code '(absent)'"]
    assert _differences({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}) == [
        "a.b: file 1, code 2", "a.c: file '(absent)', code 3"]


# --------------------------------------------------------------------------- the generator's output


def test_ease_l2_is_gone_and_names_its_grid():
    with pytest.raises(ConfigError, match=r"ease\.l2'.*removed.*ease\.l2_grid"):
        load_config(overrides=["ease.l2=100"])


def test_synthetic_output_is_gone_and_says_where_to_write(tmp_path):
    with pytest.raises(ConfigError, match=r"synthetic\.output.*removed.*dataset\.source\.path"):
        load_config(dataset="synthetic", overrides=["synthetic.output=data/x"])
    old = tmp_path / "old.yaml"
    old.write_text("synthetic:\n  output: data/x\n")
    with pytest.raises(ConfigError, match=rf"{old}.*synthetic\.output.*dataset\.source\.path"):
        load_config([old], dataset="synthetic")


def test_the_generator_writes_where_the_clean_job_reads():
    from recsys_spark.ingest import synthetic

    cfg = load_config(dataset="synthetic", overrides=["dataset.source.path=/tmp/elsewhere"])
    assert synthetic.output_path(cfg) == cfg.dataset.source.path == "/tmp/elsewhere"
    # Another dataset's source is its data, not a place for a synthetic log.
    with pytest.raises(ConfigError, match=r"dataset\.source\.path.*movielens-100k.*not a log in the generator"):
        synthetic.output_path(load_config(dataset="movielens-100k"))
