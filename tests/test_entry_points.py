"""new_event_loop, Loop, EventLoopPolicy, install, run, Runner and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import ferroloop


def test_new_event_loop_is_an_asyncio_loop():
    loop = ferroloop.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert repr(loop) == "<ferroloop.Loop running=False closed=False debug=False>"
    finally:
        loop.close()


def test_run_returns_result_and_honours_debug():
    async def main():
        loop = asyncio.get_running_loop()
        return type(loop), loop.get_debug()

    assert ferroloop.run(main()) == (ferroloop.Loop, False)
    assert ferroloop.run(main(), debug=True) == (ferroloop.Loop, True)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in Python 3.11")
def test_asyncio_runner_with_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(main()) is ferroloop.Loop
        assert runner.get_loop().is_running() is False


def test_install_makes_asyncio_run_use_ferroloop():
    previous = asyncio.get_event_loop_policy()
    try:
        ferroloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)

        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is ferroloop.Loop
        loop = asyncio.new_event_loop()
        assert isinstance(loop, ferroloop.Loop)
        loop.close()
    finally:
        asyncio.set_event_loop_policy(previous)
        ferroloop._takeover.uninstall()


def test_debug_mode_from_environment():
    code = "import asyncio, ferroloop\nasync def m(): return asyncio.get_running_loop().get_debug()\nprint(ferroloop.run(m()))"
    env_out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONASYNCIODEBUG": "1"}, capture_output=True, text=True
    )
    dev_out = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True)
    assert env_out.stdout.strip() == "True", env_out.stderr
    assert dev_out.stdout.strip() == "True", dev_out.stderr


def test_cli_runs_script_as_main_with_argv(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            async def main():
                loop = asyncio.get_running_loop()
                print(__name__, sys.argv[1:], type(loop).__module__ + "." + type(loop).__qualname__)
            asyncio.run(main())
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "ferroloop", str(script), "a", "--flag"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "__main__ ['a', '--flag'] ferroloop.Loop"


def test_cli_version_and_missing_script(tmp_path):
    version = subprocess.run([sys.executable, "-m", "ferroloop", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"ferroloop {ferroloop.__version__}"
    missing = subprocess.run(
        [sys.executable, "-m", "ferroloop", str(tmp_path / "nope.py")], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "can't open file" in missing.stderr


def test_cli_exit_code_and_exception_propagate(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import asyncio\nasync def main():\n    raise SystemExit(7)\nasyncio.run(main())\n")
    result = subprocess.run([sys.executable, "-m", "ferroloop", str(script)], capture_output=True, text=True)
    assert result.returncode == 7


def test_cli_runs_a_module_with_dash_m(tmp_path):
    package = tmp_path / "greeter"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import asyncio, sys\n"
        "async def main():\n"
        "    print(__name__, sys.argv[1:], type(asyncio.get_running_loop()).__name__)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ferroloop", "-m", "greeter", "x", "y"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "__main__ ['x', 'y'] Loop"


def test_cli_without_a_program_explains_usage():
    result = subprocess.run([sys.executable, "-m", "ferroloop"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "give a script to run" in result.stderr


def _cli(*arguments: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferroloop", *arguments], capture_output=True, text=True, timeout=60, **kwargs)


def _python(*arguments: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=60, **kwargs)


def test_cli_options_after_the_module_are_the_modules():
    ours = _cli("-m", "json.tool", "--help")
    stock = _python("-m", "json.tool", "--help")
    assert ours.returncode == stock.returncode == 0, ours.stderr
    assert ours.stdout == stock.stdout and "usage: python -m json.tool" in ours.stdout


def test_cli_runs_code_given_with_dash_c():
    code = "import asyncio, sys\nasync def main(): return type(asyncio.get_running_loop()).__name__\nprint(sys.argv, asyncio.run(main()))"
    result = _cli("-c", code, "a", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['-c', 'a', '-q'] Loop"


def test_cli_errors_read_as_pythons(tmp_path):
    for arguments in (("-m", "nosuchmodule_for_ferroloop"), (str(tmp_path / "nope.py"),)):
        ours, stock = _cli(*arguments), _python(*arguments)
        assert (ours.returncode, ours.stderr) == (stock.returncode, stock.stderr)
        assert len(ours.stderr.splitlines()) == 1


def test_cli_traceback_starts_in_the_program(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("def fail():\n    raise ValueError('boom')\nfail()\n")
    ours, stock = _cli(str(script)), _python(str(script))
    assert ours.returncode == stock.returncode == 1
    assert ours.stderr == stock.stderr
    assert "ferroloop" not in ours.stderr and "runpy" not in ours.stderr


def test_cli_ps_checks_its_pid():
    result = _cli("ps", "abc")
    assert result.returncode == 2
    assert "not a process id: 'abc'" in result.stderr


def test_cli_usage_errors_exit_2_and_ps_names_a_process_that_is_gone():
    assert _cli("-x").returncode == 2
    assert _cli("-m").returncode == 2
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    result = _cli("ps", str(gone.pid))
    assert result.returncode == 1
    assert f"process {gone.pid} is not running" in result.stderr


def test_cli_cancel_checks_its_arguments_and_names_a_process_that_is_gone():
    assert _cli("cancel", "abc", "task").returncode == 2
    missing_task = _cli("cancel", "1")
    assert missing_task.returncode == 2 and "the following arguments are required: task" in missing_task.stderr
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    result = _cli("cancel", str(gone.pid), "worker")
    assert result.returncode == 1
    assert result.stderr == f"python -m ferroloop cancel: process {gone.pid} is not running\n"


def test_cli_help_lists_the_inspection_commands():
    result = _cli("--help")
    assert result.returncode == 0
    for line in ("python -m ferroloop ps PID", "python -m ferroloop cancel PID TASK", "ferroloop.allow_attach"):
        assert line in result.stdout


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="the refusal is for versions without sys.remote_exec")
def test_cli_remote_exec_needs_python_3_14():
    result = _cli("ps", str(os.getpid()), "--remote-exec")
    assert result.returncode == 2
    assert "--remote-exec needs Python 3.14 or later (sys.remote_exec)" in result.stderr
