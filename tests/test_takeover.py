"""ferroloop.install() makes the libraries that choose their own loop choose
ferroloop, and reports loops of other kinds (in-process checks; the servers
themselves are in test_servers_loop.py). Each case runs in a child process:
install() patches process-wide state."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_uvicorn_auto_and_asyncio_choose_ferroloop_but_uvloop_stays() -> None:
    result = run(
        """
        import ferroloop
        ferroloop.install()
        from uvicorn.config import Config
        for choice in ("auto", "asyncio", "uvloop"):
            loop = Config(app=None, loop=choice).get_loop_factory()()
            print(choice, type(loop).__module__)
            loop.close()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["auto ferroloop", "asyncio ferroloop", "uvloop uvloop"]


def test_a_library_imported_before_install_is_patched_too() -> None:
    result = run(
        """
        import granian._loops as loops
        import ferroloop
        ferroloop.install()
        loop = loops.loops.get("auto")
        print(type(loop).__module__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ferroloop"


def test_sanic_keeps_ferroloop_unless_uvloop_is_asked_for() -> None:
    result = run(
        """
        import asyncio, ferroloop
        ferroloop.install()
        from sanic import Sanic
        app = Sanic("t")
        app.setup_loop()
        print(type(asyncio.get_event_loop_policy()).__module__)
        app.config.USE_UVLOOP = True
        app.setup_loop()
        print(type(asyncio.get_event_loop_policy()).__module__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ferroloop", "uvloop"]


def test_a_loop_of_another_kind_is_reported_once_with_who_started_it() -> None:
    result = run(
        """
        import asyncio, ferroloop
        ferroloop.install()
        def start_stock_loop():
            for _ in range(3):
                loop = asyncio.SelectorEventLoop()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()
        start_stock_loop()
        asyncio.run(asyncio.sleep(0))
        """
    )
    assert result.returncode == 0, result.stderr
    reports = [line for line in result.stderr.splitlines() if line.startswith("ferroloop:")]
    assert len(reports) == 1, result.stderr
    assert "_UnixSelectorEventLoop, started by __main__ (<string>:" in reports[0]
    assert "ferroloop.new_event_loop()" in reports[0]


def test_a_library_whose_loop_choice_changed_is_named_on_stderr() -> None:
    result = run(
        """
        import sys, types, ferroloop
        fake = types.ModuleType("uvicorn.config")  # no LOOP_FACTORIES / LOOP_SETUPS
        sys.modules["uvicorn.config"] = fake
        ferroloop.install()
        ferroloop.install()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ferroloop: cannot make uvicorn") == 1, result.stderr
    assert "uvicorn --loop ferroloop:new_event_loop" in result.stderr


def test_ferroloop_pth_does_nothing_without_the_variable() -> None:
    result = run("import sys; print('ferroloop' in sys.modules)")
    assert result.stdout.strip() == "False"
