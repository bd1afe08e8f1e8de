"""Study files: parsing, merging, and every error a user can make.

Every error message must name the file, the key path the user wrote, and what would be right
(the allowed keys or names, with a "did you mean" for near misses).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import pytest
from conftest import TINY_STUDY, cli_env, describe_result, run_cli, write_plugin, write_study

from dlbench.config import DEFAULT_BASELINE, read_study_file
from dlbench.errors import ConfigError, UserError
from dlbench.plugins import load_plugins
from dlbench.study import expand
from dlbench.textfile import MAX_BYTES

# -- helpers ------------------------------------------------------------------------------------


def config_error(tmp_path, text: str, registry=None) -> ConfigError:
    """Write ``text`` as a study file, read and expand it, and return the ConfigError raised."""
    path = write_study(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        sf = read_study_file(path)
        if registry is not None:
            expand(sf, registry)
    err = info.value
    assert str(path) in str(err), f"the message must name the file: {err}"
    assert err.source == str(path)
    return err


def one_problem(err: ConfigError) -> str:
    assert len(err.problems) == 1, f"expected exactly one problem, got {err.problems}"
    return err.problems[0]


LEVELS = """
[studies.s.levels]
off = {}
on = { regularizers = ["dropout"] }
"""


def trials_of(tmp_path, text: str, registry, name="study.toml"):
    return expand(read_study_file(write_study(tmp_path, text, name)), registry)


# -- valid files --------------------------------------------------------------------------------


def test_tiny_study_parses(tmp_path):
    sf = read_study_file(write_study(tmp_path, TINY_STUDY))
    assert sf.name == "tiny"
    assert sf.description.startswith("dlbench test suite")
    assert sf.text == TINY_STUDY
    assert [s.name for s in sf.studies] == ["dropout", "act_depth"]
    dropout, act_depth = sf.studies
    assert dropout.question == "Does dropout help a small MLP?"
    assert dropout.seeds == (0, 1)
    assert [f.name for f in dropout.factors] == ["dropout"]
    assert dropout.factors[0].level_names == ["off", "on"]
    assert dropout.reference == {"dropout": "off"}  # the first level unless set
    assert [(f.name, f.level_names) for f in act_depth.factors] == [("activation", ["relu", "tanh"]),
                                                                    ("depth", ["1", "2"])]
    # the file's baseline is merged over the defaults, component shorthands become tables
    assert sf.baseline["optimizer"] == {"name": "adam", "lr": 0.01}
    assert sf.baseline["dataset"] == {"name": "mnist1d", "num_samples": 600}
    assert sf.baseline["activation"] == {"name": "relu"}
    assert sf.baseline["val_fraction"] == DEFAULT_BASELINE["val_fraction"]


def test_smallest_study_file_uses_every_default(tmp_path, registry):
    trials = trials_of(tmp_path, "[studies.s.levels]\na = {}\n", registry)
    assert [t.seed for t in trials] == [0, 1, 2]  # default: 3 seeds
    cfg = trials[0].config
    for key in ("epochs", "batch_size", "val_fraction"):
        assert cfg[key] == DEFAULT_BASELINE[key]
    assert cfg["dataset"]["name"] == "mnist1d"
    assert cfg["architecture"]["name"] == "mlp"
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    assert cfg["regularizers"] == []


def test_study_name_defaults_to_file_stem(tmp_path):
    sf = read_study_file(write_study(tmp_path, "[studies.s.levels]\na = {}\n", name="my-ablation.toml"))
    assert sf.name == "my-ablation"


def test_baseline_component_options_merge_over_default_name(tmp_path, registry):
    # a table without a name keeps the default plugin and sets its options
    trials = trials_of(tmp_path, "[baseline]\noptimizer = { lr = 0.5 }\n[studies.s.levels]\na = {}\n", registry)
    assert trials[0].config["optimizer"]["name"] == "sgd"
    assert trials[0].config["optimizer"]["lr"] == 0.5


# -- TOML and file errors -----------------------------------------------------------------------


def test_broken_toml_names_file_and_line(tmp_path):
    err = config_error(tmp_path, "[baseline]\nepochs = \n")
    msg = one_problem(err)
    assert "invalid TOML" in msg
    assert "line 2" in msg


def test_missing_study_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        read_study_file(path)
    assert str(path) in str(info.value)
    assert "no such study file" in str(info.value)
    assert isinstance(info.value, UserError)


def test_directory_as_study_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_study_file(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "it is a directory" in str(info.value)


# -- the bytes of a study file ------------------------------------------------------------------

SMALL = "[study]\ndescription = 'Étude ✓'\n[studies.s.levels]\na = {}\n"


def bytes_error(tmp_path, data: bytes) -> str:
    """Write ``data`` as a study file, read it, and return the one problem reported."""
    path = tmp_path / "study.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        read_study_file(path)
    assert info.value.source == str(path)
    return one_problem(info.value)


@pytest.mark.parametrize("data, expected", [
    (SMALL.replace(" ✓", "").encode("latin-1"), ["not UTF-8 text: byte 0xC9 on line 2", "Latin-1", "save it as UTF-8"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), ["NUL bytes (the first on line 3)", "binary"]),
    (b"[studies.s.levels]\n\na = {}\x00\n", ["NUL bytes (the first on line 3)"]),
    (SMALL.encode("utf-16-le"), ["NUL bytes", "UTF-16/UTF-32 text without a byte-order mark", "save it as UTF-8"]),
    (b"\xff\xfe[\x00s", ["starts with a UTF-16 byte-order mark but is not valid UTF-16", "save it as UTF-8"]),
    (b"", ["the file is empty", "[studies.dropout.levels]"]),
    (b" \n\t\r\n", ["the file is empty"]),
    (b"a = " + b"[" * 5000, ["invalid TOML: arrays or inline tables nested too deeply"]),
    (b"a = " + b"1" * 5000, ["invalid TOML: an integer of thousands of digits"]),
], ids=["latin-1", "binary", "nul-byte", "utf-16-without-bom", "broken-utf-16", "empty", "blank", "deep", "long-int"])
def test_bytes_that_are_no_study_file(tmp_path, data, expected):
    msg = bytes_error(tmp_path, data)
    for part in expected:
        assert part in msg


@pytest.mark.parametrize("encoding, bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                           ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00")])
def test_a_byte_order_mark_names_the_encoding(tmp_path, encoding, bom):
    path = tmp_path / "study.toml"
    path.write_bytes(bom + SMALL.encode(encoding))
    sf = read_study_file(path)
    assert sf.description == "Étude ✓"
    assert sf.text == SMALL  # what is attached to MLflow: the text, without the mark


def test_a_huge_file_is_refused_unread(tmp_path):
    path = tmp_path / "study.toml"
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: NUL bytes, which reading would report instead
    with pytest.raises(ConfigError) as info:
        read_study_file(path)
    msg = one_problem(info.value)
    assert f"the file holds {MAX_BYTES + 1:,} bytes" in msg and f"at most {MAX_BYTES:,}" in msg


@contextmanager
def as_unprivileged_user():
    """Run as 'nobody' while the tests run as root, who may read any file whatever its mode."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_unreadable_file(tmp_path):
    path = write_study(tmp_path, SMALL)
    path.chmod(0)
    with as_unprivileged_user(), pytest.raises(ConfigError) as info:
        read_study_file(path)
    assert info.value.source == str(path)
    assert one_problem(info.value).startswith("permission denied: dlbench may not read the file")


def test_a_symbolic_link_to_a_missing_file(tmp_path):
    (tmp_path / "study.toml").symlink_to(tmp_path / "moved.toml")
    with pytest.raises(ConfigError) as info:
        read_study_file(tmp_path / "study.toml")
    assert one_problem(info.value).startswith("no such study file (a symbolic link to a missing file)")


def test_an_integer_beyond_64_bits(tmp_path):
    err = config_error(tmp_path, "[baseline]\nepochs = 1" + "0" * 30 + "\n" + LEVELS)
    assert one_problem(err) == ("baseline.epochs: an integer of 31 digits is beyond TOML's 64-bit integers "
                                "(-2^63 to 2^63 - 1)")


@pytest.mark.parametrize("data, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "NUL bytes"),
    (b'[baseline]\noptimizer = { name = "sgd", lr = -1.0 }\n'
     b'[studies.s.levels]\noff = {}\non = { regularizers = [{ name = "dropout", p_hidden = 1.5 }] }\n',
     "2 problems in the study file:\n"
     "  - baseline.optimizer.lr: must be > 0, got -1.0\n"
     "  - studies.s.levels.on.regularizers[0].p_hidden: must be >= 0 and < 1, got 1.5"),
], ids=["binary", "out-of-domain"])
def test_cli_dry_run_refuses_with_exit_2_and_no_traceback(tmp_path, data, expected):
    path = tmp_path / "study.toml"
    path.write_bytes(data)
    proc = run_cli(["run", path, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in proc.stderr, describe_result(proc)
    assert str(path) in proc.stderr
    assert expected in proc.stderr
    assert "seed=" not in proc.stdout  # no trial listed: nothing would have trained


# -- structure errors ---------------------------------------------------------------------------


def test_unknown_top_level_key_suggests(tmp_path):
    err = config_error(tmp_path, "[baselin]\nepochs = 3\n" + LEVELS)
    msg = one_problem(err)
    assert msg.startswith("baselin: unknown key")
    assert "did you mean 'baseline'?" in msg
    assert "choose one of: baseline, studies, study" in msg


def test_unknown_study_meta_key(tmp_path):
    err = config_error(tmp_path, "[study]\nseed = 3\n" + LEVELS)
    msg = one_problem(err)
    assert msg.startswith("study.seed: unknown key")
    assert "did you mean 'seeds'?" in msg


def test_unknown_baseline_key_suggests_and_lists_allowed(tmp_path):
    err = config_error(tmp_path, '[baseline]\noptimiser = "adam"\n' + LEVELS)
    msg = one_problem(err)
    assert msg.startswith("baseline.optimiser: unknown key")
    assert "did you mean 'optimizer'?" in msg
    for key in DEFAULT_BASELINE:
        assert key in msg


def test_invalid_study_name(tmp_path):
    err = config_error(tmp_path, '[study]\nname = "my\\tstudy"\n' + LEVELS)
    assert one_problem(err).startswith("study.name: a name cannot hold control characters or line breaks ('\\t')")
    err = config_error(tmp_path, f'[study]\nname = "{"x" * 201}"\n' + LEVELS)
    assert "at most 200 characters; this one has 201" in one_problem(err)


def test_names_may_be_any_text_but_control_characters(tmp_path):
    """Spaces, quotes, slashes, non-ASCII and 200 characters name a study, factor or level;
    blank names, control characters and spaces at either end do not, each error at its key."""
    text = ('[study]\nname = "a \\"b\\" \'c\' / ü"\n'
            '[studies."../x"]\n[studies."../x".factors."f 1"]\n"ü/\'q\'" = {}\n'
            f'[studies."{"é" * 200}".levels]\n".." = {{}}\n')
    sf = read_study_file(write_study(tmp_path, text))
    assert sf.name == "a \"b\" 'c' / ü"
    assert [s.name for s in sf.studies] == ["../x", "é" * 200]
    assert sf.studies[0].factors[0].name == "f 1" and sf.studies[0].factors[0].level_names == ["ü/'q'"]
    bad = '[studies." s"]\n[studies." s".factors.""]\na = {}\n[studies.t.levels]\n"a\\nb" = {}\n'
    err = config_error(tmp_path, bad)
    assert sorted(err.problems) == [
        'studies." s".factors."": a name cannot be empty or only spaces',
        'studies." s": a name cannot start or end with a space (a study name is any text of 1 to 200 characters)',
        "studies.t.levels.\"a\\nb\": a name cannot hold control characters or line breaks ('\\n')"]


def test_all_problems_reported_at_once(tmp_path):
    err = config_error(tmp_path, "[baselin]\n[study]\nseeds = 0\n"
                                 "[studies.s]\nquestin = 'x'\n[studies.s.levels]\na = {}\n")
    assert len(err.problems) == 3
    assert "3 problems" in str(err)
    for p in err.problems:
        assert f"  - {p}" in str(err)


@pytest.mark.parametrize("seeds", ["0", "-1", "[1, 1]", '["a"]', "[]", "true", "1.5", "[-1]", '"3"', "10001",
                                   "[4294967296]"])
def test_bad_seeds(tmp_path, seeds):
    err = config_error(tmp_path, f"[study]\nseeds = {seeds}\n" + LEVELS)
    msg = one_problem(err)
    assert msg.startswith("study.seeds: expected a seed count from 1 to 10000 or a list of distinct integers from 0 "
                          "to 4294967295")


def test_bad_seeds_of_one_study(tmp_path):
    err = config_error(tmp_path, "[studies.s]\nseeds = [2, 2]\n[studies.s.levels]\na = {}\n")
    assert one_problem(err).startswith("studies.s.seeds: expected a seed count")


@pytest.mark.parametrize("seeds, expected", [("3", (0, 1, 2)), ("[7, 3]", (7, 3)), ("1", (0,))])
def test_good_seeds(tmp_path, seeds, expected):
    sf = read_study_file(write_study(tmp_path, f"[study]\nseeds = {seeds}\n" + LEVELS))
    assert sf.studies[0].seeds == expected


def test_study_seeds_override_file_seeds(tmp_path):
    text = "[study]\nseeds = 5\n[studies.s]\nseeds = [9]\n[studies.s.levels]\na = {}\n"
    sf = read_study_file(write_study(tmp_path, text))
    assert sf.studies[0].seeds == (9,)


def test_no_studies(tmp_path):
    err = config_error(tmp_path, "[baseline]\nepochs = 3\n")
    assert one_problem(err).startswith("studies: no study defined")


def test_study_with_levels_and_factors(tmp_path):
    err = config_error(tmp_path, "[studies.s.levels]\na = {}\n[studies.s.factors.f]\nx = {}\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s: give exactly one of 'levels'")
    assert "'factors'" in msg


def test_study_with_neither_levels_nor_factors(tmp_path):
    err = config_error(tmp_path, "[studies.s]\nquestion = 'why?'\n")
    assert one_problem(err).startswith("studies.s: give exactly one of 'levels'")


def test_study_that_is_not_a_table(tmp_path):
    err = config_error(tmp_path, "studies = { s = 3 }\n")
    assert one_problem(err).startswith("studies.s: expected a table")


def test_empty_levels(tmp_path):
    err = config_error(tmp_path, "[studies.s.levels]\n")
    assert one_problem(err).startswith("studies.s.levels: expected a table of named levels")


def test_empty_factors(tmp_path):
    err = config_error(tmp_path, "[studies.s]\nfactors = {}\n")
    assert one_problem(err).startswith("studies.s.factors: empty")


def test_level_that_is_not_a_table(tmp_path):
    err = config_error(tmp_path, "[studies.s.levels]\noff = {}\non = 3\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.levels.on: a level is a table of overrides")
    assert "integer 3" in msg


def test_unknown_key_in_level(tmp_path):
    err = config_error(tmp_path, "[studies.s.levels]\noff = {}\non = { epoch = 3 }\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.levels.on.epoch: unknown key")
    assert "did you mean 'epochs'?" in msg


def test_unknown_key_in_factor_level(tmp_path):
    err = config_error(tmp_path, "[studies.s.factors.act]\nrelu = {}\ntanh = { activaton = 'tanh' }\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.factors.act.tanh.activaton: unknown key")
    assert "did you mean 'activation'?" in msg


def test_unknown_key_in_study(tmp_path):
    err = config_error(tmp_path, "[studies.s]\nquestin = 'x'\n[studies.s.levels]\na = {}\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.questin: unknown key")
    assert "did you mean 'question'?" in msg


def test_unknown_key_in_study_baseline(tmp_path):
    err = config_error(tmp_path, "[studies.s.baseline]\nepoch = 3\n[studies.s.levels]\na = {}\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.baseline.epoch: unknown key")
    assert "did you mean 'epochs'?" in msg


@pytest.mark.parametrize("text, where", [
    ("[studies.seed.levels]\na = {}\n", "studies.seed.levels"),
    ("[studies.s.factors.status]\na = {}\n", "studies.s.factors.status"),
])
def test_reserved_factor_names(tmp_path, text, where):
    # the report has columns study, level, seed, status, ...: a factor may not shadow them
    err = config_error(tmp_path, text)
    msg = one_problem(err)
    assert msg.startswith(f"{where}: ")
    assert "cannot name a factor" in msg and "reserved" in msg


def test_reference_to_unknown_level(tmp_path):
    err = config_error(tmp_path, "[studies.s]\nreference = 'of'\n[studies.s.levels]\noff = {}\non = {}\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.reference: unknown level 'of'")
    assert "did you mean 'off'?" in msg
    assert "choose one of: off, on" in msg


def test_reference_to_unknown_factor(tmp_path):
    err = config_error(tmp_path, "[studies.s]\nreference = { act = 'relu', dept = '2' }\n"
                                 "[studies.s.factors.act]\nrelu = {}\n[studies.s.factors.depth]\n1 = {}\n2 = {}\n")
    msg = one_problem(err)
    assert msg.startswith("studies.s.reference.dept: unknown factor")
    assert "did you mean 'depth'?" in msg


def test_reference_sets_the_reference_level(tmp_path):
    text = "[studies.s]\nreference = 'on'\n[studies.s.levels]\noff = {}\non = {}\n"
    sf = read_study_file(write_study(tmp_path, text))
    assert sf.studies[0].reference == {"s": "on"}


# -- errors found when resolving against the plugins --------------------------------------------


def test_unknown_plugin_name_suggests(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\noptimizer = "adm"\n' + LEVELS, registry)
    msg = one_problem(err)  # reported once, not once per level
    assert msg.startswith("baseline.optimizer: unknown optimizer 'adm'")
    assert "did you mean 'adam'?" in msg
    assert "choose one of: " + ", ".join(registry.names("optimizer")) in msg


def test_unknown_regularizer_in_list(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\nregularizers = ["l2", "dropot"]\n' + LEVELS, registry)
    msg = one_problem(err)
    assert msg.startswith("baseline.regularizers[1]: unknown regularizer 'dropot'")
    assert "did you mean 'dropout'?" in msg


def test_regularizers_not_a_list(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\nregularizers = "dropout"\n[studies.s.levels]\na = {}\n', registry)
    assert one_problem(err).startswith("baseline.regularizers: expected a list of regularizers")


def test_component_that_is_neither_name_nor_table(tmp_path, registry):
    err = config_error(tmp_path, "[baseline]\noptimizer = 3\n[studies.s.levels]\na = {}\n", registry)
    msg = one_problem(err)
    assert msg.startswith("baseline.optimizer: expected a optimizer name or a table with a 'name' key") \
        or msg.startswith("baseline.optimizer: expected an optimizer name")
    assert "adam" in msg


def test_unknown_option_suggests_and_lists_options(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\noptimizer = { name = "sgd", momentun = 0.9 }\n' + LEVELS, registry)
    msg = one_problem(err)
    assert msg.startswith("baseline.optimizer.momentun: optimizer 'sgd' has no option 'momentun'")
    assert "did you mean 'momentum'?" in msg
    assert "choose one of: lr, momentum, nesterov, weight_decay" in msg


def test_option_of_plugin_without_options(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\nactivation = { name = "relu", inplace = true }\n' + LEVELS, registry)
    msg = one_problem(err)
    assert msg.startswith("baseline.activation.inplace: activation 'relu' has no option 'inplace'")
    assert "it takes no options" in msg


@pytest.mark.parametrize("table, path, expected", [
    ('optimizer = { name = "sgd", lr = "fast" }', "baseline.optimizer.lr", "expected float > 0, got string 'fast'"),
    ("architecture = { depth = true }", "baseline.architecture.depth", "expected int >= 0, got boolean True"),
    ("architecture = { depth = 2.0 }", "baseline.architecture.depth", "expected int >= 0, got float 2.0"),
    ('optimizer = { name = "sgd", nesterov = 1 }', "baseline.optimizer.nesterov", "expected bool, got integer 1"),
    ('initializer = { name = "xavier", distribution = "gaussian" }', "baseline.initializer.distribution",
     "expected one of 'uniform', 'normal', got string 'gaussian'"),
    ('schedule = { name = "step", milestones = 0.5 }', "baseline.schedule.milestones",
     "expected a list of float >= 0 and <= 1, got float 0.5"),
])
def test_wrong_option_type(tmp_path, registry, table, path, expected):
    err = config_error(tmp_path, f"[baseline]\n{table}\n" + LEVELS, registry)
    msg = one_problem(err)
    assert msg == f"{path}: {expected}"


@pytest.mark.parametrize("table, expected", [
    ('optimizer = { name = "sgd", lr = -1.0 }', "baseline.optimizer.lr: must be > 0, got -1.0"),
    ('optimizer = { name = "sgd", lr = 0 }', "baseline.optimizer.lr: must be > 0, got 0"),
    ('optimizer = { name = "sgd", lr = inf }', "baseline.optimizer.lr: must be > 0, got inf (not a finite number)"),
    ('optimizer = { name = "sgd", momentum = 1.0 }', "baseline.optimizer.momentum: must be >= 0 and < 1, got 1.0"),
    ('optimizer = { name = "adam", beta2 = 1 }', "baseline.optimizer.beta2: must be >= 0 and < 1, got 1"),
    ('optimizer = { name = "adam", eps = 0.0 }', "baseline.optimizer.eps: must be > 0, got 0.0"),
    ('optimizer = { name = "adamw", weight_decay = -0.01 }', "baseline.optimizer.weight_decay: must be >= 0, got -0.01"),
    ("architecture = { width = 0 }", "baseline.architecture.width: must be >= 1, got 0"),
    ('regularizers = [{ name = "dropout", p_hidden = 1.5 }]',
     "baseline.regularizers[0].p_hidden: must be >= 0 and < 1, got 1.5"),
    ('regularizers = ["l2", { name = "early_stopping", patience = 0 }]',
     "baseline.regularizers[1].patience: must be >= 1, got 0"),
    ('schedule = { name = "step", milestones = [0.5, 1.5] }', "baseline.schedule.milestones[1]: must be >= 0 and <= 1, got 1.5"),
    ('initializer = { name = "normal", std = -0.1 }', "baseline.initializer.std: must be > 0, got -0.1"),
    ('dataset = { name = "mnist1d", num_samples = 5 }', "baseline.dataset.num_samples: must be >= 10, got 5"),
], ids=lambda v: v.split(":")[0] if ": " in v else None)
def test_option_outside_its_domain(tmp_path, registry, table, expected):
    err = config_error(tmp_path, f"[baseline]\n{table}\n" + LEVELS, registry)
    assert one_problem(err) == expected


def test_domain_error_in_a_level_points_at_the_level(tmp_path, registry):
    err = config_error(tmp_path, "[studies.s.levels]\noff = {}\n"
                                 "on = { regularizers = [{ name = 'dropout', p_hidden = 1.5 }] }\n"
                                 "fast = { optimizer = { lr = -1.0 } }\n", registry)
    assert err.problems == ["studies.s.levels.on.regularizers[0].p_hidden: must be >= 0 and < 1, got 1.5",
                            "studies.s.levels.fast.optimizer.lr: must be > 0, got -1.0"]


def test_domain_bounds_are_inclusive_or_not_as_declared(tmp_path, registry):
    text = ('[baseline]\narchitecture = { depth = 0 }\noptimizer = { name = "sgd", momentum = 0 }\n'
            'regularizers = [{ name = "dropout", p_input = 0.0, p_hidden = 0.999 }]\n' + LEVELS)
    cfg = trials_of(tmp_path, text, registry)[0].config
    assert cfg["architecture"]["depth"] == 0 and cfg["optimizer"]["momentum"] == 0.0
    assert cfg["regularizers"][0]["p_hidden"] == 0.999


def test_int_accepted_for_float_and_coerced(tmp_path, registry):
    as_int = trials_of(tmp_path, '[baseline]\noptimizer = { name = "sgd", lr = 1 }\n' + LEVELS, registry, "a.toml")
    as_float = trials_of(tmp_path, '[baseline]\noptimizer = { name = "sgd", lr = 1.0 }\n' + LEVELS, registry, "b.toml")
    lr = as_int[0].config["optimizer"]["lr"]
    assert lr == 1.0 and type(lr) is float
    assert [t.config_hash for t in as_int] == [t.config_hash for t in as_float]


def test_int_accepted_for_float_scalar(tmp_path, registry):
    trials = trials_of(tmp_path, "[baseline]\nval_fraction = 0\n" + LEVELS, registry)
    assert trials[0].config["val_fraction"] == 0.0 and type(trials[0].config["val_fraction"]) is float


@pytest.mark.parametrize("line, expected", [
    ("epochs = 0", "baseline.epochs: must be >= 1, got 0"),
    ("epochs = 2.5", "baseline.epochs: expected int >= 1, got float 2.5"),
    ("batch_size = -4", "baseline.batch_size: must be >= 1, got -4"),
    ("val_fraction = 1.0", "baseline.val_fraction: must be >= 0 and < 1, got 1.0"),
    ("val_fraction = -0.1", "baseline.val_fraction: must be >= 0 and < 1, got -0.1"),
    ("val_fraction = nan", "baseline.val_fraction: must be >= 0 and < 1, got nan (not a finite number)"),
    ('val_fraction = "10%"', "baseline.val_fraction: expected float >= 0 and < 1, got string '10%'"),
])
def test_bad_scalar_settings(tmp_path, registry, line, expected):
    err = config_error(tmp_path, f"[baseline]\n{line}\n" + LEVELS, registry)
    assert one_problem(err) == expected


REQUIRED_PLUGIN = """
from torch import nn
from dlbench import hookimpl

def shifted_relu(*, shift: float) -> nn.Module:
    \"\"\"ReLU of x - shift (a test plugin with a required option).\"\"\"
    return nn.Threshold(shift, 0.0)

@hookimpl
def dlbench_register_activations(register):
    register("shifted_relu", shifted_relu)
"""


def test_missing_required_option(tmp_path):
    write_plugin(tmp_path, "required", REQUIRED_PLUGIN)
    local = load_plugins(tmp_path / "plugins", autoload=False).registry
    err = config_error(tmp_path, '[baseline]\nactivation = "shifted_relu"\n' + LEVELS, local)
    assert one_problem(err) == "baseline.activation.shift: activation 'shifted_relu' requires this option (float)"
    # and given, it resolves
    trials = trials_of(tmp_path, '[baseline]\nactivation = { name = "shifted_relu", shift = 1 }\n' + LEVELS, local,
                       "ok.toml")
    assert trials[0].config["activation"] == {"name": "shifted_relu", "shift": 1.0}


def test_duplicate_regularizer(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\nregularizers = ["dropout", { name = "dropout", p_input = 0.0 }]\n'
                                 "[studies.s.levels]\na = {}\n", registry)
    msg = one_problem(err)
    assert msg == "baseline.regularizers: regularizer 'dropout' is listed twice; list each once"


# -- where an error points ----------------------------------------------------------------------


def test_error_in_level_points_at_level(tmp_path, registry):
    err = config_error(tmp_path, "[studies.s.levels]\noff = {}\non = { optimizer = { lr = 'fast' } }\n", registry)
    assert one_problem(err) == "studies.s.levels.on.optimizer.lr: expected float > 0, got string 'fast'"


def test_error_in_factor_level_points_at_factor_level(tmp_path, registry):
    err = config_error(tmp_path, "[studies.s.factors.act]\nrelu = {}\ntanh = { activation = 'tahn' }\n"
                                 "[studies.s.factors.depth]\n1 = {}\n", registry)
    msg = one_problem(err)
    assert msg.startswith("studies.s.factors.act.tanh.activation: unknown activation 'tahn'")
    assert "did you mean 'tanh'?" in msg


def test_error_in_study_baseline_points_at_study_baseline(tmp_path, registry):
    err = config_error(tmp_path, "[studies.s.baseline]\noptimizer = { name = 'sgd', lr = 'fast' }\n"
                                 "[studies.s.levels]\noff = {}\non = { regularizers = ['dropout'] }\n", registry)
    assert one_problem(err) == "studies.s.baseline.optimizer.lr: expected float > 0, got string 'fast'"


def test_error_in_study_baseline_scalar(tmp_path, registry):
    err = config_error(tmp_path, "[studies.s.baseline]\nepochs = 0\n[studies.s.levels]\na = {}\n", registry)
    assert one_problem(err) == "studies.s.baseline.epochs: must be >= 1, got 0"


def test_error_in_file_baseline_points_at_baseline(tmp_path, registry):
    err = config_error(tmp_path, "[baseline]\noptimizer = { name = 'sgd', lr = 'fast' }\n" + LEVELS, registry)
    assert one_problem(err) == "baseline.optimizer.lr: expected float > 0, got string 'fast'"


def test_error_in_file_baseline_points_at_baseline_when_a_level_sets_another_option(tmp_path, registry):
    # The level sets optimizer.momentum; the bad value is baseline.optimizer.lr, which the level
    # never mentions. The user must be sent to the line they wrote: the baseline's, not the level's.
    err = config_error(tmp_path, "[baseline]\noptimizer = { name = 'sgd', lr = 'fast' }\n"
                                 "[studies.s.levels]\noff = {}\nmomentum = { optimizer = { momentum = 0.9 } }\n",
                       registry)
    assert err.problems == ["baseline.optimizer.lr: expected float > 0, got string 'fast'"]


def test_errors_in_two_studies_both_reported(tmp_path, registry):
    err = config_error(tmp_path, "[studies.a.levels]\nx = { optimizer = 'adm' }\n"
                                 "[studies.b.levels]\ny = { activation = 'rleu' }\n", registry)
    assert len(err.problems) == 2
    assert err.problems[0].startswith("studies.a.levels.x.optimizer: unknown optimizer 'adm'")
    assert err.problems[1].startswith("studies.b.levels.y.activation: unknown activation 'rleu'")


# -- the merge rule -----------------------------------------------------------------------------


MERGE_BASE = """
[baseline]
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
architecture = { name = "mlp", width = 16, depth = 1 }
"""


def configs_by_level(tmp_path, registry, levels: str) -> dict:
    trials = trials_of(tmp_path, MERGE_BASE + "[study]\nseeds = 1\n[studies.s.levels]\n" + levels, registry)
    return {t.level: t.config for t in trials}


def test_level_naming_another_plugin_replaces_the_table(tmp_path, registry):
    cfg = configs_by_level(tmp_path, registry, 'adam = { optimizer = { name = "adam" } }\n')["adam"]
    assert cfg["optimizer"] == {"name": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                "weight_decay": 0.0}
    assert "momentum" not in cfg["optimizer"]


def test_level_shorthand_naming_another_plugin_replaces_the_table(tmp_path, registry):
    cfg = configs_by_level(tmp_path, registry, 'adam = { optimizer = "adam" }\n')["adam"]
    assert cfg["optimizer"]["name"] == "adam" and "momentum" not in cfg["optimizer"]


def test_level_with_same_plugin_merges_options(tmp_path, registry):
    configs = configs_by_level(tmp_path, registry, 'slow = { optimizer = { lr = 0.01 } }\n'
                                                   'named = { optimizer = { name = "sgd", nesterov = true } }\n')
    assert configs["slow"]["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False,
                                            "weight_decay": 0.0}
    assert configs["named"]["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                                             "weight_decay": 0.0}


def test_level_replaces_lists_and_scalars(tmp_path, registry):
    text = MERGE_BASE + '[study]\nseeds = 1\n[studies.s.baseline]\nregularizers = ["l2"]\nepochs = 4\n' \
        '[studies.s.levels]\nkeep = {}\nswap = { regularizers = ["dropout"], epochs = 1 }\n'
    configs = {t.level: t.config for t in trials_of(tmp_path, text, registry)}
    assert [r["name"] for r in configs["keep"]["regularizers"]] == ["l2"]
    assert configs["keep"]["epochs"] == 4
    assert [r["name"] for r in configs["swap"]["regularizers"]] == ["dropout"]
    assert configs["swap"]["epochs"] == 1
    assert configs["swap"]["architecture"] == {"name": "mlp", "width": 16, "depth": 1, "bias": True}


def test_later_factor_overrides_earlier_factor(tmp_path, registry):
    text = MERGE_BASE + "[study]\nseeds = 1\n" \
        "[studies.s.factors.opt]\nadam = { optimizer = { name = 'adam', lr = 0.002 } }\n" \
        "[studies.s.factors.lr]\nhigh = { optimizer = { lr = 0.2 } }\n"
    (trial,) = trials_of(tmp_path, text, registry)
    assert trial.config["optimizer"]["name"] == "adam"
    assert trial.config["optimizer"]["lr"] == 0.2


def test_problem_messages_are_one_line_each(tmp_path, registry):
    err = config_error(tmp_path, '[baseline]\noptimizer = "adm"\nactivation = "rleu"\n' + LEVELS, registry)
    assert len(err.problems) == 2
    assert re.search(r"2 problems in the study file:\n  - .*\n  - .*$", str(err))
