"""The administrator gate (issue 18): hash policy, growing delay, lockout, audit, idle expiry,
plain-text errors, `hash-password` on empty input, and how a threshold edit is recorded."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO
from xray_ai import auth
from xray_ai.registry import read_audit_log

T0 = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
HASH = auth.hash_password("s3cret", iterations=auth.MIN_ITERATIONS)


@pytest.fixture()
def registry(tiny_registry, monkeypatch):
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tiny_registry.parent / "audit.sqlite3"))
    return tiny_registry


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# --------------------------------------------------------------------------- the hash


def test_a_hash_below_the_minimum_iteration_count_is_refused_clearly():
    weak = "pbkdf2_sha256$1$" + "00" * 16 + "$" + "11" * 32
    with pytest.raises(ValueError, match="1 PBKDF2 iterations, below the minimum of 100,000"):
        auth.verify_password("x", weak)
    with pytest.raises(ValueError, match="iterations must be in"):
        auth.hash_password("x", iterations=1000)
    assert auth.verify_password("s3cret", HASH) and not auth.verify_password("wrong", HASH)


def test_a_hash_mangled_by_an_unquoted_shell_export_says_to_quote_it():
    shell = ("export XRAY_AI_ADMIN_PASSWORD_HASH={v}; printf %s \"$XRAY_AI_ADMIN_PASSWORD_HASH\"")
    unquoted = subprocess.run(["bash", "-c", shell.format(v=HASH)], capture_output=True, text=True).stdout
    quoted = subprocess.run(["bash", "-c", shell.format(v=f"'{HASH}'")], capture_output=True, text=True).stdout
    assert quoted == HASH and unquoted != HASH  # what the README's single quotes are for
    with pytest.raises(ValueError, match="single quotes"):
        auth.verify_password("s3cret", unquoted)


# --------------------------------------------------------------------------- throttling


def test_failures_grow_a_delay_then_lock_out_and_all_is_audited(registry):
    first = auth.attempt_login("Mallory", "guess1", HASH, registry, now=at(0))
    assert not first.ok and first.checked and first.wait_s == 0  # a typo costs nothing
    second = auth.attempt_login("Mallory", "guess2", HASH, registry, now=at(0))
    assert not second.ok and second.checked and second.wait_s == 2
    early = auth.attempt_login("Mallory", "s3cret", HASH, registry, now=at(1))
    assert not early.ok and not early.checked and "wait" in early.message  # refused unchecked, even if right
    t = 2.0
    for expected_wait in (4, 8):
        result = auth.attempt_login("Mallory", "guess", HASH, registry, now=at(t))
        assert result.checked and result.wait_s == expected_wait, result
        t += expected_wait
    fifth = auth.attempt_login("Mallory", "guess5", HASH, registry, now=at(t))
    assert fifth.checked and "locked for 15 min" in fifth.message
    during = auth.attempt_login("Alice", "s3cret", HASH, registry, now=at(t + 600))
    assert not during.ok and not during.checked and "locked" in during.message and "5 min" in during.message
    after = auth.attempt_login("Alice", "s3cret", HASH, registry, now=at(t + auth.LOCKOUT_S + 1))
    assert after.ok and after.name == "Alice"
    log = list(reversed(read_audit_log(registry)))
    actions = [(e["action"], e["user"]) for e in log]
    assert actions == [(auth.FAILED, "Mallory")] * 5 + [(auth.LOCKED, "Mallory"), (auth.SUCCEEDED, "Alice")]
    assert log[0]["time"] == "2026-12-01T12:00:00+00:00" and "as 'Mallory'" in log[0]["changes"][0]
    # a success resets the count: the next failure costs nothing again
    again = auth.attempt_login("Alice", "typo", HASH, registry, now=at(t + auth.LOCKOUT_S + 2))
    assert again.checked and again.wait_s == 0


def test_parallel_guesses_are_serialised_and_throttled(registry, monkeypatch):
    """16 threads guessing at once: attempts run one at a time, so only the first two are
    checked before the delay refuses the rest unchecked."""
    checked = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda p, s: checked.append(p) or real(p, s))
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(auth.attempt_login(f"bot{i}", f"g{i}", HASH,
                                                                                      registry)))
               for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16 and not any(r.ok for r in results)
    assert len(checked) == 2 and sum(r.checked for r in results) == 2
    assert [e["action"] for e in read_audit_log(registry)] == [auth.FAILED, auth.FAILED]


def test_no_name_is_no_attempt(registry):
    result = auth.attempt_login("  ", "s3cret", HASH, registry, now=at(0))
    assert not result.ok and not result.checked and "Enter your name" in result.message
    assert read_audit_log(registry) == []


# --------------------------------------------------------------------------- the page


def _page():
    return AppTest.from_file(str(REPO / "app_pages" / "registry.py"), default_timeout=120)


def _unlock(page, name="Dr Admin", password="s3cret"):
    page.text_input(key="admin.name_input").set_value(name)
    page.text_input(key="admin.password").set_value(password)
    page.button[0].click().run()
    return page


@pytest.fixture()
def page_env(registry, monkeypatch):
    monkeypatch.setenv("XRAY_AI_REGISTRY", str(registry))
    monkeypatch.setenv("XRAY_AI_ADMIN_PASSWORD_HASH", HASH)
    return registry


def test_the_unlock_expires_after_an_idle_period(page_env):
    page = _unlock(_page().run())
    assert not page.exception and "registry.save" in [b.key for b in page.button]
    page.session_state["admin.last_seen"] -= auth.UNLOCK_IDLE_S + 1  # as if idle for too long
    page.run()
    assert "registry.save" not in [b.key for b in page.button]
    assert "locked again" in " ".join(i.value for i in page.info)


def test_a_bad_configured_hash_is_shown_as_plain_text(page_env, monkeypatch):
    monkeypatch.setenv("XRAY_AI_ADMIN_PASSWORD_HASH", "pbkdf2_sha25600000abc")  # what an unquoted export leaves
    page = _unlock(_page().run())
    error = " ".join(e.value for e in page.error)
    assert "\\$ITERATIONS\\$" in error and "$ITERATIONS$" not in error.replace("\\$", "")  # no LaTeX
    assert "single quotes" in error


def test_a_changed_threshold_needs_how_it_was_chosen_and_records_it(page_env):
    page = _unlock(_page().run())
    page.number_input(key="registry.t.tiny-test").set_value(0.3)
    page.button(key="registry.save").click().run()
    assert "say how the new one was chosen" in " ".join(e.value for e in page.error)
    assert json.loads(page_env.read_text())["models"]["tiny-test"]["threshold"] == 0.5  # not saved
    page.text_input(key="registry.m.tiny-test").set_value("Youden's J on the validation split")
    page.button(key="registry.save").click().run()
    saved = json.loads(page_env.read_text())["models"]["tiny-test"]
    assert saved["threshold"] == 0.3 and saved["threshold_method"] == "Youden's J on the validation split"
    changes = read_audit_log(page_env)[0]["changes"]
    assert any("threshold_method" in c and "Youden" in c for c in changes), changes


def test_file_names_and_registry_text_are_plain_text():
    sys.path.insert(0, str(REPO))
    from ui.text import plain

    hostile = "**x**[link](http://example.org).png $E=mc^2$ :red[alert] <b>b</b>"
    escaped = plain(hostile)
    import re

    assert re.search(r"(?<!\\)[*\[\]()$<:]", escaped) is None, escaped  # every active character escaped
    assert escaped.replace("\\", "") == hostile  # nothing is lost, only escaped
    assert plain("threshold: 0.5 -> 0.3").endswith("0.5 -> 0.3") and plain("- a") == "\\- a"


# --------------------------------------------------------------------------- hash-password


@pytest.mark.parametrize("args, stdin", [([], ""), (["--stdin"], ""), (["--stdin"], "\n")])
def test_hash_password_on_empty_input_fails_clearly(args, stdin):
    done = subprocess.run([sys.executable, "-m", "xray_ai", "hash-password", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr and "EOFError" not in done.stderr
    assert "empty" in done.stderr


def test_hash_password_from_a_pipe_makes_a_usable_hash():
    done = subprocess.run([sys.executable, "-m", "xray_ai", "hash-password", "--stdin"], input="s3cret\n",
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0 and auth.verify_password("s3cret", done.stdout.strip())
    assert "single quotes" in done.stderr
