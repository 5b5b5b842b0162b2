"""The commands in README.md and docs/*.md still run as written.

Every command line in a fenced shell block (```bash, ```sh, ```console, or no language) and
every inline code span that starts with a command is read the way a shell would (continuation
lines joined on a trailing backslash, ``&&``/``;``/``|`` chains split, ``# comments`` dropped).
Commands that run one of the project's scripts are checked against that script's own parser:

- ``python train.py ...``, ``.venv/bin/python predict.py ...``, ``python -m bench.bench_slide ...``,
  ``python -m utils.summary ...``: the script (or module file) must exist;
- ``torchrun [torchrun's own flags] train.py ...``: only the flags after the script are checked;
- every ``--flag`` must be an exact option string of the parser (argparse would also accept an
  unambiguous prefix such as ``--epoch``, but the docs must spell flags in full);
- the whole argument list must then parse (choices, value types, argument counts), with
  abbreviations off.

Other programs (pip, git, tensorboard, ``python -m pytest``...) are not checked. The parser is
taken from each script without running it: its ``parse_args`` (or ``main``) is called with
``argparse.ArgumentParser.parse_args`` patched to record the parser and stop. Failures name the
file, the line and the flag. Further tests: the README holds ``.ci/run``'s test command verbatim,
relative links between the docs (and their ``#heading`` anchors) resolve, and the checker itself
reports made-up flags, abbreviations, bad values and missing scripts.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
PYTHON = re.compile(r"python(3(\.\d+)?)?")
NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?([eE][-+]?\d+)?")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}


@dataclass(frozen=True)
class Command:
    """A command line of the docs that runs a project script: ``script`` relative to the repository root."""

    file: str  # "README.md"
    line: int  # where the command starts
    lines: tuple[str, ...]  # its physical lines (several when continued with a backslash)
    script: str  # "train.py", "bench/bench_slide.py"
    module: str  # "train", "bench.bench_slide"
    args: tuple[str, ...]
    text: str


def shell_lines(text: str) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(first line number, logical line, its physical lines) of the shell code: fenced shell blocks,
    and inline code spans elsewhere."""
    lines = text.splitlines()
    fence: str | None = None
    shell = False
    pending: tuple[int, str, tuple[str, ...]] | None = None
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, shell = match.group(1), match.group(2).lower() in SHELL_LANGUAGES
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence, pending = None, None
                continue
            if not shell:
                continue
            body = line.strip()
            if pending is None:
                body = body.removeprefix("$ ")
                pending = (number, "", ())
            start, joined, physical = pending[0], pending[1], (*pending[2], line)
            if body.endswith("\\"):
                pending = (start, joined + body[:-1] + " ", physical)
                continue
            yield start, joined + body, physical
            pending = None
            continue
        for span in INLINE_CODE.findall(line):
            yield number, span, (line,)


def split_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line as token lists (comments dropped, chains split)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: prose, not a command
        return
    current: list[str] = []
    for token in tokens:
        if token in SEPARATORS:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def _project_module(module: str) -> str | None:
    """The file of ``python -m module`` when it is part of this repository, else None (pytest, pip, ...)."""
    top = module.split(".")[0]
    if not ((ROOT / top / "__init__.py").is_file() or (ROOT / f"{top}.py").is_file()):
        return None
    path = module.replace(".", "/")
    return f"{path}/__main__.py" if (ROOT / path).is_dir() else f"{path}.py"


def _launched(tokens: list[str]) -> tuple[str, list[str]] | None:
    """``torchrun [its flags] script.py args``: the script and its arguments (torchrun's flags skipped)."""
    for index, token in enumerate(tokens):
        if token.endswith(".py") and not token.startswith("-"):
            return token, tokens[index + 1:]
    return None


def parse_command(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(script path, its arguments) when the command runs a project script, else None."""
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    program = tokens[0].rsplit("/", 1)[-1]
    if program == "torchrun":
        return _launched(tokens[1:])
    if not PYTHON.fullmatch(program):
        return None
    index = 1
    while index < len(tokens) and tokens[index].startswith("-"):
        option = tokens[index]
        if option == "-m" and index + 1 < len(tokens):
            module, rest = tokens[index + 1], tokens[index + 2:]
            if module == "torch.distributed.run":
                return _launched(rest)
            path = _project_module(module)
            return None if path is None else (path, rest)
        if option == "-c":
            return None
        index += 2 if option in ("-X", "-W") else 1
    if index < len(tokens) and tokens[index].endswith(".py"):
        return tokens[index], tokens[index + 1:]
    return None


def find_commands(text: str, name: str) -> list[Command]:
    """Every command of the markdown ``text`` (reported as file ``name``) that runs a project script."""
    found = []
    for number, line, physical in shell_lines(text):
        for tokens in split_commands(line):
            parsed = parse_command(tokens)
            if parsed is None:
                continue
            script, args = parsed
            script = script.removeprefix("./")
            module = script.removesuffix(".py").removesuffix("/__main__").replace("/", ".")
            found.append(Command(name, number, physical, script, module, tuple(args), " ".join(tokens)))
    return found


class _CapturedError(Exception):
    """Raised by the patched ``parse_args`` to stop a script once its parser is known."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


class _RejectedError(Exception):
    """A parser's ``error`` during the check's own parse."""


def _capture(self: argparse.ArgumentParser, *args, **kwargs):
    raise _CapturedError(self)


@cache
def script_parser(module_name: str) -> argparse.ArgumentParser:
    """The argument parser of a script, taken from its ``parse_args(argv)`` (else ``main``) without running it."""
    module = importlib.import_module(module_name)
    entry = getattr(module, "parse_args", None) or module.main
    required = [p for p in inspect.signature(entry).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _capture), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", _capture):
        try:
            entry([]) if required or entry.__name__ == "parse_args" else entry()
        except _CapturedError as captured:
            parser = captured.parser
        else:
            raise AssertionError(f"{module_name}: {entry.__name__} never parsed a command line")
    parser.allow_abbrev = False

    def error(message: str):
        raise _RejectedError(message)

    parser.error = error
    return parser


def check_command(command: Command) -> list[str]:
    """What is wrong with a documented command (empty when it would parse as written)."""
    def where(token: str | None = None) -> str:
        """``file:line`` of the physical line holding ``token`` (else the command's first line), and the command."""
        offset = 0
        if token is not None:
            pattern = re.compile(rf"(?<!\S){re.escape(token)}(?![^\s=])")
            offset = next((i for i, line in enumerate(command.lines) if pattern.search(line)), 0)
        return f"{command.file}:{command.line + offset}: `{command.text}`"

    if not (ROOT / command.script).is_file():
        return [f"{where()}: {command.script} does not exist"]
    parser = script_parser(command.module)
    options = parser._option_string_actions
    problems = []
    for token in command.args:
        if token == "--":
            break
        if not token.startswith("-") or NEGATIVE_NUMBER.fullmatch(token):
            continue
        flag = token.split("=", 1)[0]
        if flag in options:
            continue
        prefixed = [option for option in options if option.startswith(flag)]
        if len(prefixed) == 1:
            hint = f"; argparse would take it as an abbreviation of {prefixed[0]}: write that in full"
        else:
            close = difflib.get_close_matches(flag, list(options), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
        problems.append(f"{where(flag)}: {command.script} has no option {flag}{hint}")
    if problems or {"-h", "--help"} & set(command.args):
        return problems
    try:
        parser.parse_args(list(command.args))
    except _RejectedError as exc:
        problems.append(f"{where()}: {command.script} rejects it: {exc}")
    return problems


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_documented_commands_parse(doc: Path) -> None:
    problems = [problem for command in find_commands(doc.read_text(), _relative(doc))
                for problem in check_command(command)]
    assert not problems, "\n".join(problems)


def test_the_docs_show_every_script() -> None:
    """The extraction finds the commands at all: each of the four scripts appears in the docs."""
    scripts = {command.script for doc in DOCS for command in find_commands(doc.read_text(), _relative(doc))}
    assert {"train.py", "predict.py", "get_miou.py", "voc_annotation.py"} <= scripts


def test_readme_runs_the_ci_test_command() -> None:
    """``.ci/run`` runs exactly the README's test command."""
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in (ROOT / "README.md").read_text().splitlines()


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_relative_links_resolve(doc: Path) -> None:
    """Links to other files of the repository (and to their headings) point at something that exists."""
    problems = []
    text = doc.read_text()
    for number, line in enumerate(text.splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            path_text, _, anchor = target.partition("#")
            path = (doc.parent / path_text).resolve() if path_text else doc
            if not path.exists():
                problems.append(f"{_relative(doc)}:{number}: link to missing {path_text}")
                continue
            if anchor and path.suffix == ".md":
                anchors = {_anchor(m) for m in re.findall(r"^#+\s+(.*)$", path.read_text(), re.MULTILINE)}
                if anchor not in anchors:
                    problems.append(f"{_relative(doc)}:{number}: no heading #{anchor} in {_relative(path)}")
    assert not problems, "\n".join(problems)


BOGUS = """\
Intro with an inline `python predict.py --weights w.pth --no-such-option x.jpg`.

```bash
pip install --upgrade pip   # not ours: never checked
python train.py --epochs 2 \\
    --made-up-flag 3
torchrun --nproc_per_node=2 --master_port=29500 train.py --amp --epoch 3
.venv/bin/python missing_script.py --anything
python -m bench.bench_slide --not-a-bench-flag && python -m pytest --not-checked
```

```python
python train.py --ignored-in-python-blocks
```
"""


def test_a_bogus_flag_is_reported_with_file_line_and_flag() -> None:
    problems = [problem for command in find_commands(BOGUS, "fake.md") for problem in check_command(command)]
    assert len(problems) == 5, problems
    inline, continued, abbreviated, missing, bench = problems
    assert inline.startswith("fake.md:1: ") and "predict.py has no option --no-such-option" in inline
    assert continued.startswith("fake.md:6: ") and "train.py has no option --made-up-flag" in continued
    assert abbreviated.startswith("fake.md:7: ") and "train.py has no option --epoch;" in abbreviated
    assert "abbreviation of --epochs" in abbreviated and "--nproc_per_node" not in abbreviated.split("`")[-1]
    assert missing.startswith("fake.md:8: ") and "missing_script.py does not exist" in missing
    assert bench.startswith("fake.md:9: ") and "bench/bench_slide.py has no option --not-a-bench-flag" in bench


def test_a_bad_value_is_reported() -> None:
    text = "```sh\npython predict.py --mix sepia img.jpg\npython train.py --crop-size 512\n```\n"
    problems = [problem for command in find_commands(text, "fake.md") for problem in check_command(command)]
    assert len(problems) == 2, problems
    assert problems[0].startswith("fake.md:2: ") and "invalid choice: 'sepia'" in problems[0]
    assert problems[1].startswith("fake.md:3: ") and "--crop-size" in problems[1]


def test_well_formed_commands_pass() -> None:
    text = """```console
$ python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python train.py --demo
$ torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 train.py --pretrained --sync-bn --amp
$ python get_miou.py --mode=eval --pred-dir out --classes c.txt  # a comment --not-a-flag
```
"""
    commands = find_commands(text, "fake.md")
    assert [c.script for c in commands] == ["train.py", "train.py", "get_miou.py"]
    assert [p for c in commands for p in check_command(c)] == []
