"""The README says what the Makefile, the chart and the scripts really do: its shell
snippets that need no cluster run here (marked `<!-- readme-test: runs offline -->`),
every `make` target it names exists, every `helm ... --set` it shows renders the chart
(through the values schema), every repository path in its commands exists, and its
metrics table lists metrics the runtime exposes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from artifacts import CHART, REPO
from modelship_operator.metrics import OperatorMetrics
from modelship_runtime.metrics import Metrics

README = (REPO / "README.md").read_text()
MARK = "<!-- readme-test: runs offline -->"


def _blocks(text: str, lang: str) -> list[tuple[bool, str]]:
    """(marked runnable, body) of every ```lang block."""
    found = []
    for match in re.finditer(rf"(?:({re.escape(MARK)})\n)?```{lang}\n(.*?)```", text, re.S):
        found.append((match.group(1) is not None, match.group(2)))
    return found


SH = _blocks(README, "sh")
RUNNABLE = [body for marked, body in SH if marked]


def _commands(body: str) -> list[list[str]]:
    joined = body.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


def test_there_are_runnable_snippets() -> None:
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("body", RUNNABLE, ids=lambda b: b.strip().splitlines()[0][:50])
def test_offline_snippet_runs(body: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README))
    for _, body in SH:
        named |= {c[1] for c in _commands(body) if c[:1] == ["make"] and len(c) > 1}
    assert named and named <= targets, named - targets


def test_helm_commands_render() -> None:
    shown = [c for _, body in SH for c in _commands(body) if c[:1] == ["helm"]]
    assert len(shown) >= 2
    for command in shown:
        assert command[1] in ("install", "upgrade") and "charts/modelship" in command
        values: dict[str, object] = {}
        for i, word in enumerate(command):
            if word == "--set":
                update = helm.parse_set_string(command[i + 1])
                values = {**values, **_merge(values, update)}
        with helm.Chart.load(str(CHART)) as chart:
            assert chart.render(values, name="modelship", namespace="modelship-system")


def _merge(base: dict[str, object], update: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        out[key] = (_merge(old, value) if isinstance(old, dict) and isinstance(value, dict)
                    else value)
    return out


def test_paths_in_commands_exist() -> None:
    for _, body in SH:
        for command in _commands(body):
            for word in command:
                if re.match(r"^(examples|charts|kustomize|scripts|crds|docs)/", word) or \
                        word.startswith(("Dockerfile.", ".venv/bin/python scripts/")):
                    assert (REPO / word).exists(), word


def test_metrics_tables_match_the_runtime_and_the_operator() -> None:
    runtime = {m.name for m in Metrics("m", "1").registry.collect()}
    operator = {m.name for m in OperatorMetrics().registry.collect()}
    section = README.split("## Metrics and alerts", 1)[1].split("## Troubleshooting", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)`", section, re.M))
    listed = {name.removesuffix("_total") for name in listed}
    assert listed and listed <= runtime | operator, listed - runtime - operator
    assert operator <= listed, f"operator metrics the README does not list: {operator - listed}"


def test_gitops_page_yaml_parses() -> None:
    page = (REPO / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        assert list(yaml.safe_load_all(block))


CLI_DOC = (REPO / "docs" / "cli.md").read_text()


def _exit_table() -> dict[str, tuple[str, bool, bool]]:
    """constant -> (code, in `modelship`, in `modelship-runtime`) from docs/cli.md."""
    section = CLI_DOC.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([0-9+N]+) \| `(EXIT_[A-Z_]+)` \| .+ \| (yes|no) \| (yes|no) \|$",
                      section, re.M)
    return {name: (code, op == "yes", rt == "yes") for code, name, op, rt in rows}


def test_the_exit_code_table_is_what_both_scripts_do() -> None:
    import modelship_operator.cli as operator_cli
    import modelship_runtime.__main__ as runtime_main

    table = _exit_table()
    assert len(table) == len(set(code for code, _, _ in table.values())) >= 9
    for module, column in ((operator_cli, 1), (runtime_main, 2)):
        assert "docs/cli.md" in (module.__doc__ or ""), module.__name__
        constants = {k: v for k, v in vars(module).items() if k.startswith("EXIT_")}
        documented = {k for k, row in table.items() if row[column]}
        assert set(constants) == documented, module.__name__
        for name, value in constants.items():
            code = table[name][0]
            assert code == ("128+N" if name == "EXIT_SIGNAL_BASE" else str(value)), name
            assert value == 128 or code != "128+N"


def test_the_readmes_agree_with_the_exit_code_table() -> None:
    import modelship_runtime.__main__ as runtime_main

    runtime_readme = (REPO / "runtime" / "README.md").read_text()
    paragraph = runtime_readme.split("Exit codes (the full table: `docs/cli.md`):", 1)[1]
    paragraph = paragraph.split("\n\n", 1)[0].split(". Each failure", 1)[0]
    listed = {int(n) for n in re.findall(r"(?<![\w.])(\d{1,3})\s[a-zS(]", paragraph)}
    codes = {v for k, v in vars(runtime_main).items()
             if k.startswith("EXIT_") and k != "EXIT_SIGNAL_BASE"}
    assert listed == codes | {128 + 15}, listed
    assert "`docs/cli.md`" in README and "exit codes" in README


def test_the_python_version_is_stated_where_it_is_needed() -> None:
    import tomllib

    required, *others = {
        tomllib.loads((REPO / image / "pyproject.toml").read_text())["project"]["requires-python"]
        for image in ("operator", "runtime")}
    assert required == ">=3.11" and others == []
    assert "Python 3.11 or\nnewer" in README or "Python 3.11 or newer" in README
    assert f'`requires-python = "{required}"`' in README
    assert "(Python >= 3.11)" in CLI_DOC
    assert sys.version_info >= (3, 11)


def test_make_help_lists_every_target_and_is_the_default() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    shown = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    listed = dict(re.findall(r"^  ([a-z][a-z0-9-]*) +(\S.*)$", shown.stdout, re.M))
    assert set(listed) == targets, targets ^ set(listed)
    assert "README's ModelDeployment reference" in listed["sync"]  # a two-line comment
    assert "(needs Python >=3.11)" in shown.stdout.splitlines()[0]
    bare = subprocess.run(["make", "--no-print-directory"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert bare.returncode == 0 and bare.stdout == shown.stdout
