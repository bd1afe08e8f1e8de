"""Issue 25, a plugin author working from the docs alone: a factory option a study could never
set is refused when it registers; every "not found" says where components come from; a local
plugin file that fails to load is named with its line and skipped, blocking only the studies
that use what it registers."""

from __future__ import annotations

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, write_plugin, write_study

from dlbench.config import parse_study_file
from dlbench.errors import ConfigError, PluginError
from dlbench.plugins import CONTRACTS, KINDS, load_plugins
from dlbench.schema import misplaced_options
from dlbench.study import expand

# -- a factory option that is not keyword-only --------------------------------------------------

# one factory per kind whose option comes after the contract's arguments without a `*`
MISPLACED = {
    "architecture": ("def arch(input_shape, num_classes, activation, width=64):",
                     "parameter 'width' comes after the contract's arguments (input_shape, num_classes, activation) "
                     "but is not keyword-only, so a study could never set it; write it after a `*`: "
                     "def arch(input_shape, num_classes, activation, *, width=64)"),
    "optimizer": ("def arch(params, lr: float = 0.1, *, momentum: float = 0.0):",
                  "parameter 'lr' comes after the contract's arguments (params) but is not keyword-only, so a study "
                  "could never set it; write it after a `*`: def arch(params, *, lr: float = 0.1, "
                  "momentum: float = 0.0)"),
    "schedule": ("def arch(optimizer, total_steps, gamma=0.5, every=10):",
                 "parameters 'gamma', 'every' come after the contract's arguments (optimizer, total_steps) but are "
                 "not keyword-only, so a study could never set them; write them after a `*`: "
                 "def arch(optimizer, total_steps, *, gamma=0.5, every=10)"),
    "initializer": ("def arch(model, data, gain=1.0):",
                    "parameter 'gain' comes after the contract's arguments (model, data) but is not keyword-only, "
                    "so a study could never set it; write it after a `*`: def arch(model, data, *, gain=1.0)"),
    "activation": ("def arch(gain=1.0):",
                   "parameter 'gain' is not keyword-only, and an activation's factory is called with no positional "
                   "arguments (only options), so a study could never set it; write it after a `*`: "
                   "def arch(*, gain=1.0)"),
    "dataset": ("def arch(path: str = 'x.npz'):",
                "parameter 'path' is not keyword-only, and a dataset's factory is called with no positional "
                "arguments (only options), so a study could never set it; write it after a `*`: "
                "def arch(*, path: str = 'x.npz')"),
}

MISPLACED_PLUGIN = """
from __future__ import annotations

from dlbench import hookimpl

{signature}
    \"\"\"A factory whose option is not keyword-only.\"\"\"

@hookimpl
def dlbench_register_{plural}(register):
    register("arch", arch)
"""

PLURAL = {kind: plural for plural, kind in KINDS.items()}


@pytest.mark.parametrize("kind", list(MISPLACED))
def test_an_option_that_is_not_keyword_only_is_refused_at_registration(tmp_path, kind):
    signature, problem = MISPLACED[kind]
    path = write_plugin(tmp_path, "arch", MISPLACED_PLUGIN.format(signature=signature, plural=PLURAL[kind]))
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path / "plugins", autoload=False)
    assert str(info.value) == f"local ({path}): {kind} 'arch' (dlbench_local_plugins.arch.arch): {problem}"


CLASS_PLUGIN = """
from dlbench import Preprocessor, Regularizer, hookimpl

class Step({base}):
    \"\"\"A class whose __init__ option is not keyword-only.\"\"\"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

@hookimpl
def dlbench_register_{plural}(register):
    register("step_{kind}", Step)
"""


@pytest.mark.parametrize("kind, base", [("regularizer", "Regularizer"), ("preprocessing", "Preprocessor")])
def test_a_class_factory_whose_init_option_is_not_keyword_only_is_refused(tmp_path, kind, base):
    path = write_plugin(tmp_path, "step", CLASS_PLUGIN.format(base=base, kind=kind, plural=PLURAL[kind]))
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path / "plugins", autoload=False)
    assert str(info.value) == (
        f"local ({path}): {kind} 'step_{kind}' (dlbench_local_plugins.step.Step): parameter 'scale' is not "
        f"keyword-only, and a{'n' if kind == 'initializer' else ''} {kind}'s factory is called with no positional "
        "arguments (only options), so a study could never set it; write it after a `*`: "
        "class Step: def __init__(self, *, scale: float = 1.0)")


def test_the_contracts_cover_every_kind_and_every_builtin_fits_its_own():
    assert set(CONTRACTS) == set(KINDS.values())
    registry = load_plugins(None, autoload=False).registry  # would raise on a misplaced option
    for component in registry:
        assert misplaced_options(component.factory, CONTRACTS[component.kind], component.kind) is None, component


def test_keyword_only_options_after_the_contract_register(tmp_path):
    write_plugin(tmp_path, "arch", MISPLACED_PLUGIN.format(
        signature="def arch(shape, classes, act, *, width: int = 64, depth: int = 2):", plural="architectures"))
    component = load_plugins(tmp_path / "plugins", autoload=False).registry.get("architecture", "arch")
    assert list(component.options) == ["width", "depth"]  # the contract's names are the author's to choose


def test_the_cli_refuses_the_misplaced_option_everywhere_with_exit_2(tmp_path):
    signature, problem = MISPLACED["architecture"]
    write_plugin(tmp_path, "arch", MISPLACED_PLUGIN.format(signature=signature, plural="architectures"))
    study = write_study(tmp_path, TINY_BASELINE + "[studies.s.levels]\na = { architecture = 'arch' }\n")
    for args in (["plugins", "check", "plugins/arch.py"], ["plugins", "show", "arch"], ["run", study, "--dry-run"]):
        proc = run_cli(args, cwd=tmp_path, env=cli_env(autoload=False))
        assert proc.returncode == 2, describe_result(proc)
        assert "Traceback" not in proc.stderr
        assert problem in proc.stderr, describe_result(proc)


# -- where components come from, whenever one is not found --------------------------------------

QHM_STUDY = TINY_BASELINE + "[studies.x.levels]\ny = { optimizer = 'qhm' }\nz = {}\n"
ENTRY_POINTS_OFF = ("from installed packages, through the 'dlbench' entry-point group (not searched, as "
                    "DLBENCH_DISABLE_PLUGIN_AUTOLOAD is set)")


def only_problem(proc) -> str:
    """The one problem of a study file's error, as one line (one paragraph)."""
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].endswith("1 problem in the study file:"), describe_result(proc)
    return lines[-1]


def test_an_unknown_component_in_a_study_says_where_components_come_from(tmp_path):
    study = write_study(tmp_path / "project", QHM_STUDY)
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    folder = (tmp_path / "project" / "plugins").resolve()
    assert only_problem(proc) == (
        "  - studies.x.levels.y.optimizer: unknown optimizer 'qhm'; choose one of: adagrad, adam, adamw, rmsprop, "
        f"sgd. Components come from dlbench's built-ins; {ENTRY_POINTS_OFF}; and from the local plugin files "
        f"(*.py) of a plugins folder: none was searched: dlbench looked for {folder} (the default: plugins/ next to "
        "the study file), which does not exist; put the plugin files there, or name their folder with "
        "--plugins-dir DIR.")


SQUARE = """
from torch import nn
from dlbench import hookimpl

def square():
    \"\"\"x squared.\"\"\"
    return nn.Identity()

@hookimpl
def dlbench_register_activations(register):
    register("square", square)
"""


def test_the_local_folder_searched_and_its_files_are_named(tmp_path):
    write_plugin(tmp_path, "square", SQUARE)
    study = write_study(tmp_path, QHM_STUDY.replace("optimizer = 'qhm'", "activation = 'sqaure'"))
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    problem = only_problem(proc)
    assert problem.startswith("  - studies.x.levels.y.activation: unknown activation 'sqaure'; did you mean 'square'? ")
    assert (f"of a plugins folder: {(tmp_path / 'plugins').resolve()} (the default: plugins/ next to the study "
            "file) was searched (loaded: square.py).") in problem

    given = tmp_path / "elsewhere"
    write_plugin(given, "square", SQUARE)  # elsewhere/plugins/square.py
    proc = run_cli(["run", study, "--dry-run", "--plugins-dir", given / "plugins"], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert (f"the folder given with --plugins-dir, {(given / 'plugins').resolve()}, was searched "
            "(loaded: square.py).") in only_problem(proc)


def test_installed_packages_are_named(example_site, tmp_path):
    study = write_study(tmp_path, QHM_STUDY)
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env({"PYTHONPATH": str(example_site)}))
    assert proc.returncode == 2, describe_result(proc)
    assert "through the 'dlbench' entry-point group (loaded: dlbench-example 0.1.0)" in only_problem(proc)


def test_a_name_of_another_kind_is_said_to_be_one(tmp_path, registry):
    raw = {"baseline": {"optimizer": "adam", "regularizers": ["sgd"]}, "studies": {"s": {"levels": {"a": {}}}}}
    with pytest.raises(ConfigError) as info:
        expand(parse_study_file(raw, tmp_path / "t.toml"), registry)
    (problem,) = info.value.problems
    assert problem.startswith("baseline.regularizers[0]: unknown regularizer 'sgd'; choose one of: ")
    assert "mc_dropout ('sgd' is an optimizer, not a regularizer). Components come from dlbench's built-ins" in problem


def test_where_from_is_said_once_in_a_file_with_several_unknown_components(tmp_path):
    study = write_study(tmp_path, QHM_STUDY.replace("z = {}", "z = { activation = 'rleu' }"))
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    first, second = proc.stderr.strip().splitlines()[-2:]
    assert "Components come from" in first
    assert second == ("  - studies.x.levels.z.activation: unknown activation 'rleu'; did you mean 'relu'? choose one "
                      "of: elu, gelu, identity, leaky_relu, prelu, relu, sigmoid, silu, softsign, step, tanh")


@pytest.mark.parametrize("command", ["show", "check"])
def test_plugins_show_and_check_of_an_unknown_name_say_where_components_come_from(tmp_path, command):
    (tmp_path / "study" / "plugins").mkdir(parents=True)  # the study's plugins: not here
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli(["plugins", command, "gem_cnn"], cwd=elsewhere, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert "\n" not in message  # one paragraph
    assert message.startswith("Error: no component is named 'gem_cnn': did you mean 'cnn'? choose one of: ")
    assert message.endswith(
        f"Components come from dlbench's built-ins; {ENTRY_POINTS_OFF}; and from the local plugin files (*.py) of a "
        f"plugins folder: none was searched: dlbench looked for {(elsewhere / 'plugins').resolve()} (the default: "
        "plugins/ next to the study file, or in the working directory for commands without one), which does not "
        "exist; put the plugin files there, or name their folder with --plugins-dir DIR.")


def test_a_plugins_dir_given_but_missing_is_still_an_error(tmp_path):
    proc = run_cli(["plugins", "show", "relu", "--plugins-dir", tmp_path / "nope"], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert f"--plugins-dir {tmp_path / 'nope'}: no such directory" in proc.stderr


# -- a local plugin file that fails to load -----------------------------------------------------

BROKEN = {
    "import": ("import torch\nfrom no_such_pkg_for_dlbench import QHM\n", 2,
               "ModuleNotFoundError: No module named 'no_such_pkg_for_dlbench'"),
    "syntax": ("x = 1\n\ndef f(:\n    pass\n", 3, "SyntaxError: invalid syntax"),
    "raise in a function called at import": ("def setup():\n    raise RuntimeError('no GPU')\n\nsetup()\n", 2,
                                             "RuntimeError: no GPU"),
    "hook": ("from dlbench import hookimpl\n\n@hookimpl\ndef dlbench_register_optimizers(register):\n"
             "    register('qhm', 1 / 0)\n", 5, "dlbench_register_optimizers raised ZeroDivisionError: division by zero"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_failing_plugin_file_is_named_with_its_line(tmp_path, case, capsys):
    code, line, error = BROKEN[case]
    path = write_plugin(tmp_path, "qhm", code)
    (failure,) = load_plugins(tmp_path / "plugins", autoload=False).registry.sources.failures
    assert str(failure) == f"{path}:{line}: {error}"
    assert f"{path}:{line}: {error}. The components it registers are unavailable" in capsys.readouterr().err


def test_a_study_naming_a_component_of_the_failed_file_says_it_failed(tmp_path):
    path = write_plugin(tmp_path, "qhm", BROKEN["import"][0])
    study = write_study(tmp_path, QHM_STUDY)
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"dlbench: warning: skipped the local plugin file {path}, which failed to "
                                  f"load: {path}:2: ModuleNotFoundError")
    problem = only_problem(proc)
    assert problem.startswith("  - studies.x.levels.y.optimizer: unknown optimizer 'qhm'; choose one of: ")
    assert problem.endswith(
        f"of a plugins folder: {(tmp_path / 'plugins').resolve()} (the default: plugins/ next to the study file) "
        f"was searched (no file loaded; 1 failed, below). Skipped: {path} failed to load ({path}:2: "
        "ModuleNotFoundError: No module named 'no_such_pkg_for_dlbench'); what it registers is unavailable until "
        "fixed.")


def test_a_study_not_using_the_failed_file_runs(tmp_path):
    path = write_plugin(tmp_path, "qhm", BROKEN["hook"][0])
    study = write_study(tmp_path, TINY_BASELINE + "[studies.s.levels]\na = {}\n")
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert proc.stderr.count(f"dlbench: warning: skipped the local plugin file {path}") == 1
    assert f"{path}:5: dlbench_register_optimizers raised ZeroDivisionError" in proc.stderr


@pytest.mark.parametrize("case", list(BROKEN))
def test_plugins_check_of_the_failing_file_itself_fails_hard(tmp_path, case):
    code, line, error = BROKEN[case]
    write_plugin(tmp_path, "qhm", code)
    proc = run_cli(["plugins", "check", "plugins/qhm.py"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in proc.stderr
    verb = "load" if case == "hook" else "import"
    assert f"Error: local plugin plugins/qhm.py failed to {verb}: {error} (plugins/qhm.py:{line})" in proc.stderr
