"""Every setting is declared once (facecls.config) and reachable from the CLI and the Python API.

These tests only parse arguments and build settings records: no stage runs.
"""

from __future__ import annotations

import dataclasses

import pytest

from facecls import cli
from facecls.config import CropSettings, CurateSettings, DetectSettings, IngestSettings, TrainSettings
from facecls.config import settings_from_dict
from facecls.errors import FaceclsError
from facecls.pipeline import RunSettings

# Each command that takes settings, the arguments it needs, and the settings classes it takes.
COMMANDS = {
    "ingest": (["ingest", "scrape", "--out", "run"], (IngestSettings,)),
    "crop": (["crop", "scrape", "--out", "run"], (DetectSettings, CropSettings)),
    "curate": (["curate", "--out", "run"], (CurateSettings,)),
    "train": (["train", "--out", "run"], (TrainSettings,)),
    "run": (["run", "scrape", "--out", "run"], cli.RUN_SETTINGS),
    "demo": (["demo"], cli.RUN_SETTINGS),
}
CASES = [(command, settings_class, field.name)
         for command, (_, classes) in COMMANDS.items() for settings_class in classes
         for field in dataclasses.fields(settings_class)]  # fmt: skip


def build(settings_class, args):
    return cli._train_settings(args) if settings_class is TrainSettings else cli._settings(settings_class, args)


def other_value(field: dataclasses.Field):
    """A valid value of ``field`` that is not its default, and how to write it on the command line."""
    default, metadata = field.default, field.metadata
    if field.type == "bool":
        return not default, []
    if "choices" in metadata:
        value = next(choice for choice in metadata["choices"] if choice != default)
    elif field.type == "str":
        value = default + "_changed"
    else:
        low, high = metadata["between"]
        value = default + 1 if default + 1 <= high else default - 1
        if field.type == "float":
            value = (default + low) / 2 if default > low else (default + high) / 2
    return value, [str(value)]


def test_the_cli_takes_every_settings_class_of_a_run():
    assert [field.type for field in dataclasses.fields(RunSettings)] == [cls.__name__ for cls in cli.RUN_SETTINGS]


@pytest.mark.parametrize("command, settings_class, name", CASES, ids=[f"{c}-{s.__name__}.{n}" for c, s, n in CASES])
def test_every_setting_has_an_option_that_sets_it(command, settings_class, name):
    field = {field.name: field for field in dataclasses.fields(settings_class)}[name]
    value, words = other_value(field)
    flag = cli._flag(field)
    if field.type == "bool":
        flag = flag if value else "--no-" + flag[2:]
    argv, _ = COMMANDS[command]
    settings = build(settings_class, cli.build_parser().parse_args([*argv, flag, *words]))
    assert getattr(settings, name) == value != field.default
    # The CLI builds the very record the Python API builds from the same value.
    assert settings == dataclasses.replace(build(settings_class, cli.build_parser().parse_args(argv)), **{name: value})


@pytest.mark.parametrize("command", COMMANDS)
def test_without_options_the_cli_builds_the_python_defaults(command):
    argv, classes = COMMANDS[command]
    args = cli.build_parser().parse_args(argv)
    for settings_class in classes:
        assert build(settings_class, args) == settings_class()


def test_without_fine_tuning_epochs_the_model_dir_records_no_fine_tuned_layer():
    args = cli.build_parser().parse_args(["train", "--out", "run", "--fine-tune-epochs", "0"])
    assert cli._train_settings(args) == TrainSettings(fine_tune_epochs=0, fine_tune_from="")


def test_seed_sets_the_split_and_training_and_no_flip_still_works():
    args = cli.build_parser().parse_args(["run", "scrape", "--out", "run", "--seed", "7", "--no-flip"])
    settings = cli._run_settings(args)
    assert (settings.curate.seed, settings.train.seed, settings.curate.flip) == (7, 7, False)


@pytest.mark.parametrize("settings_class", cli.RUN_SETTINGS)
def test_every_setting_has_help_shown_by_its_commands(settings_class, capsys):
    for field in dataclasses.fields(settings_class):
        assert len(field.metadata.get("help", "")) > 10, f"{settings_class.__name__}.{field.name} has no help"
    for command, (_, classes) in COMMANDS.items():
        if settings_class not in classes:
            continue
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())  # unwrapped
        for field in dataclasses.fields(settings_class):
            first_words = " ".join(field.metadata["help"].split()[:4])
            assert cli._flag(field) in shown and first_words in shown, (command, field.name)
            if "between" in field.metadata:  # the allowed range, beside the default
                low, high = field.metadata["between"]
                assert f"(default {field.default}; {low} to {high})" in shown, (command, field.name)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--detect-side", "10", "detect_side must be between 64 and 8192. Received: 10"),
        ("--min-confidence", "2", "min_confidence must be between 0.0 and 1.0. Received: 2.0"),
        ("--image-size", "8", "image_size must be between 32 and 1024. Received: 8"),
        ("--patience", "0", "patience must be between 1 and 1000. Received: 0"),
        ("--dropout", "0.95", "dropout must be between 0.0 and 0.9. Received: 0.95"),
        ("--head-l2-c", "0", "head_l2_c must be between 1e-06 and 1000000.0. Received: 0.0"),
        ("--candidate-confidence", "1.5", "candidate_confidence must be between 0.0 and 1.0. Received: 1.5"),
        ("--seed", "-1", "seed must be between 0 and 4294967295. Received: -1"),
    ],
)
def test_an_invalid_value_is_one_line_before_any_work(tmp_path, capsys, option, value, message):
    out = tmp_path / "run"
    assert cli.main(["run", str(tmp_path / "absent"), "--out", str(out), option, value]) == 1
    error = capsys.readouterr().err
    assert error.splitlines() == [f"facecls: error: {message}"]
    assert not out.exists()


def test_the_python_api_gets_the_same_checks():
    with pytest.raises(FaceclsError, match=r"^margin must be a number. Received: 'wide'$"):
        CropSettings(margin="wide")
    with pytest.raises(FaceclsError, match=r"^flip must be true or false. Received: 1$"):
        CurateSettings(flip=1)
    with pytest.raises(FaceclsError, match=r"^face_policy must be one of consensus, largest, .*Received: 'biggest'$"):
        CropSettings(face_policy="biggest")


def test_a_stored_config_names_its_record_and_the_close_key():
    with pytest.raises(FaceclsError) as raised:
        settings_from_dict(TrainSettings, {"patiense": 3})
    message = str(raised.value)
    assert message.startswith("Unknown TrainSettings key 'patiense'. Did you mean 'patience'? Allowed: alpha, ")
    assert "\n" not in message
    with pytest.raises(FaceclsError, match=r"^DetectSettings batch_size must be an integer. Received: 2.5$"):
        settings_from_dict(DetectSettings, {"batch_size": 2.5})
    assert settings_from_dict(TrainSettings, {"patience": 3, "head_l2_c": 2}) == TrainSettings(patience=3, head_l2_c=2)
