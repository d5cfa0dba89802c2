"""The README's walkthrough, run as written: its shell command lines, with only the short-run overrides
the README itself documents, from a working directory laid out as the README says (configs/, the
archive in data/), on a small archive in the official CIFAR-10 format. The two pretraining runs
overlap (two local Rays on one machine). A run that works prints no ERROR and no traceback,
ends with its summary and leaves curves.png; the three probes follow (side by side: each reads a run and
writes its own folder), then the table."""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data_prep.conftest import make_cifar

ROOT = Path(__file__).resolve().parents[1]


def walkthrough() -> tuple[list[str], str, str]:
    """(the walkthrough's `python ...` command lines as written, the pretraining's and the probes'
    short-run overrides as the README gives them)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walkthrough"):]
    section = section[:section.index("\n## ", 1)]
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines()]
    m = re.search(r"add the short-run overrides `([^`]+)` to the two pretraining commands and `([^`]+)` to "
                  r"the three probes", " ".join(section.split()))
    assert m, "the README no longer names its short-run overrides"
    return [line for line in lines if line.startswith("python ")], m[1], m[2]


@pytest.mark.ray
@pytest.mark.e2e
def test_readme_walkthrough_runs_as_written(tmp_path):
    commands, pretrain_short, probe_short = walkthrough()
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "configs").symlink_to(ROOT / "configs")
    make_cifar(work / "data", per_batch=60, n_test=100)  # data/cifar-10-python.tar.gz: 300 train, 100 test
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)

    def start(line: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as out:
            return subprocess.Popen(["bash", "-c", line], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)

    def finish(proc: subprocess.Popen, log: str) -> str:
        proc.wait()
        text = (tmp_path / log).read_text()
        assert proc.returncode == 0, f"{proc.args[-1]}\n{text[-3000:]}"
        return text

    pretraining = [c for c in commands if c.startswith("python -m pretrain ")]
    assert len(pretraining) == 2
    done, probing = False, []
    for i, line in enumerate(commands):
        if line in pretraining:
            if not done:  # the second starts once the first's local Ray is up: two local Rays on one machine
                first = start(f"{pretraining[0]} {pretrain_short}", "pretrain0.log")
                while first.poll() is None and "Ray is up" not in (tmp_path / "pretrain0.log").read_text():
                    time.sleep(0.2)
                second = start(f"{pretraining[1]} {pretrain_short}", "pretrain1.log")
                outputs = [finish(first, "pretrain0.log"), finish(second, "pretrain1.log")]
                done = True
                for out in outputs:
                    print(out)
                    assert "ERROR" not in out and "Traceback" not in out, out
                    assert "starting a local Ray on this machine" in out and re.search(r"^done: step 8 in ", out, re.M), out
                    run_dir = re.search(r"^run directory: (\S+)$", out, re.M)[1]
                    curves = re.search(r"^curves: (\S+)$", out, re.M)[1]
                    assert Path(curves).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(curves).parent == Path(run_dir)
                    assert f"python -m eval.linear checkpoint={run_dir} data=" in out
                    assert (Path(run_dir) / "ray.log").is_file()
            continue
        if line.startswith("python -m eval.linear "):  # the probes read, each writes its own out=: side by side
            if line in probing:
                continue
            probing = list(itertools.takewhile(lambda c: c.startswith("python -m eval.linear "), commands[i:]))
            probes = [(c, start(f"{c} {probe_short}", f"probe{j}.log")) for j, c in enumerate(probing)]
            for j, (c, proc) in enumerate(probes):
                print(f"$ {c} {probe_short}\n{finish(proc, f'probe{j}.log')}")
            continue
        out = finish(start(line, f"step{i}.log"), f"step{i}.log")
        print(f"$ {line}\n{out}")
    table = (work / "runs" / "eval" / "table.md").read_text()
    assert table.count("infomax") >= 3 and "random init" in table, table
