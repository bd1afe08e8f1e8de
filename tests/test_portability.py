"""dlbench runs wherever its files are: a source archive (no ``.git``), a read-only checkout with
every output pointed elsewhere, and studies, levels and plugins named with any text.

The end-to-end tests copy the project's files (what ``git archive`` or GitHub's "Download ZIP"
gives, with the uncommitted work of this tree) into a folder without ``.git`` and run the real
``dlbench`` command there (``python -m dlbench.cli`` in that folder imports the copy's package).
The read-only test runs it as a user a read-only folder stops when the tests run as root, who may
write anywhere: uid 65534 where it can run this interpreter, else root without the capabilities that
pass over file modes (a clone in a private folder, whose virtual environment no other user can read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, TINY_BASELINE, cli_env, copy_store, describe_result, sqlite_uri

from dlbench.paths import folder_name

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# root, still uid 0 but bound by file modes as any owner is: after exec, a root process has the
# capabilities of its bounding set, which loses those that read, write and chmod past the modes
ROOT_BOUND_BY_MODES = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
ONE_EPOCH = TINY_BASELINE.replace("epochs = 2", "epochs = 1") + "diagnostics_every = 0\n"


def source_copy(dest: Path) -> Path:
    """The project's files without .git (tracked and untracked-but-not-ignored: no data/, no store;
    outside a git checkout, the tree less what a run or an install leaves)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:  # the tests themselves run from a source archive
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "data", "mlflow.db*", "mlruns", "reports", ".dlbench", "__pycache__", "*.egg-info",
            ".pytest_cache"))
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    assert (dest / "data.dvc").is_file() and (dest / ".dvc").is_dir() and not (dest / ".git").exists()
    assert not (dest / "data").exists()
    return dest


def dlbench(args: list, cwd: Path, env: dict | None = None, user: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*user, sys.executable, "-m", "dlbench.cli", *map(str, args)], cwd=cwd,
                          env=env or cli_env(autoload=False), capture_output=True, text=True, timeout=600)


def listing(root: Path) -> list[tuple]:
    """Every path under ``root`` with its size and modification time: what a write would change."""
    return sorted((str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def client_of(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_uri(db))


def trial_runs(db: Path, experiment: str) -> list:
    client = client_of(db)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dlbench.role") == "trial"]


# -- names with any text ---------------------------------------------------------------------------

ODD_NAMES = ["../x", "/etc/x", "a/b", "..", ".", "~", "a b 'c' \"d\"", "é" * 200, "\U0001d518" * 200, "x" * 150,
             "NUL", "-rf"]


def test_folder_names_stay_inside_their_folder(tmp_path):
    reports = tmp_path / "reports"
    folders = [folder_name(n) for n in ODD_NAMES]
    for name, folder in zip(ODD_NAMES, folders):
        assert "/" not in folder and "\\" not in folder and folder not in (".", "..", "")
        assert len(folder.encode("utf-8")) <= 100, (name, folder)
        assert (reports / folder).resolve().parent == reports.resolve(), (name, folder)
        (reports / folder).mkdir(parents=True)  # a real file system takes it
    assert len(set(folders)) == len(ODD_NAMES)  # distinct names, distinct folders
    assert folder_name("dropout") == "dropout" and folder_name("act_depth.v2+x") == "act_depth.v2+x"
    assert folder_name("../x") == "x-" + hashlib.sha256(b"../x").hexdigest()[:8]


def test_mlflow_keys_and_run_names_from_any_name(tmp_path, mlflow_template):
    """Keys made from odd names are ones MLflow stores; plain ones are left alone."""
    from dlbench.tracking import keys

    client = client_of(copy_store(mlflow_template, tmp_path))
    run_id = client.create_run(client.create_experiment("k", artifact_location=str(tmp_path / "a"))).info.run_id
    made = {keys.key(f"factor.{n}") for n in ODD_NAMES} | {keys.key(f"regularizers.{n}.weight") for n in ODD_NAMES}
    assert len(made) == 2 * len(ODD_NAMES)
    for k in made:
        client.log_param(run_id, k, "1")
        client.set_tag(run_id, f"dlbench.{k}", "1")
    assert set(client.get_run(run_id).data.params) == made
    assert keys.key("factor.dropout") == "factor.dropout" and keys.key("factor.ü 1") == "factor.ü 1"
    long = "é" * 200 + "/" + "ü" * 200
    assert len(keys.run_name(long)) == keys.MAX_RUN_NAME and keys.run_name(long).startswith("é" * 200)
    assert keys.run_name("s/on/seed=0") == "s/on/seed=0"


def test_search_filters_find_values_with_any_quotes(tmp_path, mlflow_template):
    """MLflow's filters have no escape character: each value is found exactly, in a real SQLite store."""
    from dlbench.tracking import store

    values = ["plain", "it's", 'say "hi"', "both 'a' \"b\"", "both _a_ \"b\"", "BOTH 'A' \"B\"", "100%_x",
              "back\\slash", "ünï ✓", "a'b\"c'd\"e"]
    client = client_of(copy_store(mlflow_template, tmp_path))
    exp = client.create_experiment("q", artifact_location=str(tmp_path / "a"))
    made = {v: client.create_run(exp, tags={"dlbench.study": v, "dlbench.role": "trial"}).info.run_id for v in values}
    for value, run_id in made.items():
        found = store.search(client, exp, {"dlbench.role": "trial", "dlbench.study": value})
        assert [r.run_id for r in found] == [run_id], value


def test_report_of_names_with_dollars_and_backslashes(tmp_path):
    """matplotlib would read "$\\foo$" as TeX and fail; a name is drawn as it is typed."""
    from test_report_build import synthetic_record

    from dlbench.report.build import report_folder, write_study_report
    from dlbench.report.data import study_data

    name = "$\\foo$ ../'x'"
    record = synthetic_record({name: ["$\\bar$", "b $ \\"]}, seeds=2, diagnostics=False, study=name)
    folder = write_study_report(study_data(record, name, None, "synthetic"), report_folder(tmp_path, name))
    assert folder.parent == tmp_path and folder.name == folder_name(name)
    assert {"test_accuracy.png", "learning_curves.png"} <= {p.name for p in folder.glob("*.png")}
    assert (folder / "index.md").read_text(encoding="utf-8").startswith(f"# {name}\n")


# -- end to end ------------------------------------------------------------------------------------

ODD_PLUGIN = '''\
from dlbench import hookimpl
from dlbench.regularizer import Regularizer


def nothing(*, weight: float = 0.0) -> Regularizer:
    """Does nothing; named with quotes, a slash and non-ASCII."""
    return Regularizer()


@hookimpl
def dlbench_register_regularizers(register):
    register("odd 'reg' \\"x\\"/ü", nothing)
'''
EXPERIMENT = "ü/" * 100  # 200 characters, slashes
X = "../x"
AB = "a/b 'c' \"d\", ünï ✓"
LONG_LEVEL = "é" * 199 + "'"
ODD_STUDY = f"""\
[study]
name = {json.dumps(EXPERIMENT)}
seeds = 1

{ONE_EPOCH}
[studies."../x".levels]
"a \\"b\\" 'c'" = {{}}
"../on/ü" = {{ regularizers = [{{ name = "odd 'reg' \\"x\\"/ü" }}] }}

[studies.{json.dumps(AB, ensure_ascii=False)}.factors."f 'q'"]
{json.dumps(LONG_LEVEL, ensure_ascii=False)} = {{ optimizer = {{ lr = 0.02 }} }}
"""


def test_source_archive_with_odd_names_runs_resumes_and_reports_inside_reports(tmp_path):
    """No .git, no data/: the run regenerates data/ and checks it by the hashes data.dvc records,
    says so and tags the runs; studies, levels and a plugin named with quotes, slashes, '../',
    non-ASCII and 200 characters train, are tagged with their exact names, are found again by
    the second run (nothing trains twice) and get their reports inside reports/ only."""
    from dlbench.tracking import keys

    src = source_copy(tmp_path / "src")
    reference = src / "reports"  # a source archive of an older dlbench had its reference results there
    published = {p.name for p in reference.iterdir()} if reference.is_dir() else set()
    shipped = set(src.rglob("index.md"))  # the archive's own pages (docs/index.md, docs/reference/...)
    (src / "odd.toml").write_text(ODD_STUDY, encoding="utf-8")
    (src / "plugins" / "odd.py").write_text(ODD_PLUGIN, encoding="utf-8")
    args = ["run", "odd.toml", "--checkpoint-every", "0"]  # a checkpoint at every epoch: named by the study

    first = dlbench(args, src)
    assert first.returncode == 0, describe_result(first)
    assert "data is missing and DVC cannot run here: regenerating it" in first.stdout
    assert ("data check: data compared with data.dvc by its recorded dataset hashes (no git repository here"
            in first.stdout)
    assert sorted(p.name for p in (src / "data").iterdir()) == ["digits", "mnist1d"]
    assert "3 finished (0 of them already in the store)" in first.stdout
    for study in (X, AB):
        assert f"report: reports/{folder_name(study)}/index.md  (study {study!r})" in first.stdout

    runs = trial_runs(src / "mlflow.db", EXPERIMENT)
    assert sorted((r.data.tags["dlbench.study"], r.data.tags["dlbench.level"]) for r in runs) == sorted(
        [(X, "a \"b\" 'c'"), (X, "../on/ü"), (AB, LONG_LEVEL)])
    for run in runs:
        tags = run.data.tags
        assert tags["dlbench.git_commit"].startswith("none (no git repository: ") and "mlflow.source.git.commit" not in tags
        assert tags["dlbench.data_check"].startswith("recorded dataset hashes (no git repository here")
        assert tags["dlbench.data_matches_dvc"] == "true"
        assert run.info.run_name == f"{tags['dlbench.level']}, seed=0"
        assert tags["dlbench.trial"] == f"{tags['dlbench.study']}/{tags['dlbench.level']}/seed=0"
        assert json.loads(tags["dlbench.levels"]) == {(X if tags["dlbench.study"] == X else "f 'q'"): tags["dlbench.level"]}
    odd = next(r for r in runs if r.data.tags["dlbench.level"] == "../on/ü")
    assert odd.data.params["regularizers"] == "odd 'reg' \"x\"/ü"
    assert odd.data.tags[keys.key("dlbench.plugin.regularizer.odd 'reg' \"x\"/ü")].startswith("odd 'reg'")

    # another study run (one study of the file): its trial, whose name holds both quotes (found by
    # a LIKE filter), is recorded from the first run's, not trained again
    second = dlbench([*args, "--study", AB], src)
    assert second.returncode == 0, describe_result(second)
    assert "1 finished (0 of them already in the store, 1 reused from an earlier study run)" in second.stdout
    again = trial_runs(src / "mlflow.db", EXPERIMENT)
    (record,) = [r for r in again if r.info.run_id not in {r.info.run_id for r in runs}]
    (trained,) = [r for r in runs if r.data.tags["dlbench.study"] == AB]
    assert record.data.tags["dlbench.same_as"] == trained.info.run_id  # nothing ran twice
    assert record.data.tags["dlbench.level"] == LONG_LEVEL and record.data.metrics == trained.data.metrics
    assert f"report: reports/{folder_name(AB)}/index.md  (study {AB!r})" in second.stdout

    # every report file is in reports/<safe folder>/, and each report is of its own study
    assert sorted(p.name for p in (src / "reports").iterdir() if p.name not in published) == sorted(
        [folder_name(X), folder_name(AB)])
    assert (src / "reports" / folder_name(X) / "index.md").read_text(encoding="utf-8").startswith(f"# {X}\n")
    summary = (src / "reports" / folder_name(AB) / "summary.csv").read_text(encoding="utf-8")
    assert LONG_LEVEL in summary and "f 'q'" in summary
    outside = [p for p in tmp_path.rglob("index.md") if p not in shipped and not p.is_relative_to(src / "reports")
               and not p.is_relative_to(src / "mlruns")]
    assert outside == [] and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert not [p for p in (src / ".dlbench").rglob("*") if p.is_file()]  # checkpoints, named safely, cleared
    parent = runs[0].data.tags["mlflow.parentRunId"]
    attached = {a.path for a in client_of(src / "mlflow.db").list_artifacts(parent, "reports")}
    assert attached == {f"reports/{folder_name(X)}", f"reports/{folder_name(AB)}"}


@pytest.fixture
def shared_tmp():
    """A temporary folder another user can enter (pytest's own are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="dlbench-portability-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(path)


# What the read-only test needs of the user it runs dlbench as, checked by running it as that user:
# this interpreter runs and imports the copy's dlbench (from the working folder) and its dependencies
# (from this environment, which may sit in a folder no other user can enter), the checkout is
# read-only to it and the output folder writable.
PROBE = """\
import os, sys
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
assert not os.access(src, os.W_OK), f"{src} (mode 555) is writable for uid {os.geteuid()}"
import dlbench, dlbench.cli, pluggy, torch, mlflow
assert Path(dlbench.__file__).resolve().is_relative_to(src.resolve()), f"dlbench imported from {dlbench.__file__}"
(out / "probe").write_text("x")
(out / "probe").unlink()
"""


def closed_parent(path: Path) -> str:
    """The first folder on the way to ``path`` that others may not enter, by its mode (a hint, not a check)."""
    for folder in [*reversed(Path(path).absolute().parents), Path(path).absolute()]:
        try:
            mode = folder.stat().st_mode
        except OSError:
            return f"{folder} cannot be examined"
        if not mode & stat.S_IXOTH:
            return f"{folder} is mode {stat.S_IMODE(mode):o}"
    return "no folder on its way is closed to others by its mode"


def unprivileged(src: Path, out: Path, env: dict) -> list[str]:
    """The command prefix that runs dlbench as a user the read-only ``src`` stops (root writes
    anywhere): none when the tests do not run as root; uid 65534 when it can run this interpreter
    with its packages, write in ``out`` and not in ``src``; else root bound by file modes, which
    enters what root owns (a private clone and its environment) as an ordinary owner does; a skip
    that says what each lacks when neither can."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no user that a read-only folder stops can be run")
    failures = []
    for prefix, who in [(NOBODY, f"uid 65534 cannot run dlbench with {sys.prefix} ({closed_parent(sys.prefix)})"),
                        (ROOT_BOUND_BY_MODES, "root without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER "
                                              "cannot run it either")]:
        probe = subprocess.run([*prefix, sys.executable, "-c", PROBE, str(src), str(out)], cwd=src,
                               env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True, timeout=300)
        if probe.returncode == 0:
            print(f"dlbench runs as: {' '.join(prefix)}")  # shown with a failure's captured output
            return prefix
        said = (probe.stderr.strip() or probe.stdout.strip() or f"exit {probe.returncode}").splitlines()[-1]
        failures.append(f"{who}: {said}")
    pytest.skip("no user that a read-only checkout stops can run dlbench here (checked by importing dlbench, "
                "pluggy, torch and mlflow as that user): " + "; ".join(failures))


def test_read_only_checkout_runs_with_outputs_elsewhere_and_writes_nothing_in_it(shared_tmp):
    """A read-only source archive without data/: by default the run stops at once and names the
    option for each output; pointed elsewhere it runs, generates the data in memory, checks it
    against data.dvc's hashes, and writes nothing inside the checkout."""
    src = source_copy(shared_tmp / "src")
    study = '[study]\nname = "portable"\nseeds = 1\n\n' + ONE_EPOCH + "\n[studies.s.levels]\na = {}\n"
    (src / "study.toml").write_text(study, encoding="utf-8")
    out = shared_tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    for p in [*src.rglob("*"), src]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = listing(src)
    env = cli_env({"HOME": str(out / "home")}, autoload=False)
    user = unprivileged(src, out, env)
    assert listing(src) == before

    refused = dlbench(["run", "study.toml"], src, env, user)
    assert refused.returncode == 2, describe_result(refused)
    assert "Traceback" not in refused.stderr
    for option in ("--tracking-uri", "--reports-dir", "--checkpoint-dir"):
        assert option in refused.stderr
    assert f"{src} is read-only" in refused.stderr

    proc = dlbench(["run", "study.toml", "--tracking-uri", sqlite_uri(out / "mlflow.db"), "--reports-dir",
                    out / "reports", "--checkpoint-dir", out / "checkpoints"], src, env, user)
    assert proc.returncode == 0, describe_result(proc)
    assert "generating the datasets in memory" in proc.stdout and "data check:" in proc.stdout
    assert listing(src) == before  # nothing written in the checkout
    (run,) = trial_runs(out / "mlflow.db", "portable")
    assert run.data.tags["dlbench.git_commit"].startswith("none (no git repository")
    assert run.data.tags["dlbench.data_check"].startswith("recorded dataset hashes, of datasets generated in memory")
    assert run.data.tags["dlbench.data_matches_dvc"] == "true"
    assert (out / "reports" / "s" / "index.md").is_file(), describe_result(proc)
    assert run.info.artifact_uri.startswith(str(out / "mlruns"))  # beside the store, not in ./mlruns
    assert (out / "mlruns").is_dir()

    report = dlbench(["report", "study.toml", "--tracking-uri", sqlite_uri(out / "mlflow.db")], src, env, user)
    assert report.returncode == 2 and "--reports-dir" in report.stderr, describe_result(report)
    assert listing(src) == before
