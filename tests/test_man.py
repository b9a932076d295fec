"""The man pages: they render without a single groff warning, and they cannot drift from the code.

Every command and option of the CLI, every configuration key, mount option, escape, runtime index
key, validate JSON key, exit code, environment variable and script variable is taken from the code
and looked up in the page where an admin would look for it; the EXAMPLE and the sample messages
are checked by running them.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from nsctl import __version__, config, engine, errors, holder, jcconf, layout, plan, scripts
from nsctl import validate as checker
from nsctl.cli import main
from nsctl.jobs import Job

ROOT = Path(__file__).resolve().parent.parent
NSCTL_8 = ROOT / "man" / "nsctl.8"
NAMESPACE_5 = ROOT / "man" / "namespace.yaml.5"
JOB_CONTAINER_5 = ROOT / "man" / "job_container.conf.5"
PAGES = (NSCTL_8, NAMESPACE_5, JOB_CONTAINER_5)
EXAMPLE = ROOT / "examples" / "namespace.yaml"


# ---------------------------------------------------------------------------------------------
# A small reader for the subset of man(7) the pages use


_ESCAPE = re.compile(r"\\(\(..|f\[[^]]*\]|f\(..|f.|.)")
_CHARS = {"-": "-", "(aq": "'", "(dq": '"', "(bu": "*", "e": "\\", "&": "", " ": " "}
_ARG = re.compile(r'"((?:[^"]|"")*)"|(\S+)')
_JOINED = {"B", "I"}  # arguments joined with spaces; the two-font macros join them without
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}


def plain(roff: str) -> str:
    """roff text with font changes dropped and the escapes the pages use turned into characters."""

    def substitute(match: re.Match) -> str:
        escape = match.group(1)
        if escape.startswith("f"):
            return ""
        return _CHARS.get(escape, "\\" + escape)

    return _ESCAPE.sub(substitute, roff)


def line_text(line: str) -> str:
    """What one source line shows: its text, or the text of a font macro's arguments."""
    if not line.startswith((".", "'")):
        return plain(line)
    name, _, rest = line[1:].partition(" ")
    args = [quoted if quoted else bare for quoted, bare in _ARG.findall(rest)]
    if name in _JOINED:
        return plain(" ".join(args))
    if name in _ALTERNATING:
        return plain("".join(args))
    return ""  # requests (.PP, .TP, .EX ...) and comments show nothing themselves


def split(lines: list[str], macro: str) -> dict[str, list[str]]:
    """Lines grouped under each ``.SH``/``.SS`` heading (name in plain text)."""
    parts: dict[str, list[str]] = {"": []}
    current = ""
    for line in lines:
        if line.startswith(macro + " "):
            current = plain(line[len(macro) + 1 :].strip().strip('"'))
            assert current not in parts, f"heading {current!r} appears twice"
            parts[current] = []
        else:
            parts[current].append(line)
    return parts


def text(lines: list[str]) -> str:
    return " ".join(t for t in (line_text(line) for line in lines) if t)


def items(lines: list[str]) -> dict[str, str]:
    """``.TP`` items: the tag line's text -> the text of the paragraph below it."""
    result: dict[str, str] = {}
    tag = None
    body: list[str] = []
    for line in lines + [".PP"]:
        is_break = line.startswith((".TP", ".PP", ".SS", ".SH", ".IP", ".RS", ".RE"))
        if tag is not None and is_break:
            result[tag] = text(body)
            tag = None
        if line.startswith(".TP"):
            tag, body = "", []
        elif tag == "" and not body:
            tag = line_text(line)
        elif tag is not None:
            body.append(line)
    return result


def tag_names(tag: str) -> list[str]:
    """The names in a tag such as "uid, gid, user" or "-v, --verbose"."""
    return [name.strip() for name in tag.split(",")]


def examples(lines: list[str]) -> Iterator[str]:
    """The contents of each ``.EX``/``.EE`` block, as plain text."""
    block = None
    for line in lines:
        if line.startswith(".EX"):
            block = []
        elif line.startswith(".EE"):
            yield "\n".join(block)
            block = None
        elif block is not None:
            block.append(plain(line))


def page(path: Path) -> dict[str, list[str]]:
    return split(path.read_text(encoding="ascii").splitlines(), ".SH")


@pytest.fixture(scope="module")
def nsctl8() -> dict[str, list[str]]:
    return page(NSCTL_8)


@pytest.fixture(scope="module")
def namespace5() -> dict[str, list[str]]:
    return page(NAMESPACE_5)


@pytest.fixture(scope="module")
def jobcontainer5() -> dict[str, list[str]]:
    return page(JOB_CONTAINER_5)


def commands() -> dict[str, click.Command]:
    return dict(main.commands)


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


# ---------------------------------------------------------------------------------------------
# Rendering


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # CI installs them (.ci/run); a missing tool must not pass silently
        pytest.fail(f"{name} is not installed: apt-get install -y man-db groff-base")
    return path


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_page_is_ascii(path):
    """Non-ASCII would need preconv, which plain groff does not run."""
    path.read_text(encoding="ascii")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_groff_renders_without_any_warning(path):
    result = subprocess.run(
        [_tool("groff"), "-man", "-t", "-ww", "-z", "-Tutf8", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_man_renders_without_warnings(path):
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        [_tool("man"), "--warnings", "-l", str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0
    assert result.stderr == ""
    assert "NAME" in result.stdout and "SEE ALSO" in result.stdout


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_header_names_this_version(path):
    header = next(line for line in path.read_text().splitlines() if line.startswith(".TH "))
    assert f'"nsctl {__version__}"' in header


# ---------------------------------------------------------------------------------------------
# nsctl(8): the command line


def test_every_command_has_its_own_subsection(nsctl8):
    documented = set(split(nsctl8["COMMANDS"], ".SS")) - {""}
    # The Prolog/Epilog console scripts (pyproject's [project.scripts]) share one subsection.
    assert documented == set(commands()) | {"nsctl-prolog, nsctl-epilog"}
    hooks = "\n".join(split(nsctl8["COMMANDS"], ".SS")["nsctl-prolog, nsctl-epilog"])
    for flag in ("--on-error", "--holder", "-v"):
        assert flag.replace("-", "\\-") in hooks


def test_every_command_is_in_the_synopsis(nsctl8):
    synopses = _synopses(nsctl8)
    assert set(commands()) <= set(synopses)
    for name, command in commands().items():
        for option in options(command):
            for flag in option.opts + option.secondary_opts:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", synopses[name]), (
                    f"{flag} missing from the synopsis of {name}"
                )
        for argument in (p for p in command.params if isinstance(p, click.Argument)):
            for word in re.findall(r"[A-Z]+", argument.metavar or argument.name.upper()):
                assert word in synopses[name], f"{word} missing from the synopsis of {name}"


def _synopses(sections) -> dict[str, str]:
    """Command name -> its synopsis text (one ``.SY``/``.YS`` block each)."""
    result, block = {}, None
    for line in sections["SYNOPSIS"]:
        if line.startswith(".SY"):
            block = []
        elif line.startswith(".YS"):
            words = text(block).split()
            result[words[0]] = " ".join(words)
            block = None
        elif block is not None:
            block.append(line)
    return result


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_is_an_item_of_its_command(nsctl8, name):
    """Each option has a .TP item in its command's subsection: with its metavar, its choices,
    its shown default and every variable its --help names as a default."""
    command = commands()[name]
    section = split(nsctl8["COMMANDS"], ".SS")
    described = items(section[name])
    by_flag = {flag: tag for tag in described for flag in re.findall(r"(?<![\w-])--?\w[\w-]*", tag)}
    preamble = text(section[""])
    for option in options(command):
        for flag in option.opts + option.secondary_opts:
            assert flag in by_flag, f"nsctl {name} {flag} is not documented"
        tag = by_flag[option.opts[0]]
        if option.metavar:
            assert option.metavar in tag.split(), (name, tag)
        if isinstance(option.type, click.Choice):
            assert "|".join(option.type.choices) in tag, (name, tag)
        if option.show_default and option.default is not None:
            assert f"default {option.default}" in described[tag], (name, tag)
        for variable in re.findall(r"\$[A-Z_]+", option.help or ""):
            assert variable in described[tag] + preamble, f"{name} {tag}: {variable}"


@pytest.mark.parametrize("name", sorted(commands()))
def test_no_item_names_an_option_the_command_does_not_have(nsctl8, name):
    command = commands()[name]
    real = {flag for option in options(command) for flag in option.opts + option.secondary_opts}
    for tag in items(split(nsctl8["COMMANDS"], ".SS")[name]):
        for flag in re.findall(r"(?<![\w-])--?\w[\w-]*", tag):
            assert flag in real, f"nsctl {name} has no option {flag}"


def test_global_options_are_documented(nsctl8):
    tags = {n for tag in items(nsctl8["OPTIONS"]) for n in tag_names(tag)}
    flags = {flag for option in options(main) for flag in option.opts + option.secondary_opts}
    flags |= set(main.context_settings["help_option_names"])
    assert flags <= tags


def test_exit_status_table_is_the_exit_enum(nsctl8):
    rows = {
        int(m.group(1)) for line in nsctl8["EXIT STATUS"] for m in [re.match(r"(\d+)\|", line)] if m
    }
    codes = {value for name, value in vars(errors.Exit).items() if name.isupper()}
    assert codes == {0, 1, 2} and rows == codes


def test_environment_lists_every_variable_nsctl_reads(nsctl8):
    pattern = re.compile(r'(?:environ|env)(?:\.get)?[(\[]\s*"([A-Z][A-Z0-9_]*)"')
    read = set()
    for source in (ROOT / "nsctl").glob("*.py"):
        read.update(pattern.findall(source.read_text()))
    assert {"NSCTL_CONFIG", "NSCTL_RUN_DIR", "SLURM_JOB_ID"} <= read  # the pattern still works
    documented = {n for tag in items(nsctl8["ENVIRONMENT"]) for n in tag_names(tag)}
    assert read <= documented, read - documented


class _Everything(dict):
    """An environment in which every variable is set, so every optional one is passed on."""

    def get(self, key, default=None):
        return "x"

    def __getitem__(self, key):
        return "x"


def _full_config() -> config.NodeConfig:
    doc = {
        "defaults": {
            "base_path": "/b",
            "clone_ns_flags": ["CLONE_NEWPID", "CLONE_NEWUSER"],
            "init_script": "/i",
            "user_ns_script": "/u",
            "clone_ns_script": "/c",
            "clone_ns_epilog": "/e",
            "dir_confs": [{"path": "/tmp"}, {"path": "/scratch", "base_path": "/d"}],
        }
    }
    return config.resolve(doc, "n1")


def _full_plan() -> plan.Plan:
    job = Job("42", 1000, 1000, "alice", "sluid-1")
    return plan.plan_setup(_full_config(), job, "/run/nsctl/jobs/42", _Everything())


def test_scripts_section_names_every_variable_scripts_get(nsctl8):
    ops = _full_plan().ops
    envs = [dict(op.env) for op in ops if isinstance(op, plan.RunScript)]
    envs += [dict(op.user_ns_script.env) for op in ops if isinstance(op, plan.CreateNamespaces)]
    epilog = plan.plan_teardown(_full_config(), "42", "/x", _Everything()).epilog
    envs.append(dict(epilog.env))
    names = {name for env in envs for name in env}
    assert '"SLURM_NS_PID"' in inspect.getsource(engine)  # added by the engine, not the plan
    names.add("SLURM_NS_PID")
    documented = text(split(nsctl8["SETUP"], ".SS")["Scripts"])
    missing = {name for name in names if not re.search(rf"\b{name}\b", documented)}
    assert not missing


def test_runtime_index_format_is_the_one_setup_writes(nsctl8):
    (entry,) = [op.entry for op in _full_plan().ops if isinstance(op, plan.WriteIndex)]
    written = layout.parse_index(entry.format())
    section = nsctl8["RUNTIME INDEX"]
    (sample,) = list(examples(section))
    shown = [line.partition("=")[0] for line in sample.splitlines()]
    assert shown == list(written)
    assert sample.splitlines()[0] == f"version={layout.INDEX_VERSION}"
    described = {n for tag in items(section) for n in tag_names(tag)}
    assert set(written) <= described
    assert layout.DEFAULT_RUN_DIR in text(section)


def test_validate_json_keys_are_documented(nsctl8, tmp_path, monkeypatch):
    monkeypatch.setenv("NSCTL_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("SLURM_CONF", raising=False)
    varied = tmp_path / "varied.yaml"  # disabled nodes, a shadowed entry, a node matched twice
    varied.write_text(
        "defaults: {base_path: /b}\n"
        "node_confs:\n"
        "  - {nodes: 'n[1-2]', options: {base_path: none}}\n"
        "  - {nodes: n2, options: {shared: true}}\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "defaults: {base_paht: /b, dir_confs: [{path: /tmp, base_path: /t, tmpfs: true}]}\n"
    )
    keys: set[str] = set()

    def collect(value) -> None:
        if isinstance(value, dict):
            keys.update(value)
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    runner = CliRunner()
    for path in (varied, broken, EXAMPLE):
        result = runner.invoke(
            main, ["validate", str(path), "--nodes", "n[1-3]", "--format", "json"]
        )
        collect(yaml.safe_load(result.output))
    assert {"errors", "warnings", "severity", "shadowed", "reason", "applies"} <= keys
    documented = text(nsctl8["VALIDATE JSON OUTPUT"])
    assert {key for key in keys if not re.search(rf"\b{key}\b", documented)} == set()


def test_holder_and_timing_facts_match_the_code(nsctl8):
    whole = text([line for lines in nsctl8.values() for line in lines])
    assert holder.title("J") in whole
    assert f"EINVAL in {engine.BIND_ATTEMPTS} attempts" in text(nsctl8["NOTES"])
    assert f"within {engine.CHILD_TIMEOUT:g} s" in text(nsctl8["SETUP"])
    assert f"up to {engine.HOLDER_EXIT_WAIT:g} s" in text(nsctl8["TEARDOWN"])
    assert f"{scripts.GRACE:g} s later, SIGKILL" in whole
    assert f"limit {config.INIT_SCRIPT_WAIT} s" in text(nsctl8["SETUP"])
    assert config.DEFAULT_CONFIG in text(nsctl8["FILES"])


def test_every_lock_file_is_documented(nsctl8):
    names = set(re.findall(r'_lock\([^)]*"([\w.]+)"\)', inspect.getsource(engine)))
    names.add(inspect.signature(engine._lock).parameters["name"].default)
    assert "nsctl.lock" in names  # the pattern still finds it
    for name in names:
        assert f"locks/{name}" in text(nsctl8["RUNTIME INDEX"])
        assert f"locks/{name}" in text(nsctl8["SAFETY"]) + text(nsctl8["FILES"])


@pytest.mark.parametrize("path", (NSCTL_8, NAMESPACE_5), ids=lambda p: p.name)
def test_sample_validate_message_is_what_validate_prints(path):
    """Both pages quote one message; produce it for real at the line and column they show."""
    document = (
        "defaults:\n  base_path: /b\nnode_confs:\n"
        "  - nodes: n1\n    options:\n      shared: true\n"
        "  - nodes: n2\n    options:\n      shared: false\n      clone_ns_script_wait: 5\n"
        "      clone_ns_epilog_wait: 5\n      auto_base_path: true\n      init_script: /i\n"
        "      base_path: scratch\n"
    )
    (issue,) = checker.check_text(document, "namespace.yaml").issues
    quoted = [
        line_text(line)
        for line in path.read_text().splitlines()
        if line_text(line).startswith("namespace.yaml:14:7:")
    ]
    assert quoted == [str(issue)]


# ---------------------------------------------------------------------------------------------
# namespace.yaml(5): the format


def _keys(lines: list[str]) -> set[str]:
    return {n for tag in items(lines) for n in tag_names(tag)}


def test_file_structure_keys(namespace5):
    assert _keys(namespace5["FILE STRUCTURE"]) == set(config.TOP_KEYS + config.NODE_CONF_KEYS)


def test_every_option_key_is_documented_and_no_other(namespace5):
    assert _keys(namespace5["OPTIONS"]) == set(config.OPTION_KEYS)
    assert set(checker.schema()["$defs"]["options"]["properties"]) == set(config.OPTION_KEYS)


def test_every_dir_conf_key_is_documented_and_no_other(namespace5):
    entries = split(namespace5["DIR_CONFS ENTRIES"], ".SS")
    assert _keys(entries[""]) == set(config.DIR_CONF_KEYS)


def test_mount_options_are_the_ones_validate_knows(namespace5):
    tags = items(split(namespace5["DIR_CONFS ENTRIES"], ".SS")["MOUNT OPTIONS"])
    names = {n.partition("=")[0] for tag in tags for n in tag_names(tag)}
    assert names == set(config.MOUNT_FLAGS + config.TMPFS_DATA_KEYS)
    huge = next(body for tag, body in tags.items() if tag.startswith("huge="))
    for policy in checker._DATA_VALUE["huge"].pattern.strip("^$()").split("|"):
        assert policy in huge


def test_flags_escapes_and_defaults(namespace5):
    options = items(namespace5["OPTIONS"])
    for flag in config.CLONE_FLAGS:
        assert flag in options["clone_ns_flags"]
    assert f"default {config.DEFAULT_DIRS}" in options["dirs"]
    for key in config.WAIT_KEYS:
        assert f"default {config.DEFAULT_WAIT}" in options[key]
        assert f"0 means {config.DEFAULT_WAIT}" in options[key]
    assert f"{config.INIT_SCRIPT_WAIT} seconds" in options["init_script"]
    assert f"{config.USER_NS_SCRIPT_WAIT} seconds" in options["user_ns_script"]
    escapes = {tag for tag in items(namespace5["ESCAPES"])}
    assert escapes == {"%h", "%n"} | {f"%{letter}" for letter in config.JOB_ESCAPES}
    assert config.DEFAULT_CONFIG in text(namespace5["SYNOPSIS"])


def test_example_is_the_reference_example_and_valid(namespace5):
    sample = next(examples(namespace5["EXAMPLE"]))
    assert yaml.safe_load(sample) == yaml.safe_load(EXAMPLE.read_text())
    checked = checker.check_text(sample, "EXAMPLE")
    assert checked.issues == ()
    resolved = config.resolve(checked.data, "n3")
    assert resolved.entry == "node_confs[0]" and resolved.clone_ns_script_wait == 20


def test_schema_modeline_instructions_work(namespace5):
    blocks = list(examples(namespace5["EDITOR SUPPORT"]))
    assert blocks[0] == "# yaml-language-server: $schema=PATH"
    command = next(block for block in blocks if block.startswith("python3 -c "))
    result = subprocess.run(
        ["sh", "-c", command.replace("python3", shlex.quote(sys.executable), 1)],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = resources.files("nsctl.schema") / "namespace.schema.json"
    assert result.stdout.strip() == str(installed)
    assert Path(result.stdout.strip()).is_file()


def test_differences_from_slurm_cover_both_kinds(namespace5):
    subsections = split(namespace5["DIFFERENCES FROM SLURM"], ".SS")
    assert len(items(subsections["Stricter checks"])) >= 15
    assert len(items(subsections["Different behaviour"])) >= 15


def _value_rows(namespace5) -> list[list[str]]:
    """The rows of the table in HOW VALUES ARE READ, as plain text, without the header."""
    lines = namespace5["HOW VALUES ARE READ"]
    block = lines[lines.index(".TS") + 1 : lines.index(".TE")]
    block = block[next(i for i, line in enumerate(block) if line.endswith(".")) + 1 :]
    rows = [plain(line).split("|") for line in block]
    assert rows[0] == ["written", "boolean key", "wait key", "text key"]
    return rows[1:]


def _written(cell: str) -> str:
    return "" if cell == "(nothing)" else cell


def _message(text: str) -> str:
    """The one error validate gives for ``text``."""
    (issue,) = checker.check_text(text, "ns.yaml").errors
    return issue.message


def _scalar_text(written: str) -> str:
    """The text of a scalar written as ``written``, as any YAML parser reads it."""
    (event,) = [e for e in yaml.parse(f"k: {written}") if isinstance(e, yaml.ScalarEvent)][1:]
    return event.value


def test_every_row_of_the_value_table_is_what_validate_does(namespace5):
    """namespace.yaml(5) says, value by value, what each kind of key takes and what Slurm would
    do instead; each cell is checked against validate here, so the page cannot drift."""
    refusals = {
        "fatal": ("Slurm refuses it too", "Slurm would refuse it"),
        "no limit": ("Slurm would wait without any time limit",),
        "tag": ("unsupported tag",),
        "the text": ("Slurm reads it as the text",),
    }
    rows = _value_rows(namespace5)
    assert len(rows) >= 30
    for written, boolean, wait, text in rows:
        value = _written(written)
        cells = (
            (boolean, f"defaults:\n  shared: {value}\n", ("defaults", "shared")),
            (wait, f"defaults:\n  clone_ns_script_wait: {value}\n", ("defaults", None)),
        )
        for cell, document, (section, key) in cells:
            key = key or "clone_ns_script_wait"
            if cell.startswith("no ("):
                reading = cell[len("no (") : -1]
                message = _message(document)
                expected = refusals.get(reading) or (
                    f"Slurm would read it as {reading}",
                    f"Slurm reads it as {reading}",
                    f"Slurm would wait {reading}",
                )
                assert any(words in message for words in expected), (written, cell, message)
                continue
            checked = checker.check_text(document, "ns.yaml")
            assert checked.valid, (written, cell, [str(i) for i in checked.issues])
            got = checked.data[section][key]
            if cell in ("true", "false"):
                assert got is (cell == "true"), (written, cell)
            else:
                number, _, means = cell.partition(", so ")
                assert got == int(number), (written, cell)
                resolved = config.resolve({"defaults": {"base_path": "/b", key: got}}, "n1")
                assert resolved.clone_ns_script_wait == int(means or number), (written, cell)
        if text == "unset":
            checked = checker.check_text(f"defaults:\n  init_script: {value}\n", "ns.yaml")
            assert checked.issues == () and checked.data["defaults"]["init_script"] == ""
        elif text == "the text":  # a node name: the one text key with no rule of its own
            document = f"node_confs:\n  - nodes: {value}\n    options: {{}}\n"
            checked = checker.check_text(document, "ns.yaml")
            assert checked.valid, (written, [str(i) for i in checked.issues])
            assert checked.data["node_confs"][0]["nodes"] == _scalar_text(value), written
        else:
            reading = text[len("no (") : -1]
            message = _message(f"defaults:\n  init_script: {value}\n")
            assert any(words in message for words in refusals[reading]), (written, message)


# ---------------------------------------------------------------------------------------------
# job_container.conf(5): the namespace/tmpfs format


def test_every_job_container_key_is_documented_with_its_release_and_default(jobcontainer5):
    keys = items(jobcontainer5["KEYS"])
    assert set(keys) == {key.name for key in jcconf.KEYS}
    for key in jcconf.KEYS:
        body = keys[key.name]
        assert f"since {jcconf.show(key.since)}" in body, key.name
        if key.default is not None and key.kind != config.DIRS:
            shown = {True: "yes", False: "no"}.get(key.default, str(key.default))
            assert f"default {shown}" in body, key.name
        if key.kind == config.DIRS:
            assert f"default {config.DEFAULT_DIRS}" in body
        where = {
            jcconf.GLOBAL: "any line or global",
            jcconf.IGNORED: "NodeName= and BasePath= lines only",
            jcconf.LINE: "NodeName= and BasePath= lines only",
            jcconf.STARTS: "the first key of a",
        }[key.alone]
        assert where in body, key.name


def test_the_release_table_has_every_release_the_code_knows(jobcontainer5):
    lines = jobcontainer5["SLURM RELEASES"]
    block = lines[lines.index(".TS") + 1 : lines.index(".TE")]
    releases = {line.split("|")[0] for line in block if "|" in line} - {"release"}
    known = {jcconf.show(key.since) for key in jcconf.KEYS}
    known |= {jcconf.show(v) for v in (jcconf.FIRST, jcconf.EXPANDS, jcconf.TURNS_OFF)}
    assert known <= releases, known - releases
    assert jcconf.show(jcconf.NEWEST) in text(jobcontainer5["DESCRIPTION"])


# One file per kind of problem: every message nsctl gives for a job_container.conf.
JOB_CONTAINER_PROBLEMS = [
    "NodeName=n1 BasePth=/a BasePath=/b\n",
    "InitScript=/i\nBasePath=/b\n",
    "CloneNSScript=/c\nBasePath=/b\n",
    "BasePath=/b NodeName=n1\n",
    "AutoBasePath=yes Shared=no\nBasePath=/b\n",
    "foo\nBasePath=/b\n",
    "BasePath=/b junk\n",
    "Dirs=\nBasePath=/b\n",
    "include x.conf\nBasePath=/b\n",
    "BasePath+=/b\n",
    "BasePath=/b Shared=yes Shared=no\n",
    "Shared=yes\nShared=no\nBasePath=/b\n",
    "NodeName=n1 Shared=yes\nBasePath=/b\n",
    "BasePath=/b Shared=maybe\n",
    "BasePath=/b CloneNSScript_Wait=0\n",
    "BasePath=/b CloneNSScript_Wait=010\n",
    "BasePath=/b CloneNSScript_Wait=5s\n",
    "BasePath=/b CloneNSScript_Wait=9999999\n",
    "BasePath=rel\n",
    "BasePath=nonesuch\n",
    'BasePath=""\n',
    "BasePath=/b/%u\n",
    "BasePath=/b/%\n",
    'BasePath="/b\x01"\n',
    "BasePath=/b Dirs=/a\\\\b\n",
    "BasePath=/b Dirs=/tmp,,/x\n",
    'BasePath=/b Dirs="/tmp, /x"\n',
    "BasePath=/b Dirs=/tmp,/tmp\n",
    "BasePath=/b Dirs=/a/b,/a_b\n",
    "BasePath=/b Dirs=/dev/SHM\n",
    "BasePath=/tm\n",
    "BasePath=/b/ Dirs=/b\n",
    "BasePath=/tmp/x\n",
    "NodeName=n[1- BasePath=/b\n",
    'NodeName="n1 n2" BasePath=/b\n',
    'NodeName="" BasePath=/b\n',
    "BasePath=/b InitScript=rel\n",
]
JOB_CONTAINER_RELEASE_PROBLEMS = [
    "BasePath=/b Dirs=/tmp\n",
    "BasePath=/b/%n\n",
    "BasePath=none\n",
    "NodeName=n1 BasePath=/b\n",
]


def test_every_job_container_diagnostic_is_documented(jobcontainer5):
    tags = list(items(jobcontainer5["DIAGNOSTICS"]))
    used = set()
    messages = []
    for problem in JOB_CONTAINER_PROBLEMS:
        messages += [i.message for i in jcconf.check_text(problem, "j.conf").errors]
        assert jcconf.check_text(problem, "j.conf").errors, problem
    for problem in JOB_CONTAINER_RELEASE_PROBLEMS:
        checked = jcconf.check_text(problem, "j.conf", (22, 5), ["n2"])
        assert checked.errors, problem
        messages += [i.message for i in checked.errors]
    for message in messages:
        found = [tag for tag in tags if tag in message]
        assert found, f"no DIAGNOSTICS item for: {message}"
        used.update(found)
    assert set(tags) == used, set(tags) - used


def test_job_container_sample_message_is_what_validate_prints():
    text = "AutoBasePath=yes\nBasePath=/b\nNodeName=n[1-4] BasePth=/x BasePath=/y\n"
    (issue,) = jcconf.check_text(text, "job_container.conf").issues
    for path in (JOB_CONTAINER_5, NSCTL_8):
        quoted = [
            line_text(line)
            for line in path.read_text().splitlines()
            if line_text(line).startswith("job_container.conf:3:")
        ]
        assert quoted == [str(issue)], path.name


def test_job_container_example_is_valid_and_converts(jobcontainer5):
    sample, commands = list(examples(jobcontainer5["EXAMPLE"]))
    checked = jcconf.check_text(sample, "job_container.conf")
    assert checked.issues == ()
    nodes = {n: jcconf.resolve(checked.data, n) for n in ("n2", "n7", "login1")}
    assert nodes["n2"].base_path == "/fast/n2" and nodes["n2"].shared
    assert nodes["n7"].base_path == "/var/ns" and not nodes["login1"].enabled
    assert [d.path for d in nodes["n7"].dir_confs] == ["/tmp", "/var/tmp", "/dev/shm"]
    from nsctl.convert import convert

    assert checker.check_text(convert(checked.data, "x"), "namespace.yaml").issues == ()
    assert {line.split()[1] for line in commands.splitlines()} <= set(commands_of_cli())


def commands_of_cli() -> set[str]:
    return set(main.commands)
