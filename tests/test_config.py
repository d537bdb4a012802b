import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from byol import error_lines
from byol.build import views_of
from byol.config import (Config, ConfigError, changed_settings, checked, config_from_dict, load_config,
                         save_config)
from byol.config_files import preset_names
from byol.resume import resume_config


def test_every_preset_loads_and_has_commented_keys():
    assert {"cifar10", "stl10", "imagenet"} <= set(preset_names())
    for name in preset_names():
        config = load_config(name)
        assert isinstance(config, Config)
        text = (Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml").read_text()
        settings = [line for line in text.splitlines() if re.match(r"\s+\w+:\s*[^\s#]", line)]  # key: value
        assert settings and [line for line in settings if "#" not in line] == [], name


def test_every_config_key_has_its_meaning_beside_its_default():
    """`byol pretrain --help` sends readers to byol/config.py for every key's default and meaning."""
    import dataclasses
    import inspect
    for section in dataclasses.fields(Config):
        lines = inspect.getsource(section.default_factory).splitlines()
        for key in dataclasses.fields(section.default_factory):
            line = next(line for line in lines if re.match(rf"\s+{key.name}: ", line))
            assert "#" in line, f"{section.name}.{key.name}"


def test_every_config_key_is_read_by_the_package():
    """A key added to byol/config.py alone (typed, commented, accepted on the command line) and read
    nowhere would change nothing, and no other test noticed (tried with a train.grad_clip). A key is read
    where the package's code, outside config.py and config_rules.py (whose range rule reads every key it
    checks), takes it as an attribute (``t.epochs``) or names it in a string (``"train.epochs"``); comments,
    and a name inside an error message, do not count."""
    import ast
    import dataclasses
    package = Path(__file__).resolve().parent.parent / "byol"
    attributes, strings = set(), set()
    for path in sorted(package.glob("*.py")):
        if path.name not in ("config.py", "config_rules.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute):
                    attributes.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.add(node.value)
    unread = [f"{section.name}.{key.name}" for section in dataclasses.fields(Config)
              for key in dataclasses.fields(section.default_factory)
              if key.name not in attributes and f"{section.name}.{key.name}" not in strings]
    assert unread == [], f"config keys that nothing in byol/ reads: {unread}"


def test_every_config_key_but_a_switch_has_a_range_rule():
    """A number or a name added without its rule in byol/config_rules.py takes any value (tried with a
    train.grad_clip: --train.grad_clip=-5 was taken); a true/false switch needs none, nor a folder's name."""
    import dataclasses
    import typing
    rules = (Path(__file__).resolve().parent.parent / "byol" / "config_rules.py").read_text(encoding="utf-8")
    free = {"data.train_split"}  # any folder's name
    unruled = [f"{section.name}.{key.name}" for section in dataclasses.fields(Config)
               for key in dataclasses.fields(section.default_factory)
               if typing.get_type_hints(section.default_factory)[key.name] is not bool
               and f'"{section.name}.{key.name}"' not in rules and f"{section.name}.{key.name}" not in free]
    assert unruled == [], f"config keys without a rule in byol/config_rules.py: {unruled}"


def test_imagenet_preset_is_the_paper_recipe():
    c = load_config("imagenet")
    assert (c.model.backbone, c.model.projection_hidden_size, c.model.projection_size) == ("resnet50", 4096, 256)
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs) == ("lars", 0.2, 1.5e-6, 10)
    assert (c.train.epochs, c.train.batch_size, c.train.tau_base) == (1000, 4096, 0.996)
    assert c.augment.preset == "paper" and c.data.image_size == 224


def test_the_defaults_and_the_small_data_presets_are_the_values_their_comments_give():
    """A mutation audit: tau_base and weight_decay's defaults, and the cifar10 preset's trust coefficient, each
    changed survived every test (the imagenet preset alone was checked). Each value as its comment says it."""
    from byol.build import schedule_of
    c = Config()  # byol/config.py: the paper's (ImageNet) values where it says "paper"
    assert (c.model.projection_size, c.model.projection_hidden_size) == (256, 4096)
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.momentum) == ("lars", 0.2, 1.5e-6, 0.9)
    assert (c.optim.trust_coefficient, c.optim.lars_clip, c.optim.warmup_epochs) == (0.001, False, 10)
    assert (c.train.tau_base, c.train.knn_k, c.train.seed) == (0.996, 200, 0)
    for name in ("cifar10", "stl10"):  # solo-learn's CIFAR values; stl10's "as in cifar10"
        c = load_config(name)
        o = c.optim
        assert (o.name, o.lr, o.weight_decay, o.trust_coefficient, o.lars_clip, o.warmup_epochs, o.momentum) == (
            "lars", 1.0, 1e-5, 0.02, True, 10, 0.9), name
        assert (c.train.epochs, c.train.tau_base) == (200, 0.99), name
    assert load_config("cifar10").train.batch_size == 512 and load_config("stl10").train.batch_size == 256
    assert schedule_of(load_config("cifar10"), 1)[0] == 2.0  # "2.0 at batch 512"
    c = load_config("cifar10-cpu")
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs) == ("sgd", 0.2, 5e-4, 0.1)
    assert (c.train.epochs, c.train.batch_size, c.train.tau_base, c.augment.crop_min_scale) == (5, 256, 0.9, 0.2)
    assert 50000 // c.train.batch_size == 195  # "195 steps an epoch"


def test_overrides_are_typed():
    c = load_config("cifar10", ["--train.epochs=3", "optim.lr=1", "--data.download=true",
                                "--data.limit=100", "--data.limit=null", "--train.max_steps=7"])
    assert c.train.epochs == 3 and isinstance(c.train.epochs, int)
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.data.download is True and c.data.limit is None and c.train.max_steps == 7


def test_a_switch_takes_true_false_yes_and_no_in_any_case():
    """A mutation audit: a switch reading an odd-cased yes as false, or refusing it, survived every test. YAML reads
    only true, True, TRUE (yes, Yes, YES) as true; byol reads the word in any case, as the command line writes it."""
    for word, expected in (("yEs", True), ("tRUe", True), ("nO", False), ("fAlse", False)):
        assert load_config(None, [f"--data.download={word}"]).data.download is expected, word
        assert load_config(None, [f"--data.on_device={word}"]).data.on_device is expected, word


def test_an_override_s_value_may_hold_an_equals_sign():
    """A sweep's folder such as runs/lr=0.4 (a mutation audit: split at the last '=', it was an unknown key)."""
    assert load_config("cifar10", ["--train.out_dir=runs/lr=0.4"]).train.out_dir == "runs/lr=0.4"


@pytest.mark.parametrize("first", ["--data.limit=", "--data.limit=ten", "--model.backbone=custom"])
def test_a_key_given_twice_takes_the_last_without_reading_the_first(first):
    """docs/cli.md: given twice, the last is taken, as a script that adds to common settings expects (a docs
    review: `--data.limit=$LIMIT ... --data.limit=100` with LIMIT unset was an error about the first)."""
    key = first.partition("=")[0]
    last = "--data.limit=100" if key == "--data.limit" else "--model.backbone=resnet34"
    config = load_config("cifar10", [first, "--train.epochs=3", last])
    assert (config.data.limit, config.model.backbone, config.train.epochs) == (
        (100, "resnet18", 3) if key == "--data.limit" else (None, "resnet34", 3))
    with pytest.raises(ConfigError):  # the last is still read and checked
        load_config("cifar10", [last, first])
    with pytest.raises(ConfigError, match="must look like --section.key=value"):  # and every item's form
        load_config("cifar10", ["--data.limit", last])


@pytest.mark.parametrize("override, message", [
    ("--train.epoch=3", r"^unknown config key 'train.epoch' \(did you mean train.epochs\?\); train has epochs, "),
    ("--trian.epochs=3", r"^unknown config key 'trian.epochs' \(did you mean train.epochs\?\); keys look like "),
    ("--train.lr=0.1", r"^unknown config key 'train.lr' \(did you mean optim.lr\?\); train has epochs, "),
    ("--train.bogus=3", r"^unknown config key 'train.bogus'; train has epochs, "),  # nothing close: no guess
    ("--train.epochs=ten", "train.epochs must be int"),
    ("--train.knn_every=2.5", "train.knn_every must be int"),  # a mutation audit: truncated to 2, silently, survived
    ("--train.epochs=[3", r"^train.epochs must be int, got '\[3'$"),  # no YAML: its text, said (a coverage audit)
    ("--data.download=maybe", "data.download must be bool"),
    # true/yes is no number, though Python's bool is an int (a mutation audit: taken as 1 and 1.0, both survived)
    ("--optim.lr=true", r"^optim.lr must be float, got True$"),
    ("--train.epochs=yes", r"^train.epochs must be int, got True$"),
    ("--optim.lr", "must look like --section.key=value"),
    ("--train.log_every=0", "train.log_every must be >= 1"),
    ("--train.batch_size=1", "train.batch_size must be >= 2"),
    ("--train.max_steps=0", "train.max_steps must be >= 1 or null"),  # 0 ran the whole schedule (a mutation audit)
    ("--data.on_device=maybe", "data.on_device must be auto, true or false"),
    ("--train.progress=sometimes", "train.progress must be auto, true or false"),
    ("--model.backbone=resnet200", "model.backbone must be one of resnet18, resnet34, resnet50, resnet101, resnet152$"),
    # a typo or another spelling of a ResNet's depth is named (a user test: ResNet18 was told the list alone)
    ("--model.backbone=ResNet18", r"resnet101, resnet152 \(did you mean resnet18\?\)$"),
    ("--model.backbone=resnet81", r"resnet101, resnet152 \(did you mean resnet18\?\)$"),
    ("--model.backbone=resnet-50", r"resnet101, resnet152 \(did you mean resnet50\?\)$"),
    ("--optim.name=adam", "optim.name must be lars, sgd or adamw"),
    ("--optim.lr=inf", "optim.lr must be a finite number >= 0"),  # it passed >= 0, and trained to NaN
    ("--optim.lr=nan", "optim.lr must be a finite number >= 0"),
    ("--optim.warmup_epochs=.inf", "optim.warmup_epochs must be a finite number >= 0"),
    ("--optim.trust_coefficient=inf", "optim.trust_coefficient must be a finite number > 0"),
    ("--optim.beta1=1", "optim.beta1 must be >= 0 and < 1"),
    ("--optim.beta2=nan", "optim.beta2 must be >= 0 and < 1"),
    ("--optim.beta2=1", "optim.beta2 must be >= 0 and < 1"),  # its edge (a mutation audit: survived)
    ("--train.epochs=010", "train.epochs: 010 reads as 8 in YAML \\(a leading 0 makes it octal"),
    ("--train.epochs=1:30", "train.epochs: 1:30 reads as 90 in YAML"),
    ("--train.seed=-010", "train.seed: -010 reads as -8 in YAML"),  # signed too (a mutation audit: survived)
    ("--train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N"),
    ("--train.precision=fp16", "train.precision must be auto, bf16 or fp32"),
    ("--train.compile=maybe", "train.compile must be true, false or auto"),
    ("--train.device=meta", "train.device must be auto, cpu, cuda or cuda:N"),  # torch's, but not ours
    ("--train.device=mps", "train.device must be auto, cpu, cuda or cuda:N \\(Apple's GPU, mps, is not supported: "
                           "on a Mac, auto runs on the CPU\\)"),  # a Mac user's first try
    ("--data.image_size=0", "data.image_size must be >= 8"),
    ("--data.image_size=7", "data.image_size must be >= 8"),
    ("--data.load_size=4", "data.load_size must be >= 8 or null"),
    ("--augment.crop_min_scale=0", "augment.crop_min_scale must be above 0 and at most 1"),
    ("--augment.crop_min_scale=1.5", "augment.crop_min_scale must be above 0 and at most 1"),
    ("--augment.view1_blur_p=1.5", "augment.view1_blur_p must be between 0 and 1, or null"),
    ("--augment.view2_blur_p=-0.1", "augment.view2_blur_p must be between 0 and 1, or null"),
    ("--augment.view1_solarize_p=nan", "augment.view1_solarize_p must be between 0 and 1, or null"),
    ("--augment.view2_solarize_p=2", "augment.view2_solarize_p must be between 0 and 1, or null"),
    ("--model.projection_size=0", "model.projection_size must be >= 1"),
    ("--model.projection_hidden_size=0", "model.projection_hidden_size must be >= 1"),
    ("--train.tau_base=2", "train.tau_base must be between 0 and 1"),
    ("--train.knn_k=0", "train.knn_k must be >= 1"),
    ("--train.knn_holdout=-1", "train.knn_holdout must be >= 0"),
    ("--train.seed=99999999999999999999999", "train.seed must be between -2\\*\\*63 and 2\\*\\*63 - 1"),
    ("--train.seed=9223372036854775808", "train.seed must be between -2\\*\\*63 and 2\\*\\*63 - 1"),
    ("--optim.weight_decay=-1", "optim.weight_decay must be a finite number >= 0"),
    ("--optim.warmup_epochs=-1", "optim.warmup_epochs must be a finite number >= 0"),
    ("--optim.momentum=1", "optim.momentum must be >= 0 and < 1"),
    ("--optim.trust_coefficient=0", "optim.trust_coefficient must be a finite number > 0"),
    ("--train.out_dir=", "train.out_dir must be a directory"),
    ("--train.out_dir=  ", "train.out_dir must be a directory"),
    ("--data.root= ", "data.root must be a directory"),
    ("--data.train_split=", "data.train_split must be a split's name"),  # (a folder's: all of ROOT, val/ too)
    # Refused as the config is read, naming the key (it was said as the run was built, without it)
    ("--augment.preset=simclr", "augment.preset must be one of cifar, none, paper"),
    ("--data.dataset=imagenet", "data.dataset must be one of cifar10, cifar100, stl10, folder"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cifar10", [override])


@pytest.mark.parametrize("key", ["model.width", "model.projection_size", "model.projection_hidden_size",
                                 "data.image_size", "data.load_size", "train.epochs"])
def test_a_whole_number_past_64_bits_is_one_sentence_in_a_file_and_on_the_command_line(tmp_path, key):
    """Torch takes sizes as 64-bit numbers: a larger one ended in its "Overflow when unpacking long" traceback
    as the network was built, after the config was taken."""
    message = re.escape(f"{key} must be below 2**63 (a 64-bit whole number)")
    with pytest.raises(ConfigError, match=message):
        load_config("cifar10", [f"--{key}=99999999999999999999"])
    section, _, name = key.partition(".")
    path = tmp_path / "mine.yaml"
    path.write_text(f"{section}:\n  {name}: 9223372036854775808\n")
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))}: {message}$"):
        load_config(path)
    assert getattr(getattr(load_config("cifar10", [f"--{key}=9223372036854775807"]), section), name) == 2**63 - 1


def test_overrides_given_as_one_string_are_a_clear_error(tmp_path):
    """A string was taken character by character: "override '-' must look like --section.key=value"."""
    from byol.pipeline import knn
    with pytest.raises(ConfigError, match=r"^overrides must be a list of strings, such as \['--train.epochs=3'\], "
                                          "not one string$"):
        load_config("cifar10", "--train.epochs=3")
    with pytest.raises(ConfigError, match=r"^overrides must be a list of strings, such as \['--train.device=cpu'\]"):
        knn(tmp_path / "never_read.pt", "--train.device=cpu")


def test_a_folder_has_no_held_out_knn_monitor():
    """A folder's kNN monitor asks ROOT/val or ROOT/test; train.knn_holdout would silently do nothing."""
    with pytest.raises(ConfigError, match="train.knn_holdout must be 0 with data.dataset=folder"):
        load_config("cifar10", ["--data.dataset=folder", "--train.knn_holdout=100"])


def test_an_empty_value_says_so_not_got_none(tmp_path):
    """``--train.epochs=`` and ``epochs:`` in a YAML file leave the value out: that is said, with
    what to give (it said "train.epochs must be int, got None")."""
    for override, message in (("--train.epochs=", "train.epochs is empty; give a whole number (the default is 100)"),
                              ("--optim.lr= ", "optim.lr is empty; give a number (the default is 0.2)"),
                              ("--model.cifar_stem=", "model.cifar_stem is empty; give true or false"),
                              ("--train.max_steps=", "train.max_steps is empty; give a whole number or null"),
                              ("--optim.lr=null", "optim.lr is empty; give a number (the default is 0.2)"),
                              ("--train.epochs=None", "train.epochs is empty; give a whole number")):
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):  # null: as lr: null in a file (a review)
            load_config("cifar10", [override])
    assert load_config("cifar10", ["--train.max_steps=~", "--train.out_dir=null"]).train.out_dir == "null"
    (tmp_path / "c.yaml").write_text("train:\n  epochs:\n")
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(tmp_path / 'c.yaml'))}: train.epochs is empty; "
                                          "give a whole number"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text("train:\n  max_steps:\n")  # YAML's null, where null is allowed
    assert load_config(str(tmp_path / "c.yaml")).train.max_steps is None


def test_a_bad_value_of_a_file_names_the_file_unless_the_command_line_gave_it(tmp_path):
    """A user test: "train.epochs must be >= 1" for a hand-edited config.yaml named no file (the user had
    given no train.epochs); an unknown key of a file named none either."""
    path = tmp_path / "my.yaml"
    path.write_text("train:\n  epochs: 0\n  epochz: 1\n")
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))}: unknown config key 'train.epochz' "
                                          r"\(did you mean train.epochs\?\)"):
        load_config(str(path))
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))}: train.epochs must be >= 1$"):
        load_config(str(path))
    assert load_config(str(path), ["--train.epochs=3"]).train.epochs == 3  # the command line mends it
    path.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="^train.epochs must be >= 1$"):  # the command line's own
        load_config(str(path), ["--train.epochs=0"])
    path.write_text("train:\n  cuda_graph: true\n")  # a rule of two settings, one of them the command line's
    with pytest.raises(ConfigError, match="^train.cuda_graph must be false with train.compile=true"):
        load_config(str(path), ["--train.compile=true"])
    path.write_text("train:\n  knn_holdout: 500\n")  # (from a review: its rule did not name data.dataset)
    with pytest.raises(ConfigError, match="^train.knn_holdout must be 0 with data.dataset=folder"):
        load_config(str(path), ["--data.dataset=folder"])
    path.write_text("train:\n  cuda_graph: true\n  compile: true\n")
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))}: train.cuda_graph must be false"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="^overrides must be strings such as '--train.epochs=5', but one is int 3$"):
        load_config(str(path), ["--train.log_every=2", 3])  # (was an AttributeError)


@pytest.mark.parametrize("key", ["optim.beta1", "augment.view2_solarize_p"])
def test_a_bad_value_of_the_command_line_is_not_the_files_also_for_a_key_with_a_digit(tmp_path, key):
    """A review: a key with a digit in its name, set in the file and given out of range on the command line,
    was said as the file's ("config my.yaml: optim.beta1 must be ..."), whose value was good."""
    section, _, name = key.partition(".")
    path = tmp_path / "my.yaml"
    path.write_text(f"{section}:\n  {name}: 0.5\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} must be"):
        load_config(str(path), [f"--{key}=2"])
    path.write_text(f"{section}:\n  {name}: 2\n")
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))}: {re.escape(key)} must be"):
        load_config(str(path))


def test_an_empty_train_split_of_a_file_names_the_file_with_data_root_given(tmp_path):
    """A review: the rule's text named data.root, so with --data.root given (a resume from data moved) a
    config.yaml's empty data.train_split was said without the file, as the command line's."""
    path = tmp_path / "my.yaml"
    path.write_text('data:\n  train_split: ""\n')
    with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))}: data.train_split must be"):
        load_config(str(path), [f"--data.root={tmp_path}"])


def test_cuda_graph_and_compile_exclude_each_other():
    with pytest.raises(ConfigError, match="train.cuda_graph must be false with train.compile=true"):
        load_config("cifar10", ["--train.cuda_graph=true", "--train.compile=true"])
    assert load_config("cifar10", ["--train.cuda_graph=true"]).train.cuda_graph is True  # compile auto: eager


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("true", True), ("false", False)])
def test_compile_is_auto_or_a_bool(value, expected):
    assert Config().train.compile == "auto"  # off: slower than train.cuda_graph on an H100 (train.pretrain)
    assert load_config("cifar10", [f"--train.compile={value}"]).train.compile == expected


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("true", True), ("False", False), ("no", False)])
def test_on_device_is_auto_or_a_bool_also_in_a_yaml_file(tmp_path, value, expected):
    assert load_config("cifar10", [f"--data.on_device={value}"]).data.on_device == expected
    (tmp_path / "c.yaml").write_text(f"data:\n  on_device: {value}\n")  # YAML reads false, no, ... as a bool
    assert load_config(str(tmp_path / "c.yaml")).data.on_device == expected


def test_yaml_file_and_its_errors(tmp_path, monkeypatch):
    good = tmp_path / "run.yaml"
    good.write_text("train:\n  epochs: 2\nmodel:\n  width: 8\n")
    c = load_config(str(good))
    assert c.train.epochs == 2 and c.model.width == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    for path in ("./cifar10-cpu", str(tmp_path / "cifar10")):  # paths, not the presets they end like
        with pytest.raises(ConfigError, match=f"config file {path} does not exist"):
            load_config(path)
    bad.write_text("train:\n  epochs: [2\n")  # the parser's message is several lines; ours is one
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert "\n" not in str(e.value) and f"config {bad} is not valid YAML at line 3, column 1:" in str(e.value)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("cifar11")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()  # a folder given as --config cfg: named so, as a YAML file's path is
    with pytest.raises(ConfigError, match="unknown preset 'cfg' \\(cfg here is a folder\\); choose"):
        load_config("cfg")
    bad.write_bytes(b"\x00\xff\xfe garbage")  # before: a UnicodeDecodeError's traceback
    with pytest.raises(ConfigError, match="is not a YAML text file \\(not UTF-8\\)"):
        load_config(str(bad))
    (tmp_path / "dir.yaml").mkdir()
    for folder in (tmp_path / "dir.yaml", tmp_path):
        with pytest.raises(ConfigError, match=f"config {folder} is a folder, not a YAML file"):
            load_config(str(folder))


def test_a_yaml_file_of_no_sections_or_a_section_of_no_keys_is_one_sentence(tmp_path):
    """A file that is a list, or whose section is a number (coverage: neither was tried)."""
    bad = tmp_path / "bad.yaml"
    for text, said in (("- train\n- model\n", f"config {bad} must be a mapping of sections"),
                       ("train: 3\n", f"config {bad}: config section 'train' must be a mapping of keys")):
        bad.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(str(bad))
        assert str(e.value) == said


@pytest.mark.parametrize("text, said", [
    ("train:\n  epochs:3\n", "config section 'train' must be a mapping of keys; 'epochs:3' needs a space after its "
     "colon to be a key"),
    ("train:\n  seed: 1\n  epochs:3\n", "is not valid YAML at line 4, column 1: could not find expected ':' "
     "('epochs:3' needs a space after its colon)"),
    ("train:\n\tepochs: 3\n", "found character '\\t' that cannot start any token (YAML indents with spaces, "
     "not tabs)"),
    ("data: C:/datasets\n", "config section 'data' must be a mapping of keys"),  # a path's colon: no key's
    ("data: http://host/x\n", "config section 'data' must be a mapping of keys")])
def test_a_yaml_slip_is_said_with_its_fix(tmp_path, text, said):
    """A user test: ``epochs:3`` (YAML's text, not a key) was "section 'train' must be a mapping of keys", or an
    error at a line past the file's end; a tab, "cannot start any token"."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(said) + "$"):
        load_config(str(path))


def test_a_misspelled_preset_is_said_with_the_one_meant():
    """A user test: --config cifar10cpu listed the presets but named none of them as the one meant."""
    for name, meant in (("cifar10cpu", "cifar10-cpu"), ("CIFAR10", "cifar10"), ("stl-10", "stl10")):
        with pytest.raises(ConfigError, match=f"^unknown preset '{name}' \\(did you mean {meant}\\?\\); choose"):
            load_config(name)
    with pytest.raises(ConfigError, match="^unknown preset 'base'; choose"):
        load_config("base")


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys, silently: a section or a setting given twice is an error."""
    path = tmp_path / "twice.yaml"
    for text, message in (("train:\n  epochs: 3\nmodel:\n  width: 8\ntrain:\n  seed: 1\n",
                           "train twice (lines 1 and 5)"),
                          ("train:\n  epochs: 3\n  seed: 1\n  epochs: 4\n", "epochs twice (lines 2 and 4)"),
                          ("{train: {epochs: 3, epochs: 4}}\n", "epochs twice (line 1)")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"^config {re.escape(str(path))} gives {re.escape(message)}; keep one$"):
            load_config(str(path))
    path.write_text("base: &base\n  epochs: 3\ntrain:\n  <<: *base\n  epochs: 4\n")  # a merge's key overridden
    with pytest.raises(ConfigError, match="unknown config section 'base'"):  # not a key given twice
        load_config(str(path))


def test_a_yaml_file_made_to_exhaust_the_reader_is_one_sentence(tmp_path):
    """A user test: aliases nesting a few lines into billions of items ran until killed (the whole value was
    written into its error); a number of 5,000 digits and lists nested 100,000 deep ended in tracebacks."""
    laughs = ", ".join(['[&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] +
                       [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)])
    path = tmp_path / "c.yaml"
    for text, said in ((f"train:\n  knn_k: {laughs}]\n", "train.knn_k must be int, got [["),
                       ("train:\n  epochs: " + "9" * 5000 + "\n", "cannot be read (exceeds the limit"),
                       ("train: " + "[" * 100_000 + "]" * 100_000 + "\n", "cannot be read (it nests too deep)")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(said)) as e:
            load_config(str(path))
        assert len(str(e.value)) < 400 and "\n" not in str(e.value)


def test_resume_config_keeps_the_folder_it_found_the_run_in(tmp_path):
    # A run folder copied to where a preset's train.out_dir points: its config.yaml still names the
    # folder it was made in, and the resume must go on here, not there.
    run = tmp_path / "copy"
    run.mkdir()
    save_config(load_config("cifar10", [f"--train.out_dir={tmp_path / 'original'}", "--train.epochs=7"]),
                run / "config.yaml")
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"train:\n  out_dir: {run}\n")
    config = resume_config(str(preset))
    assert config.train.out_dir == str(run) and config.train.epochs == 7
    # (a mutation audit: the settings given on the command line dropped over the saved config.yaml survived)
    assert resume_config(str(preset), ["--train.epochs=9"]).train.epochs == 9


def test_resume_of_a_run_whose_config_yaml_a_newer_byol_wrote_says_so_and_what_to_do(tmp_path):
    """A journey test (a user downgrading byol): --resume of a run a newer byol wrote, whose config.yaml holds a
    setting this one lacks, said only "config RUN/config.yaml: unknown config key ..." (read as a typo), where
    eval, embed and export of its checkpoint say that another version wrote it and to use that one."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("cifar10", [f"--train.out_dir={run}"]), run / "config.yaml")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("train:\n", "train:\n  added_by_a_newer_byol: 1\n"))
    with pytest.raises(ConfigError, match=r"^the settings saved in .*config\.yaml do not load in this version of "
                       r"byol \(unknown config key 'train\.added_by_a_newer_byol'.* use the byol that wrote it "
                       r"to resume it$") as e:
        resume_config(None, [f"--train.out_dir={run}"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^unknown config key 'train\.bogus'"):  # a typo given is its own
        (run / "config.yaml").write_text(text)
        resume_config(None, [f"--train.out_dir={run}", "--train.bogus=1"])


def test_a_newer_byol_s_section_is_said_as_another_version_and_a_hand_written_config_yaml_s_typo_as_a_typo(tmp_path):
    """A mutation audit: a section a newer byol added (not only a key), and a config.yaml that byol did not write
    (no header: the user's own, whose unknown key is a typo), each survived every test."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("cifar10", [f"--train.out_dir={run}"]), run / "config.yaml")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text + "added_by_a_newer_byol:\n  key: 1\n")
    with pytest.raises(ConfigError, match=r"^the settings saved in .*config\.yaml do not load in this version of "
                       r"byol \(unknown config section 'added_by_a_newer_byol'"):
        resume_config(None, [f"--train.out_dir={run}"])
    (run / "config.yaml").write_text(re.sub(r"(?m)^  epochs: .*$", "  epochs: 0", text))  # hand-edited: its own
    with pytest.raises(ConfigError, match=r"^config .*config\.yaml: train\.epochs must be >= 1"):
        resume_config(None, [f"--train.out_dir={run}"])
    (run / "config.yaml").write_text(f"train:\n  out_dir: {run}\n  epoch: 3\n")  # written by hand: a typo
    with pytest.raises(ConfigError, match=r"^config .*config\.yaml: unknown config key 'train\.epoch'"):
        resume_config(None, [f"--train.out_dir={run}"])

def test_a_setting_given_against_the_checkpoints_of_a_run_without_config_yaml_is_its_own_error(tmp_path, capsys):
    """A review: with config.yaml gone, --train.knn_holdout=4 against a folder run's checkpoint was said as "the
    settings saved in last.pt do not load", and the run went on with the preset's (refused for their batch size)."""
    import torch
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    settings = load_config("cifar10", ["--data.dataset=folder", f"--train.out_dir={run}"]).to_dict()
    state = {"model": {}, "optimizer": {}, "step": 1, "rng": {}, "config": settings}
    torch.save(state, run / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="^train.knn_holdout must be 0 with data.dataset=folder"):
        resume_config("cifar10", [f"--train.out_dir={run}", "--train.knn_holdout=4"])
    assert resume_config("cifar10", [f"--train.out_dir={run}"]).data.dataset == "folder"  # the checkpoint's
    assert "the run goes on with the settings saved in" in capsys.readouterr().err


def test_a_moved_run_without_config_yaml_resumes_in_the_folder_it_is_in_now(tmp_path, capsys):
    """A mutation audit: taking the checkpoint's train.out_dir (the folder the run was made in) survived every test;
    a resume located by a preset would then go on writing into the old folder, not the one it found the run in."""
    import torch
    moved = tmp_path / "moved"
    (moved / "checkpoints").mkdir(parents=True)
    settings = load_config("cifar10", [f"--train.out_dir={tmp_path / 'original'}", "--train.epochs=7"]).to_dict()
    state = {"model": {}, "optimizer": {}, "step": 1, "rng": {}, "config": settings}
    torch.save(state, moved / "checkpoints" / "last.pt")
    preset = tmp_path / "preset.yaml"  # (an override --train.out_dir would override the checkpoint's too)
    preset.write_text(f"train:\n  out_dir: {moved}\n")
    config = resume_config(str(preset))
    assert (config.train.out_dir, config.train.epochs) == (str(moved), 7)
    assert "the run goes on with the settings saved in" in capsys.readouterr().err


def test_resume_config_keeps_the_runs_own_spelling_of_its_folder(tmp_path, monkeypatch, capsys):
    """A user test: --train.out_dir=copy/ from the folder above, for a run made as /abs/copy, was a
    setting that differed (/abs/copy -> copy/), and the relative spelling was saved."""
    run = tmp_path / "copy"
    run.mkdir()
    save_config(load_config("cifar10", [f"--train.out_dir={run}"]), run / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert resume_config(None, ["--train.out_dir=copy/"]).train.out_dir == str(run)
    assert resume_config(None, ["--train.out_dir=./copy"]).train.out_dir == str(run)
    capsys.readouterr()  # and --config cifar10, the run's own preset, has no settings that go unused (a review)
    assert resume_config("cifar10", ["--train.out_dir=copy/"], explicit=True).train.out_dir == str(run)
    assert "not used" not in capsys.readouterr().err


def test_saved_config_round_trips(tmp_path):
    c = load_config("stl10", ["--train.seed=5"])
    save_config(c, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == c
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == c


def test_a_saved_config_writes_a_non_ascii_path_as_it_is(tmp_path):
    """A user test: runs/dir with spaces/ünï run was saved as "runs/dir with spaces/\\xFCn\\xEF run"; read
    back alike, but not what a person reads. A name that is not UTF-8 (surrogates) is still escaped."""
    for out_dir, shown in (("runs/dir with spaces/ünïcødé run", "out_dir: runs/dir with spaces/ünïcødé run"),
                           ("runs/caf\udce9", 'out_dir: "runs/caf\\uDCE9"'),
                           ("runs/a\x85b", 'out_dir: "runs/a\\Nb"')):  # NEL: PyYAML writes it as a line break
        c = load_config("cifar10-cpu", [f"--train.out_dir={out_dir}"])
        save_config(c, tmp_path / "config.yaml")
        assert shown in [line.strip() for line in (tmp_path / "config.yaml").read_text(encoding="utf-8").splitlines()]
        assert load_config(str(tmp_path / "config.yaml")) == c


def test_presets_are_the_checkouts_own_also_where_another_checkout_is_installed(tmp_path):
    """On PYTHONPATH without ``pip install``, configs/ beside the package is used; a packaging test: where
    another checkout was installed editable (as this one is, in CI), its byol.configs mapped to that
    checkout's configs/, so this one's presets (and edits to them) were not read. In a fresh interpreter."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "byol", tmp_path / "byol", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "only-here.yaml").write_text("train: {epochs: 7}\n")
    script = "from byol.config import load_config\nprint(load_config('only-here').train.epochs)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.split() == ["7"], proc.stderr[-2000:]


def test_yaml_numbers_are_taken_as_written(tmp_path):
    """A user test: ``out_dir: 010`` made a folder named 8, ``epochs: 010`` trained 8 epochs (YAML 1.1's
    octal; ``1:30`` is its base 60). A text setting keeps what was written; a number setting refuses
    those two forms, and takes the others (1_000, 0x10, 1e-3) as YAML does."""
    path = tmp_path / "run.yaml"
    path.write_text("data: {root: 0.10, train_split: '1:30'}\ntrain: {out_dir: 010, epochs: 1_000, seed: 0x10}\n"
                    "optim: {lr: 1e-3, weight_decay: 0}\n")
    c = load_config(path)  # a Path too
    assert (c.data.root, c.data.train_split, c.train.out_dir) == ("0.10", "1:30", "010")
    assert (c.train.epochs, c.train.seed, c.optim.lr, c.optim.weight_decay) == (1000, 16, 0.001, 0.0)
    assert type(c.train.epochs) is int and type(c.optim.lr) is float  # saved as plain numbers
    assert load_config(path).to_dict() == yaml.safe_load(yaml.safe_dump(c.to_dict()))
    for text, said in (("train: {epochs: 010}", "train.epochs: 010 reads as 8"),
                       ("train: {epochs: 1:30}", "train.epochs: 1:30 reads as 90"),
                       ("optim: {lr: .inf}", "optim.lr must be a finite number >= 0")):
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_config(str(path))
    assert load_config("cifar10", ["--train.out_dir=010", "--data.limit=~"]).train.out_dir == "010"
    assert load_config("cifar10", ["--data.limit=~"]).data.limit is None  # ~ is null, as in YAML
    # and Python's None, as written there (a mutation audit: only lower-case none was null, survived)
    assert load_config("cifar10", ["--data.limit=None"]).data.limit is None


@pytest.mark.parametrize("text, said", [
    ("", "holds no settings"), ("# only a comment\n", "holds no settings"),
    ("base: cifar10-cpu\ntrain: {epochs: 3}\n", "unknown config section 'base'; the sections are data, model, "
     "augment, optim, train; a file's settings go over the defaults, not over a preset"),
    ("optim.lr: 0.1\n", "unknown config section 'optim.lr'; the sections are data, model, augment, optim, train; "
     "write optim.lr as optim: with the key under it"),
    ("trian: {epochs: 3}\n", "unknown config section 'trian' (did you mean train?); the sections are data, model, "
     "augment, optim, train"),  # a misspelling, not a preset: no word on presets
    ("train: {epoch: 3}\n", "unknown config key 'train.epoch' (did you mean train.epochs?); train has epochs"),
    ("epochs: 3\n", "unknown config section 'epochs' (did you mean train.epochs?); the sections are data, model, "
     "augment, optim, train; write it under train:")])  # a key at the top: said to start from a preset's copy
def test_a_file_without_settings_or_with_an_unknown_section_is_one_sentence(tmp_path, text, said):
    """A user test: an empty file silently gave the code's defaults (no preset), and ``base:`` was
    said to be 'a section that must be a mapping of keys'."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(said) + ("$" if "trian" in text else "")):
        load_config(str(path))


def test_the_preset_to_copy_is_named_where_it_is_outside_the_checkout(tmp_path, monkeypatch):
    """An installed-wheel test: an unknown section said to start from a copy of configs/NAME.yaml, a folder of the
    source tree that a pip-installed byol has not (its presets are byol/configs/ in site-packages)."""
    monkeypatch.chdir(tmp_path)  # where a user runs byol, not the checkout's root
    (tmp_path / "run.yaml").write_text("base: cifar10-cpu\n")
    with pytest.raises(ConfigError, match=r"start from a copy of (.+)/NAME\.yaml\)$") as e:
        load_config("run.yaml")
    folder = Path(re.search(r"a copy of (.+)/NAME\.yaml\)$", str(e.value)).group(1))
    assert folder.is_absolute() and (folder / "cifar10-cpu.yaml").is_file(), folder


def test_an_empty_config_name_is_refused_and_a_pipe_is_read(tmp_path):
    import os
    import threading
    with pytest.raises(ConfigError, match="the config is empty; give a preset name"):
        load_config("")
    fifo = tmp_path / "pipe"  # as --config /dev/stdin or <(...): not a regular file, but read as one
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:
            f.write("train: {epochs: 3}\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert load_config(str(fifo)).train.epochs == 3
    writer.join(timeout=10)


def test_resume_notes_write_settings_as_the_command_line_does():
    from byol.resume import changed_settings
    assert changed_settings({"train": {"max_steps": 3, "progress": True}},
                            {"train": {"max_steps": None, "progress": False}}) == [
        "train.max_steps 3 -> null", "train.progress true -> false"]
    # a setting the saved config lacks (an older version's, before the key was added) is none that changed (a
    # mutation audit: read as null, it was said to have changed from null)
    assert changed_settings({"train": {"epochs": 3}}, {"train": {"epochs": 3, "progress": "auto"}}) == []


def test_a_data_root_is_no_changed_setting_where_it_names_the_same_folder(tmp_path, monkeypatch):
    """A resume given --data.root=./data for a run saved with data (or its absolute path) is not told the data
    changed (a mutation audit: compared as written, survived)."""
    monkeypatch.chdir(tmp_path)
    for saved in ("data", str(tmp_path / "data")):
        assert changed_settings({"data": {"root": saved}}, {"data": {"root": "./data"}}) == []
    assert changed_settings({"data": {"root": "data"}}, {"data": {"root": "other"}}) == [
        f"data.root {tmp_path / 'data'} -> {tmp_path / 'other'}"]


def test_a_config_whose_values_were_set_in_python_is_checked_as_a_file_s_would_be():
    """checked() (byol.pretrain's check of a notebook's Config) refuses a value of the wrong type, as a file's
    would be, not only one out of its range (a mutation audit: batch_size=2.5 and epochs=True passed, survived)."""
    config = load_config("cifar10-cpu")
    config.train.batch_size = 2.5
    with pytest.raises(ConfigError, match=r"^train.batch_size must be int, got 2.5$"):
        checked(config)
    config.train.batch_size, config.train.epochs = 256, True
    with pytest.raises(ConfigError, match=r"^train.epochs must be int, got True$"):
        checked(config)
    config.train.epochs = 3
    assert checked(config) == config and checked(config) is not config  # a copy


@pytest.mark.parametrize("data", [None, [1], "train", {"train": 5}, {"train": [1]}])
def test_saved_settings_of_another_shape_are_one_sentence(data):
    """A checkpoint's or a run's saved settings that are not sections of keys (edited, or another program's) are a
    ConfigError, which resume and eval say as such, not an AttributeError (a mutation audit: survived)."""
    with pytest.raises(ConfigError, match="^the settings are not a mapping of sections, each a mapping of keys$"):
        config_from_dict(data)


def test_an_optimizer_name_is_read_in_any_case_and_kept_in_lower_case_and_save_interval_s_takes_inf(tmp_path):
    """build_optimizer always read SGD as sgd, and an older byol saved it so: such a run's config still
    loads (a review: refusing it made older runs unusable), as sgd, which resume compares. inf is the one
    sensible infinite setting: last.pt only at kept epochs, a stop and the end."""
    config = load_config("cifar10", ["--optim.name=SGD", "--train.save_interval_s=inf"])
    assert config.optim.name == "sgd" and config.train.save_interval_s == float("inf")
    save_config(config, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == config


def test_a_preset_named_as_a_file_says_the_presets_name(tmp_path, monkeypatch):
    """A user test: --config cifar10-cpu.yaml said only that the file does not exist."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="^config file cifar10-cpu.yaml does not exist; the preset is named "
                                          "cifar10-cpu, without .yaml: --config cifar10-cpu$"):
        load_config("cifar10-cpu.yaml")
    with pytest.raises(ConfigError, match="^config file mine.yaml does not exist$"):
        load_config("mine.yaml")


def test_the_ends_of_each_range_are_taken():
    """The boundaries a rule allows (a mutation audit: refusing tau_base=1, "between 0 and 1", a target that never
    moves, survived every test)."""
    config = load_config("cifar10", ["--train.tau_base=1", "--train.max_steps=1", "--data.image_size=8",
                                     "--train.seed=9223372036854775807", "--optim.momentum=0", "--train.knn_every=-1",
                                     "--augment.crop_min_scale=1", "--train.batch_size=2"])
    t = config.train
    assert (t.tau_base, t.max_steps, config.data.image_size, t.seed) == (1.0, 1, 8, 2**63 - 1)
    assert load_config("cifar10", ["--train.tau_base=0", "--train.seed=-9223372036854775808"]).train.tau_base == 0.0
    a = load_config("cifar10", ["--augment.view1_blur_p=1", "--augment.view2_blur_p=0",  # the paper's ends
                                "--augment.view1_solarize_p=0", "--augment.view2_solarize_p=1"]).augment
    assert (a.view1_blur_p, a.view2_blur_p, a.view1_solarize_p, a.view2_solarize_p) == (1, 0, 0, 1)
    for backbone in ("resnet101", "resnet152"):  # the paper's deeper ResNets (torchvision builds no resnet200)
        assert load_config("cifar10", [f"--model.backbone={backbone}"]).model.backbone == backbone


def test_a_missing_yaml_file_in_another_folder_is_not_said_to_be_the_preset(tmp_path, monkeypatch):
    """Only a bare preset name with .yaml is told the preset's name: mine/cifar10.yaml is the user's own file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="^config file mine/cifar10.yaml does not exist$"):
        load_config("mine/cifar10.yaml")


def test_a_date_or_a_yes_for_a_text_setting_in_a_yaml_file(tmp_path):
    """A user test: ``out_dir: 2024-01-01`` (a run folder named by its date) was refused as "must be str, got
    datetime.date(2024, 1, 1)", where ``--train.out_dir=2024-01-01`` is that folder; ``out_dir: yes`` was
    "must be str, got True", naming neither YAML's reading nor the quotes that keep the word."""
    path = tmp_path / "run.yaml"
    path.write_text("train: {out_dir: 2024-01-01}\ndata: {train_split: 2024-01-01 12:00:00}\n")
    c = load_config(path)
    assert (c.train.out_dir, c.data.train_split) == ("2024-01-01", "2024-01-01 12:00:00")
    path.write_text("train: {epochs: 2024-01-01}\n")  # a number setting: the text said, not a Python repr
    with pytest.raises(ConfigError, match=re.escape("train.epochs must be int, got '2024-01-01'")):
        load_config(path)
    path.write_text("train: {out_dir: yes}\n")
    with pytest.raises(ConfigError, match=re.escape("train.out_dir must be text, got true (in a YAML file an "
                                                    "unquoted yes, no, on or off reads as true or false: quote it")):
        load_config(path)
    path.write_text("train: {out_dir: 'yes'}\n")
    assert load_config(path).train.out_dir == "yes"


def test_a_file_named_as_a_preset_in_the_working_directory_does_not_replace_it(tmp_path, monkeypatch):
    """A user test: a file named cifar10-cpu in the working directory was read for --config cifar10-cpu, and one
    named cifar10 for byol pretrain without --config (the default preset), silently."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10-cpu").write_text("train:\n  epochs: 7\n")
    with pytest.raises(ConfigError, match="^config cifar10-cpu names both the preset and the file cifar10-cpu in "
                                          f"{re.escape(str(tmp_path))}; give ./cifar10-cpu for the file, or .*"
                                          "cifar10-cpu.yaml for the preset$"):
        load_config("cifar10-cpu")
    assert load_config("./cifar10-cpu").train.epochs == 7
    (tmp_path / "mine").write_text("train:\n  epochs: 6\n")  # a file not named as a preset: the file
    assert load_config("mine").train.epochs == 6
    (tmp_path / "cifar10").write_text("train:\n  epochs: 7\n")
    import byol.train
    from byol.cli import main
    taken = []
    monkeypatch.setattr(byol.train, "pretrain", lambda config, resume=False: taken.append(config) or {"step": 0})
    monkeypatch.setattr("byol.cli._pretrain_rows", lambda config, results: [("steps", "0")])
    assert main(["pretrain", "--train.max_steps=1"]) == 0
    assert taken[0].train.epochs == load_config(str(Path(__file__).parent.parent / "configs" / "cifar10.yaml")
                                                ).train.epochs != 7


def test_a_yaml_file_whose_sections_hold_no_keys_is_one_sentence(tmp_path):
    """A user test: ``train: {}`` ran the code's defaults (a file with no settings is refused), and a section
    whose keys were all commented out was said to be "a mapping of keys" it had to be."""
    path = tmp_path / "run.yaml"
    for text, said in (("train: {}\n", f"config {path} holds no settings"),
                       ("train:\n  # epochs: 3\naugment:\n", f"config {path} holds no settings"),
                       ("train:\n  epochs: 3\naugment:\n  # preset: paper\n",
                        f"config {path}: config section 'augment' is empty (its keys commented out?); give its "
                        "keys under it, or remove it"),
                       ("train:\n  epochs: 3\naugment: {}\n",  # (a review: taken quietly beside another)
                        f"config {path}: config section 'augment' is empty (its keys commented out?)")):
        path.write_text(text)
        with pytest.raises(ConfigError, match="^" + re.escape(said)):
            load_config(path)


def test_resume_from_the_config_of_a_copied_run_does_not_resume_the_original(tmp_path):
    """A user test: --resume --config COPY/config.yaml, a copied run's, resumed and trained the original, which its
    config.yaml names as train.out_dir: refused, with the folder to give for each."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    for run in (original, copy):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"")
        save_config(load_config("cifar10", [f"--train.out_dir={original}"]), run / "config.yaml")
    said = f"{copy / 'config.yaml'} is the config of the run in {copy}, but it names train.out_dir={original}, "
    with pytest.raises(ConfigError, match="^" + re.escape(said)):
        resume_config(str(copy / "config.yaml"), [], explicit=True)
    assert resume_config(str(copy / "config.yaml"), [f"--train.out_dir={copy}"], explicit=True).train.out_dir == \
        str(copy)  # said outright: the copy
    assert resume_config(str(original / "config.yaml"), [], explicit=True).train.out_dir == str(original)


def test_a_section_replaced_in_python_is_one_sentence():
    """A user test: ``config.train = {"epochs": 3}`` in a notebook raised "vars() argument must have __dict__
    attribute" from byol.pretrain's check."""
    config = load_config("cifar10-cpu")
    config.train = {"epochs": 3}
    with pytest.raises(TypeError, match="^config.train must be a byol.config.TrainConfig, not dict: set its keys one "
                                        "by one"):
        checked(config)


def test_a_whole_number_written_as_a_float_says_how_to_write_it(tmp_path):
    """A user test: ``max_steps: 1e5`` (YAML 1.1 reads it as text) was "must be int, got '1e5'", as if it were a
    word; a whole number written 1e5 or 5.0 now says the number to write."""
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 1e5\n")
    with pytest.raises(ConfigError, match=re.escape(f"config {path}: train.max_steps must be a whole number, got 1e5: "
                                                    "write it as 100000")):
        load_config(path)
    with pytest.raises(ConfigError, match=re.escape("train.epochs must be a whole number, got 5.0: write it as 5")):
        load_config("cifar10", ["--train.epochs=5.0"])
    for value in ("2.5", "inf", "1e30"):  # not a whole number, or none that fits: as before
        with pytest.raises(ConfigError, match=re.escape("train.epochs must be int, got")):
            load_config("cifar10", [f"--train.epochs={value}"])


def _moved_run(original: Path, moved: Path, monkeypatch) -> list:
    """A run's folder moved from ``original`` to ``moved`` (its config.yaml names ``original``), and the list
    that the configs a mocked ``pretrain`` is given go into."""
    import byol.train
    (moved / "checkpoints").mkdir(parents=True)
    (moved / "checkpoints" / "last.pt").write_bytes(b"")
    save_config(load_config("cifar10", [f"--train.out_dir={original}"]), moved / "config.yaml")
    taken = []
    monkeypatch.setattr(byol.train, "pretrain", lambda config, resume=False: taken.append(config) or {"step": 0})
    monkeypatch.setattr("byol.cli._pretrain_rows", lambda config, results: [("steps", "0")])
    return taken


def test_resume_auto_from_the_config_of_a_moved_run_does_not_start_a_new_one_where_it_was(tmp_path, monkeypatch,
                                                                                          capsys):
    """--resume=auto --config MOVED/config.yaml, the run moved from the folder its config names: that folder holds
    no checkpoint, so a new run started there, the moved run left as it was; refused as --resume refuses it."""
    from byol.cli import main
    original, moved = tmp_path / "original", tmp_path / "moved"
    taken = _moved_run(original, moved, monkeypatch)
    assert main(["pretrain", "--resume=auto", "--config", str(moved / "config.yaml")]) == 2
    assert not taken
    said = capsys.readouterr().err  # no run where it was: the folder with the run alone is offered
    assert said.endswith(f"give --train.out_dir={moved} to resume this one\n"), said
    (original / "checkpoints").mkdir(parents=True)  # a copy, the original run still there: refused where it
    (original / "checkpoints" / "last.pt").write_bytes(b"")  # continues too (by resume_config)
    assert main(["pretrain", "--resume=auto", "--config", str(moved / "config.yaml")]) == 2
    assert not taken
    assert capsys.readouterr().err.endswith(f"or --train.out_dir={original} for that one\n")


def test_a_new_run_from_the_config_of_a_moved_run_says_the_folder_it_starts_in(tmp_path, monkeypatch, capsys):
    """A user test (an upgrading user): --config ARCHIVE/RUN/config.yaml, fed back to repeat a run moved there,
    started a new run in the folder the config names, which the run had been moved from, without a word. It is
    said; not where --train.out_dir is given, nor where the config is the folder's own, nor where the folder
    named holds a run (refused then, as before)."""
    from byol.cli import main
    original, moved = tmp_path / "original", tmp_path / "archive" / "run"
    taken = _moved_run(original, moved, monkeypatch)
    assert main(["pretrain", "--config", str(moved / "config.yaml")]) == 0
    assert taken[-1].train.out_dir == str(original)  # as before: the folder the config names
    said = capsys.readouterr().err
    assert (f"note: {moved / 'config.yaml'} is the config of the run in {moved}, but it names train.out_dir="
            f"{original} (a copied or moved run?), where this new run starts; --train.out_dir starts it "
            "elsewhere\n") in said, said
    monkeypatch.setattr(error_lines, "launch_rank", lambda: 1)  # under torchrun: rank 0's alone
    assert main(["pretrain", "--config", str(moved / "config.yaml")]) == 0
    assert "is the config of the run" not in capsys.readouterr().err
    monkeypatch.setattr(error_lines, "launch_rank", lambda: 0)
    assert main(["pretrain", "--config", str(moved / "config.yaml"), f"--train.out_dir={tmp_path / 'new'}"]) == 0
    assert "is the config of the run" not in capsys.readouterr().err
    save_config(load_config("cifar10", [f"--train.out_dir={moved}"]), moved / "config.yaml")  # the folder's own
    main(["pretrain", "--config", str(moved / "config.yaml")])
    assert "is the config of the run" not in capsys.readouterr().err
    save_config(load_config("cifar10", [f"--train.out_dir={original}"]), moved / "config.yaml")
    (original / "checkpoints").mkdir(parents=True)  # a copy: the original still there
    (original / "checkpoints" / "last.pt").write_bytes(b"")
    main(["pretrain", "--config", str(moved / "config.yaml")])
    assert "is the config of the run" not in capsys.readouterr().err


def test_an_unknown_augment_color_ops_is_one_sentence_with_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config("cifar10", ["--augment.color_ops=tf"])
    assert str(e.value) == "augment.color_ops must be one of torchvision, reference (the colour jitter's ops: " \
                           "torchvision's ColorJitter, or the reference code's)"


def test_a_saved_config_without_color_ops_loads_as_torchvision(tmp_path):
    """A checkpoint's or config.yaml's settings from before the key."""
    saved = load_config("cifar10").to_dict()
    del saved["augment"]["color_ops"]
    config = config_from_dict(saved)
    assert config.augment.color_ops == "torchvision"
    assert views_of(config)[0].color_ops == "torchvision"
    path = tmp_path / "config.yaml"  # a run's config.yaml from before the key, read as --config reads it
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert load_config(str(path)).augment.color_ops == "torchvision"
