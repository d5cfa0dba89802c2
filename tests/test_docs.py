"""The README and docs/ hold together: links resolve inside the repository, and the README's
walkthrough builds the shards where the configs it runs read them, with commands the entry points
accept (the walkthrough itself was run by hand on a small CIFAR-10-format archive)."""
import re
import shlex
from pathlib import Path

import pytest

from eval.config import load_linear_config
from pretrain.__main__ import parse_args
from pretrain.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page):
    text = page.read_text()
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert ROOT in target.parents or target == ROOT, f"{page.name}: {link} points outside the repository"
        assert target.exists(), f"{page.name}: {link} does not exist"
        if anchor:
            assert anchor in anchors(target), f"{page.name}: no heading for #{anchor} in {target.name}"
    assert "../shared" not in text and not re.search(r"(?<![\w.])/(work|home/\w+)/", text), page.name


def walkthrough_commands() -> list[list[str]]:
    """The shell commands of the README's walkthrough section, as argument lists."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walkthrough"):]
    section = section[:section.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python "):
                commands.append(shlex.split(line.replace("$(ls -d ", "").replace(" | tail -1)", "")))
    return commands


def test_walkthrough_shards_configs_and_probes_agree():
    commands = walkthrough_commands()
    modules = [c[2] for c in commands]
    assert modules == ["data_prep", "data_prep", "pretrain", "pretrain", "eval.linear", "eval.linear",
                       "eval.linear", "eval.table"], modules
    built = commands[0][commands[0].index("--out") + 1]
    assert commands[1][3:] == ["verify", built]
    runs = []
    for command in commands[2:4]:
        args = parse_args(command[3:])
        cfg = load_config(ROOT / args.config, args.overrides)
        assert cfg.data.shards == str(ROOT / built), f"{args.config} reads {cfg.data.shards}, the walkthrough builds {built}"
        runs.append(f"runs/{cfg.run.name}-*")
    outs = []
    for command in commands[4:7]:
        cfg = load_linear_config(None, command[3:])
        assert cfg.data == built and cfg.checkpoint[0] in runs
        outs.append(cfg.out)
    table_dir = commands[7][3]
    assert all(Path(out).parent == Path(table_dir) for out in outs) and len(set(outs)) == 3


def test_readme_cost_table_is_what_plan_counts_for_every_shipped_config():
    """The README's cost table (``python -m pretrain.plan configs/*.yaml --markdown``) has a row for
    every config in configs/, and its counted columns (task, encoder, workers, steps, PFLOP, time,
    images/s needed) are what the code counts today. The data columns are measurements of the
    machine that printed the table and are not re-measured here."""
    from pretrain.plan import DEFAULT_TFLOPS, MARKDOWN_HEADER, markdown_row, plan

    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(MARKDOWN_HEADER.format(tflops=DEFAULT_TFLOPS)) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows[line.split(" | ")[0][2:]] = line
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert sorted(rows) == [c.stem for c in configs]
    for config in configs:
        counted = markdown_row(plan(load_config(config, []), name=config.stem, data_seconds=0.0))
        for now, printed in zip(counted.split(" | ")[:-2], rows[config.stem].split(" | ")[:-2], strict=True):
            assert same_figure(now, printed), f"{config.name}: the README says {printed}, the code counts {now}"


def same_figure(a: str, b: str, rel: float = 1e-3) -> bool:
    """Equal cells, or the same number (within ``rel``) with the same unit: a change in what torch's
    FLOP counter counts fails the README check, rounding in the last digit does not."""
    if a == b:
        return True
    ma, mb = (re.fullmatch(r"([\d,]+(?:\.\d+)?)\s*(\S*)", x.strip()) for x in (a, b))
    if not (ma and mb) or ma[2] != mb[2]:
        return False
    x, y = (float(m[1].replace(",", "")) for m in (ma, mb))
    return abs(x - y) <= rel * max(abs(x), abs(y))
