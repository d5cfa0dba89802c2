"""`python -m cluster.submit` against a real Ray head on 127.0.0.1 (token auth on), the one head of
tests/cluster (test_cluster_e2e.py submits to it too).

The jobs run a stand-in project: the real `cluster` package next to a `pretrain` whose
`__main__` only records what it was asked to do, in run directories named like the real ones.
That keeps each job to seconds while the upload, the entrypoint, `cluster.resume`, log following,
exit statuses and status/logs/stop all run for real. (tests/cluster/test_cluster_e2e.py submits
the real pretraining.)
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from cluster import submit

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(400)

FAKE_PRETRAIN = '''
import os, sys, time
from datetime import datetime
args = sys.argv[1:]
over = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
print("standin args:", args, flush=True)
print("standin files:", sorted(os.listdir(".")), flush=True)
if "--resume" in args:
    run_dir = args[args.index("--resume") + 1]
else:
    run_dir = os.path.join(over["run.root"], over["run.name"] + "-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir)
    open(os.path.join(run_dir, "config.yaml"), "w").write("run: {}\\n")
with open(os.path.join(run_dir, "attempts"), "a") as f:
    f.write(" ".join(args) + "\\n")
time.sleep(float(over.get("task.kwargs.standin_sleep", 0)))
sys.exit(int(over.get("task.kwargs.standin_exit", 0)))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A working tree to upload: real `cluster`, stand-in `pretrain`, and folders that must stay home."""
    root = tmp_path_factory.mktemp("project")
    (root / "pyproject.toml").write_text('[project]\nname = "standin"\n')
    shutil.copytree(REPO_ROOT / "cluster", root / "cluster", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pretrain").mkdir()
    (root / "pretrain" / "__init__.py").write_text("")
    (root / "pretrain" / "__main__.py").write_text(FAKE_PRETRAIN)
    for module in ("config.py", "run_dir.py"):  # cluster.resume reads configs and finds run directories with them
        shutil.copy(REPO_ROOT / "pretrain" / module, root / "pretrain" / module)
    (root / "configs").mkdir()
    (root / "configs" / "tiny.yaml").write_text("run:\n  name: from-yaml\ntrain:\n  steps: 10\n")
    for junk in (".venv/lib/big.so", "runs/old/x", ".git/objects/y", "shards/train-000000.tar",
                 "pretrain/__pycache__/m.cpython-311.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"0" * 1024)
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Stands in for the cluster's shared file system."""
    return tmp_path_factory.mktemp("shared")


def pretrain(head, project, *args):
    return head.cli("--working-dir", str(project), "--config", str(project / "configs" / "tiny.yaml"), *args)


def job_id_of(stdout: str) -> str:
    return re.search(r"^job (\S+) submitted", stdout, re.M).group(1)


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def test_job_runs_the_uploaded_tree_and_a_resubmitted_run_resumes(head, project, shared):
    first = pretrain(head, project, f"run.root={shared}/runs", "run.name=alpha")
    assert first.returncode == 0, first.stdout + first.stderr
    assert job_id_of(first.stdout).startswith("alpha-")
    assert "run alpha: starting under" in first.stdout
    assert first.stdout.rstrip().endswith("SUCCEEDED")
    uploaded = re.search(r"standin files: (\[.*\])", first.stdout).group(1)
    for kept in ("'cluster'", "'configs'", "'pretrain'", "'pyproject.toml'"):
        assert kept in uploaded
    for left_home in (".venv", "'runs'", ".git", "shards"):
        assert left_home not in uploaded
    (run_dir,) = (shared / "runs").iterdir()
    assert run_dir.name.startswith("alpha-")

    again = pretrain(head, project, f"run.root={shared}/runs", "run.name=alpha", "train.steps=20")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run alpha was submitted before" in again.stdout
    assert f"run alpha: resuming {run_dir}" in again.stdout
    assert [p.name for p in (shared / "runs").iterdir()] == [run_dir.name]  # no second run directory
    attempts = (run_dir / "attempts").read_text().splitlines()
    assert len(attempts) == 2
    assert attempts[1].startswith(f"--resume {run_dir} ") and "train.steps=20" in attempts[1]


def test_failed_job_exits_1_and_a_known_job_id_is_rejected(head, project, shared):
    args = ("--submission-id", "fails-once", f"run.root={shared}/runs", "run.name=gamma", "task.kwargs.standin_exit=1")
    failed = pretrain(head, project, *args)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stdout.rstrip().splitlines()[-1].startswith("job fails-once: FAILED")

    rejected = pretrain(head, project, *args)
    assert rejected.returncode == 2
    assert "the cluster rejected the job" in one_line_error(rejected)


def test_no_wait_then_logs_status_stop_and_no_second_start(head, project, shared):
    submitted = pretrain(head, project, "--no-wait", f"run.root={shared}/runs", "run.name=beta", "task.kwargs.standin_sleep=600")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = job_id_of(submitted.stdout)

    # The stand-in prints its arguments, then writes its attempt and sleeps: the file says the job has
    # started (a cheap poll; each `logs` call is a new process).
    deadline = time.monotonic() + 90
    while not list((shared / "runs").glob("beta-*/attempts")):
        assert time.monotonic() < deadline, head.cli("logs", job).stdout
        time.sleep(0.2)
    while "standin args" not in (logs := head.cli("logs", job)).stdout:
        assert time.monotonic() < deadline, logs.stdout + logs.stderr
        time.sleep(0.5)
    status = head.cli("status", job)
    assert status.returncode == 0
    assert status.stdout.startswith(f"job {job}: RUNNING") and "run_name=beta" in status.stdout

    twice = pretrain(head, project, f"run.root={shared}/runs", "run.name=beta")
    assert twice.returncode == 2
    assert f"run beta is still RUNNING as job {job}" in one_line_error(twice)

    stopped = head.cli("stop", job)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.strip().splitlines()[-1].startswith(f"job {job}: STOPPED")
    assert head.cli("status", job).stdout.startswith(f"job {job}: STOPPED")


def test_wrong_token_unknown_job_and_wrong_address_are_one_line(head, unused_port):
    wrong_token = head.cli("status", "anything", env={**head.env, "RAY_AUTH_TOKEN": "0" * 32})
    assert wrong_token.returncode == 2
    assert "token authentication failed" in one_line_error(wrong_token)

    unknown = head.cli("status", "no-such-job")
    assert unknown.returncode == 2
    assert one_line_error(unknown) == f"error: no job no-such-job at {head.address}: use the id printed at submission"

    nobody = head.cli("--address", f"http://127.0.0.1:{unused_port}", "status", "x")
    assert nobody.returncode == 2
    assert one_line_error(nobody).startswith("error: no Ray job API at http://127.0.0.1:")


def test_dashboard_accepts_the_token_in_the_proxy_safe_header(head):
    """kubectl proxy replaces Authorization; submit also sends X-Ray-Authorization, which Ray honours."""
    import urllib.error
    import urllib.request

    head.check_alive()
    url = f"{head.address}/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"X-Ray-Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


# ---------------------------------------------------------------- checks made before submitting


def test_command_word_may_come_anywhere_and_defaults_to_pretrain():
    args = submit.parse_args(["--address", "h:1", "status", "JOB"])
    assert (args.command, args.job, args.address) == ("status", "JOB", "h:1")
    args = submit.parse_args(["--config", "c.yaml", "train.steps=5"])
    assert (args.command, args.overrides) == ("pretrain", ["train.steps=5"])
    args = submit.parse_args(["eval", "checkpoint=[a,b]", "data=d", "epochs=3"])
    assert (args.command, args.overrides) == ("eval", ["checkpoint=[a,b]", "data=d", "epochs=3"])


def test_addresses_are_http_urls():
    assert submit.normalise_address("127.0.0.1:8265/") == "http://127.0.0.1:8265"
    with pytest.raises(submit.SubmitError, match="http"):
        submit.normalise_address("ray://head:10001")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["run.root=runs"], "run.root='runs'"),
        ([], "run.root='runs'"),  # pretrain's default, relative: would vanish with the job
        (["run.root=/shared", "run.storage_path=ckpt"], "run.storage_path='ckpt'"),
        (["run.root=/shared", "train.steps"], "not key=value"),
        (["run.root=/shared", "train.step=5"], "Key 'step' not in 'TrainSection'"),
    ],
)
def test_pretraining_needs_shared_storage_and_key_value_overrides(project, overrides, message):
    with pytest.raises(submit.SubmitError, match=re.escape(message)):
        submit.pretrain_job(project / "configs" / "tiny.yaml", overrides, project)


def test_pretraining_entrypoint_names_the_run_and_uses_paths_inside_the_tree(project, tmp_path):
    entrypoint, name, sent = submit.pretrain_job(project / "configs" / "tiny.yaml", ["run.root=/s", "run.name="], project)
    assert name.startswith("tiny-") and sent[-1] == f"run.name={name}"  # an empty name gets one
    assert entrypoint.startswith("python -m cluster.resume --config configs/tiny.yaml run.root=/s")
    assert "run.name= " not in entrypoint + " "  # the empty override is not sent on
    (project / "configs" / "nameless.yaml").write_text("train:\n  steps: 10\n")
    _, name, _ = submit.pretrain_job(project / "configs" / "nameless.yaml", ["run.root=/s"], project)
    assert name.startswith("nameless-")  # not pretrain's default name, which every config would share
    outside = tmp_path / "x.yaml"
    outside.write_text("run: {}\n")
    with pytest.raises(submit.SubmitError, match="outside the uploaded working tree"):
        submit.pretrain_job(outside, ["run.root=/s"], project)
    with pytest.raises(submit.SubmitError, match="--config config file .*missing.yaml not found"):
        submit.pretrain_job(project / "configs" / "missing.yaml", ["run.root=/s"], project)


def test_evaluation_results_must_go_to_shared_storage():
    with pytest.raises(submit.SubmitError, match="out=None"):
        submit.eval_job(["checkpoint=/s/run", "data=/s/shards"])
    with pytest.raises(submit.SubmitError, match="out='out'"):
        submit.eval_job(["checkpoint=/s/run", "data=/s/shards", "out=out"])
    assert submit.eval_job(["checkpoint=[/s/a,/s/b]", "data=/s/shards", "out=/s/eval", "epochs=3"]) == (
        "python -m eval.linear 'checkpoint=[/s/a,/s/b]' data=/s/shards out=/s/eval epochs=3"
    )


def test_evaluation_settings_are_checked_by_the_entry_point_before_submitting():
    """cluster imports no eval code: `python -m eval.linear --print-config` judges the settings."""
    with pytest.raises(submit.SubmitError, match="Key 'epoch' not in 'LinearConfig'"):  # nothing listens there:
        submit.run(["eval", "--address", "http://127.0.0.1:1", "checkpoint=/s/run",  # it fails before connecting
                    "data=/s/shards", "out=/s/eval", "epoch=3"])


def test_resume_reads_the_config_as_pretrain_does(tmp_path, monkeypatch, capsys):
    """Defaults come from pretrain.config (run.root is 'runs', not None); an existing run resumes."""
    from cluster.resume import main as resume_main, pretrain_command

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("run:\n  name: exp\n")
    assert pretrain_command(config, [])[-2:] == ["--config", str(config)]
    assert "run exp: starting under runs" in capsys.readouterr().out
    (tmp_path / "runs" / "exp-20990101-000000").mkdir(parents=True)
    (tmp_path / "runs" / "exp-20990101-000000" / "config.yaml").write_text("run: {}\n")
    assert pretrain_command(config, ["train.steps=9"])[-3:] == ["--resume", "runs/exp-20990101-000000", "train.steps=9"]
    assert resume_main(["--config", str(config), "train.step=9"]) == 2  # unknown key: one line, nothing started
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'step'" in err and err.count("\n") == 1


def test_runs_and_results_may_go_to_a_bucket(project):
    tiny = project / "configs" / "tiny.yaml"
    entrypoint, _, _ = submit.pretrain_job(tiny, ["run.root=s3://bucket/runs", "run.name=x"], project)
    assert "run.root=s3://bucket/runs" in entrypoint
    submit.pretrain_job(tiny, ["run.storage_path=gs://bucket/runs", "run.name=x"], project)  # it holds the run dir
    with pytest.raises(submit.SubmitError, match="htp://bucket/runs: unsupported URL scheme htp://"):
        submit.pretrain_job(tiny, ["run.root=htp://bucket/runs", "run.name=x"], project)
    assert submit.eval_job(["checkpoint=s3://b/runs/x", "data=s3://b/shards", "out=s3://b/eval"]).endswith("out=s3://b/eval")


def test_the_upload_leaves_out_data_archives_and_weights_kept_in_the_tree(tmp_path):
    """What Ray zips for a job (its own packer, with submit's excludes): the code, not a dataset
    archive or an export in the project root, nor anything under data/ or runs/."""
    import zipfile

    from ray._private.runtime_env.packaging import _zip_files

    tree = tmp_path / "project"
    for name in ("pyproject.toml", "pretrain/__main__.py", "configs/a.yaml", "cifar-10-python.tar.gz",
                 "encoder.safetensors", "data/cifar-10-python.tar.gz", "data/shards/c/train-000000.tar",
                 "runs/a-1/checkpoint_000000008/checkpoint.pt", "stl10_binary.tgz"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"x")
    env = submit.runtime_env(tree)
    _zip_files(env["working_dir"], env["excludes"], str(tmp_path / "job.zip"), include_gitignore=True)
    files = sorted(n for n in zipfile.ZipFile(tmp_path / "job.zip").namelist() if not n.endswith("/"))
    assert files == ["configs/a.yaml", "pretrain/__main__.py", "pyproject.toml"], files
