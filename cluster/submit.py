"""Submit pretraining and linear-evaluation runs to a Ray cluster through Ray's job API.

    python -m cluster.submit --address http://127.0.0.1:8265 --config configs/X.yaml [key=value ...]
    python -m cluster.submit --address URL eval checkpoint=PATH data=SHARD_DIR out=/SHARED/DIR [key=value ...]
    python -m cluster.submit --address URL status JOB | stop JOB | logs JOB [--follow]

A submission uploads the working tree (without .venv, runs, .git and other large folders) as the
job's working directory, so the cluster runs exactly the code you submit; it prints the job id,
follows the logs and exits with the job's status (0 SUCCEEDED, 1 FAILED, 3 STOPPED; 2 for an
error before the job ran, such as a wrong address or a rejected job). `--no-wait` returns after
printing the job id. Pretraining runs are named (`run.name`); submitting a name again resumes
that run from its last checkpoint, so `run.root` (and `run.storage_path`) must be a bucket URL
(`s3://`, `gs://`) or a path on storage every node mounts.

The address defaults to $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS, then http://127.0.0.1:8265.
On a cluster with token authentication (all of ours), export RAY_AUTH_MODE=token and keep the
cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from storage import StorageError, check_url, is_url
from pretrain.config import ConfigError, PretrainConfig, RunSection, merge_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
COMMANDS = ("pretrain", "eval", "status", "stop", "logs")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
EXIT_ERROR = 2

# Never uploaded with a job (Ray's .gitignore handling also applies). Data, checkpoints and logs
# live on shared storage, so none of them belongs in the working directory either.
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "runs",
    "out",
    "shards",
    "data",
    ".pytest_cache",
    "*.egg-info",
    "**/__pycache__",
    "*.tar",
    "*.pt",
    # dataset archives and exported weights a user keeps beside the code (the README puts them in data/)
    "*.tar.gz",
    "*.tgz",
    "*.zip",
    "*.safetensors",
    "mlruns",
]


class SubmitError(Exception):
    """A problem to report in one line before (or instead of) running a job."""


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS,
        help="the cluster's job API (dashboard) URL, e.g. http://127.0.0.1:8265 through `ray dashboard`",
    )
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--no-wait", action="store_true", help="print the job id and return")
    job.add_argument("--print-config", action="store_true",
                     help="print the resolved config the job would run (after the checks) and exit; submits nothing")
    job.add_argument(
        "--working-dir",
        type=Path,
        default=REPO_ROOT,
        help="tree uploaded as the job's working directory (default: this repository)",
    )
    job.add_argument(
        "--submission-id",
        default=None,
        help="job id to use (default: the run name and the time); the cluster rejects one it already has",
    )
    job.add_argument(
        "--entrypoint-gpus",
        type=float,
        default=0.0,
        help="GPUs reserved for the driver; 1 runs a linear evaluation on a GPU worker "
        "instead of the CPU head (pretraining asks for its own GPUs through train.use_gpu)",
    )

    parser = argparse.ArgumentParser(
        prog="python -m cluster.submit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", parents=[common, job], help="python -m pretrain (the default)")
    p.add_argument("--config", required=True, type=Path, help="pretraining YAML inside the working tree")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for python -m pretrain")

    e = sub.add_parser("eval", parents=[common, job], help="python -m eval.linear")
    e.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings, as for python -m eval.linear (checkpoint=, data=, out= on shared storage)")

    for name, text in (("status", "print a job's status"), ("stop", "stop a job"), ("logs", "print a job's logs")):
        c = sub.add_parser(name, parents=[common], help=text)
        c.add_argument("job", help="job (submission) id, as printed at submission")
        if name == "logs":
            c.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        if name == "stop":
            c.add_argument("--no-wait", action="store_true", help="do not wait for the job to stop")
    return parser


def _with_command(argv: Sequence[str]) -> list[str]:
    """Move the command word to the front; no command word means `pretrain`."""
    takes_value = {"--address", "--config", "--working-dir", "--entrypoint-gpus", "--submission-id"}
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok in COMMANDS and (i == 0 or argv[i - 1] not in takes_value):
            return [tok, *argv[:i], *argv[i + 1 :]]
    if not argv or argv[0] in ("-h", "--help"):
        return list(argv)  # the overview, not the pretrain command's help
    return ["pretrain", *argv]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    return _parser().parse_args(_with_command(list(argv)))


# ---------------------------------------------------------------- what runs


def normalise_address(address: str) -> str:
    """`HOST:PORT` -> `http://HOST:PORT`; a trailing slash is dropped."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise SubmitError(
            f"--address {address}: the job API is an http(s) URL such as http://127.0.0.1:8265 "
            "(the dashboard port, not the GCS port 6379 nor ray://)"
        )
    return address


def runtime_env(working_dir: Path) -> dict:
    """The job's runtime environment: the working tree minus large or generated folders."""
    if not (working_dir / "pyproject.toml").is_file():
        raise SubmitError(f"--working-dir {working_dir}: not the project root (no pyproject.toml there)")
    return {
        "working_dir": str(working_dir),
        "excludes": list(UPLOAD_EXCLUDES),
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }


def _inside(path: Path, root: Path, what: str) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise SubmitError(f"{what} {path} is outside the uploaded working tree {root}: move it inside") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def pretrain_job(config_path: Path, overrides: Sequence[str], working_dir: Path) -> tuple[str, str, list[str]]:
    """Checks a pretraining submission and builds its command line.

    Returns (entrypoint, run name, overrides as sent). The job's working directory disappears with
    the job, so `run.root` (run directories: config, TensorBoard logs, checkpoints) and
    `run.storage_path` if set must be bucket URLs or absolute paths on storage every node mounts. A run without a
    name of its own (none in the YAML or the overrides, or `run.name=` empty) gets one, so that it can
    be resumed, and so that unrelated configs never resume each other's runs under the default name. The entrypoint is `python -m cluster.resume`, which
    on the cluster becomes `python -m pretrain`, resuming the run if it already exists.
    """
    unnamed = any(o.replace(" ", "") == "run.name=" for o in overrides)
    overrides = [o for o in overrides if o.replace(" ", "") != "run.name="]
    try:  # read as pretrain reads it: defaults, YAML, overrides; unknown keys fail here, not on the cluster
        run = merge_config(PretrainConfig, config_path, overrides).run
    except ConfigError as err:
        raise SubmitError(f"--config {err}" if str(err).startswith("config file") else str(err)) from None
    rel_config = _inside(config_path, working_dir, "--config")
    root, storage = run.root, run.storage_path
    name = None if unnamed or run.name == RunSection.name else run.name

    # a bucket run.storage_path holds the whole run directory (pretrain.run_dir.run_home)
    if not (storage and is_url(storage) and _shared(storage)) and (not root or not _shared(root)):
        raise SubmitError(
            f"run.root={root!r}: on a cluster the run directory (config, TensorBoard logs, checkpoints) must be "
            "in a bucket or on storage every node mounts: add run.root=s3://BUCKET/runs (or gs://), or "
            "run.root=/ABSOLUTE/SHARED/PATH (e.g. /mnt/shared/runs)"
        )
    if storage and not _shared(storage):
        raise SubmitError(
            f"run.storage_path={storage!r}: checkpoints must go to a bucket URL or an absolute path every node "
            "mounts (e.g. s3://BUCKET/runs, /mnt/shared/checkpoints), or leave it unset to keep them in the run directory"
        )
    if not name:
        name = f"{_slug(config_path.stem)}-{time.strftime('%Y%m%d-%H%M%S')}"
        overrides.append(f"run.name={name}")
    entrypoint = shlex.join(["python", "-m", "cluster.resume", "--config", rel_config, *overrides])
    return entrypoint, str(name), overrides


def _shared(path) -> bool:
    """Outlives the job and every node sees it: a bucket URL (checked: s3:// or gs://) or an absolute path."""
    if is_url(path):
        try:
            check_url(str(path))
        except StorageError as err:
            raise SubmitError(str(err)) from None
        return True
    return os.path.isabs(str(path))


def eval_job(overrides: Sequence[str]) -> str:
    """The linear-evaluation command line. Its paths must be readable on the cluster, and the results
    directory (`out=`) absolute on shared storage, or they vanish with the job (checked here; the
    entry point checks the other settings: :func:`resolved_settings`)."""
    out = OmegaConf.from_dotlist([o for o in overrides if o.split("=", 1)[0].strip() == "out"]).get("out")
    if not out or not _shared(out):
        raise SubmitError(
            f"out={out!r}: give the results directory as a bucket URL or an absolute path on shared storage "
            "(e.g. out=s3://BUCKET/eval/RUN or out=/mnt/shared/eval/RUN); a job's working directory disappears with the job"
        )
    return shlex.join(["python", "-m", "eval.linear", *overrides])


def resolved_settings(entrypoint: str, working_dir: Path) -> str:
    """The settings an entry point resolves from its arguments, as it prints them (``--print-config``,
    run here in ``working_dir``): the entry point is the one judge of its own settings, so a bad key
    fails here, in its own words, before anything is submitted."""
    command = shlex.split(entrypoint)
    done = subprocess.run([sys.executable, *command[1:], "--print-config"], cwd=working_dir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise SubmitError(lines[-1].removeprefix("error: "))
    return done.stdout


def _git_version(root: Path) -> str | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- talking to the cluster


def _auth_headers() -> dict:
    """The Ray token also as X-Ray-Authorization, which survives proxies (kubectl proxy) that
    replace the Authorization header."""
    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError:
        return {}
    headers = get_auth_headers_if_auth_enabled({})
    token = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    return {"X-Ray-Authorization": token} if token else {}


def connect(address: str):
    """A JobSubmissionClient for `address`, or a one-line SubmitError saying why not."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:
        raise SubmitError(f"Ray's job SDK is missing ({err}): pip install 'ray[default]'") from None
    address = normalise_address(address)
    try:
        return JobSubmissionClient(address, headers=_auth_headers())
    except ConnectionError:
        raise SubmitError(
            f"no Ray job API at {address}: start or reach a cluster (`ray up cluster/aws.yaml` then "
            "`ray dashboard cluster/aws.yaml`, or `ray start --head`) and pass its dashboard URL as --address"
        ) from None
    except RuntimeError as err:
        if "ray[default]" in str(err):
            raise SubmitError("Ray's job SDK needs ray[default] here: pip install 'ray[default]'") from None
        raise SubmitError(f"{address} did not answer as a Ray job API: {_first_line(err)}") from None
    except Exception as err:  # ray.exceptions.AuthenticationError and friends
        if type(err).__name__ == "AuthenticationError":
            raise SubmitError(
                f"{address} refused the request: token authentication failed; export RAY_AUTH_MODE=token "
                "and put the cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN"
            ) from None
        raise


def _first_line(err: BaseException | str) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _server_message(err: BaseException) -> str:
    """The job server's reason, without the traceback it sends along with a 500."""
    text = str(err)
    if "Traceback (most recent call last)" in text:
        raised = [line.strip() for line in text.splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
        text = raised[-1] if raised else text
    return _first_line(text)


def _jobs_of_run(client, run_name: str) -> list:
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("run_name") == run_name]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def submit(
    client,
    entrypoint: str,
    env: dict,
    *,
    stage: str,
    run_name: str | None = None,
    entrypoint_gpus: float = 0.0,
    version: str | None = None,
    submission_id: str | None = None,
) -> str:
    """Submits one job (metadata: ``stage``, pretrain or eval; the run's name; the code version) and returns its
    id. A pretraining run that is still active is not started twice."""
    metadata = {"stage": stage}
    if run_name:
        metadata["run_name"] = run_name
        earlier = _jobs_of_run(client, run_name)
        active = [j for j in earlier if str(j.status) not in TERMINAL]
        if active:
            raise SubmitError(
                f"run {run_name} is still {active[-1].status} as job {active[-1].submission_id}: "
                f"stop it first (python -m cluster.submit stop {active[-1].submission_id})"
            )
        if earlier:
            print(f"run {run_name} was submitted before (job {earlier[-1].submission_id}): "
                  "this job continues it from its latest checkpoint, if it wrote one")
    if version:
        metadata["version"] = version
    submission_id = submission_id or f"{_slug(run_name or stage)}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env=env,
            submission_id=submission_id,
            metadata=metadata,
            entrypoint_num_gpus=entrypoint_gpus or None,
        )
    except (RuntimeError, ValueError) as err:
        raise SubmitError(f"the cluster rejected the job: {_server_message(err)}") from None


def follow(client, job_id: str, out=sys.stdout) -> str:
    """Prints the job's logs as they come and returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as err:  # the log stream broke (proxy, restart): fall back to polling
        print(f"(log stream ended: {_first_line(err)}; waiting for the job)", file=sys.stderr)
    return wait(client, job_id)


def wait(client, job_id: str, poll_s: float = 1.0) -> str:
    """Blocks until the job is SUCCEEDED, FAILED or STOPPED and returns that status."""
    while True:
        status = str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def _job_info(client, job_id: str, address: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise SubmitError(f"no job {job_id} at {address}: use the id printed at submission") from None
        raise SubmitError(f"could not read job {job_id}: {_first_line(err)}") from None


# ---------------------------------------------------------------- main


def _report(client, job_id: str, status: str) -> int:
    info = client.get_job_info(job_id)
    line = f"job {job_id}: {status}"
    if status != "SUCCEEDED" and info.message:
        line += f" ({_first_line(info.message)})"
    print(line)
    return EXIT_CODES[status]


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.command in ("pretrain", "eval"):
        if args.command == "pretrain":
            entrypoint, run_name, sent = pretrain_job(args.config, args.overrides, args.working_dir)
        else:
            entrypoint, run_name = eval_job(args.overrides), None
            settings = resolved_settings(entrypoint, args.working_dir)
        if args.print_config:
            if args.command == "pretrain":
                settings = OmegaConf.to_yaml(merge_config(PretrainConfig, args.config, sent), resolve=True)
            print(settings, end="")
            return 0
        env = runtime_env(args.working_dir.resolve())
        client = connect(args.address)
        job_id = submit(
            client,
            entrypoint,
            env,
            stage=args.command,
            run_name=run_name,
            entrypoint_gpus=args.entrypoint_gpus,
            version=_git_version(args.working_dir),
            submission_id=args.submission_id,
        )
        print(f"job {job_id} submitted: {entrypoint}")
        if args.no_wait:
            print(f"follow it with: python -m cluster.submit --address {args.address} logs {job_id} --follow")
            return 0
        try:
            status = follow(client, job_id)
        except KeyboardInterrupt:
            print(f"\ndetached; job {job_id} keeps running (python -m cluster.submit stop {job_id} stops it)")
            return 130
        return _report(client, job_id, status)

    client = connect(args.address)
    info = _job_info(client, args.job, args.address)
    if args.command == "status":
        meta = info.metadata or {}
        detail = ", ".join(f"{k}={v}" for k, v in sorted(meta.items()))
        print(f"job {args.job}: {info.status}" + (f" [{detail}]" if detail else ""))
        if info.message:
            print(f"  {_first_line(info.message)}")
        return 0
    if args.command == "stop":
        if str(info.status) in TERMINAL:
            print(f"job {args.job} already {info.status}")
            return 0
        client.stop_job(args.job)
        if args.no_wait:
            print(f"job {args.job}: stop requested")
            return 0
        status = wait(client, args.job)
        code = _report(client, args.job, status)
        return 0 if status == "STOPPED" else code
    # logs
    if args.follow:
        return _report(client, args.job, follow(client, args.job))
    sys.stdout.write(client.get_job_logs(args.job))
    return 0


class _QuietRayDefaults(logging.Filter):
    """Drops Ray's notice that .git/.venv are skipped: we exclude them on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is now ignored by default" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    logging.getLogger("ray._private.runtime_env.working_dir").addFilter(_QuietRayDefaults())
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except SubmitError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
