"""End-to-end: the administrator's flow in headless Chromium (issue 20, item 4).

One `streamlit run app.py` for the module (tests/browser_support.py), run against a copy of
the registry in a temporary folder (XRAY_AI_REGISTRY), a temporary audit database
(XRAY_AI_AUDIT_DB) and an administrator password hash made by the README's own command,
`python -m xray_ai hash-password`, for a password this test knows
(XRAY_AI_ADMIN_PASSWORD_HASH). The repository's model_registry.json and audit logs are
never touched; the test checks that too.

As an administrator would: open the Model registry page from the sidebar, unlock editing
with a name and the password, switch one condition's active model to another registered
model of that condition, see the change in the page's audit log (the condition, the old and
the new model, the name), go to the Analyse page, upload an in-scope phantom of that
condition (examples/examples.json) and see the new model's id and version in the result.
The registry copy must hold exactly that change; back on the registry page, the table marks
the new model active and editing is still unlocked.

The copy holds every condition but only the models of the condition switched (their files
copied beside it: the registry resolves a model's `path` inside its own folder), so it stays
small. Timings go to test-artifacts/browser_admin_timings.json; no timing assertions.
Run: python -m pytest tests/test_browser_admin.py -q -s
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser_support import (ARTIFACTS, REPO, RESULT_TIMEOUT_MS, UI_TIMEOUT_MS, chromium_context, choose, expect,
                             nav_link, open_page, report_failure, streamlit_app, wait_until_idle)
from test_browser import PLACEHOLDER_BANNER, _file_input, _result_image  # the Analyse page's selectors

pytestmark = pytest.mark.browser

# ---------------------------------------------------------------------------------------
# Page texts: the one place to update when the pages change.
# ---------------------------------------------------------------------------------------
REGISTRY_PAGE, ANALYSE_PAGE = "Model registry", "Analyse"       # app.py's st.navigation titles
REGISTRY_HEADING, ANALYSE_HEADING = "Model registry", "Analyse a radiograph"
NAME_LABEL = "Your name (recorded in the audit log)"             # ui/admin.py
PASSWORD_LABEL = "Administrator password"
UNLOCK_BUTTON = "Unlock editing"
SWITCH_HEADING = "Switch the active model"                       # app_pages/registry.py
AUDIT_HEADING = "Audit log"
ACTIVATE_BUTTON = "Activate"
CONDITION_LABEL, MODEL_LABEL = "Condition", "Model"              # both pages' st.selectbox labels
PROVENANCE = "Input check:"                                      # ui.common.show_provenance
ARROW = r"\s*(?:->|→)\s*"  # the audit's "old -> new"; Streamlit's Markdown shows "->" as an arrow

ADMIN_NAME = "Dr Ada Admin (browser test)"
ADMIN_PASSWORD = "correct horse battery staple 20"
PREFERRED_CONDITION = "fracture"  # two tiers: the fast model active, the intensive one beside it (issue 20)


# ---------------------------------------------------------------------------------------
# The registry copy
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Switch:
    condition: str          # its id in the registry
    condition_name: str     # as the pages show it
    old_id: str
    new_id: str
    new_version: str
    phantom: Path           # an in-scope phantom of the condition
    registry: Path          # the copy the app runs on
    audit_db: Path
    before: dict            # the copy's JSON before the switch
    fixture_entry: bool     # whether new_id is a test-made copy of old_id
    new_kind: str = "classifier"  # the registry kind of new_id


def _single(entry: dict) -> bool:
    """An entry with a file of its own: a classifier or a measurement model, not an ensemble."""
    return entry.get("kind", "classifier") in ("single", "classifier", "measurement") and bool(entry.get("path"))


def _model_files(entry: dict) -> list[str]:
    """The entry's files, relative to the registry's folder: the model, its pinned ONNX export,
    and its side files (`<stem>.*` beside it: input check, body-part head, metrics...)."""
    model = Path(entry["path"])
    files = {model.as_posix()}
    if isinstance(entry.get("onnx"), dict) and entry["onnx"].get("path"):
        files.add(Path(entry["onnx"]["path"]).as_posix())
    folder = REPO / model.parent
    files |= {(model.parent / p.name).as_posix() for p in folder.glob(f"{model.stem}.*") if p.is_file()}
    return sorted(files)


def _copy_files(rel_paths: list[str], dest_root: Path, rename: tuple[str, str] | None = None) -> None:
    for rel in rel_paths:
        target = rel if rename is None else rel.replace(rename[0], rename[1])
        (dest_root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, dest_root / target)


def _pick(repo_registry: dict) -> tuple[str, str, str | None]:
    """(condition, active model, another real model of it or None): a condition that already
    has two single-file models with their files present, the preferred one first; else the
    preferred condition (or the first with an active model) and None."""
    models = repo_registry["models"]
    active = repo_registry["active_models"]
    order = [PREFERRED_CONDITION] + [c for c in repo_registry["conditions"] if c != PREFERRED_CONDITION]
    for cond in order:
        old = active.get(cond)
        if not old or not _single(models[old]) or not (REPO / models[old]["path"]).is_file():
            continue
        others = sorted(mid for mid, m in models.items()
                        if mid != old and m["condition"] == cond and _single(m) and (REPO / m["path"]).is_file())
        if others:
            return cond, old, others[0]
    cond = PREFERRED_CONDITION if PREFERRED_CONDITION in active else next(iter(active))
    return cond, active[cond], None


def _phantom_for(condition: str) -> Path:
    examples = json.loads((REPO / "examples" / "examples.json").read_text())["examples"]
    found = [e for e in examples if e.get("condition") == condition and e.get("kind") == "phantom"]
    found.sort(key=lambda e: not e.get("abnormal"))  # an abnormal one first: a finding to show
    assert found, f"examples/examples.json has no phantom for {condition}"
    return REPO / "examples" / found[0]["file"]


def _make_copy(root: Path) -> Switch:
    repo_registry = json.loads((REPO / "model_registry.json").read_text())
    cond, old_id, new_id = _pick(repo_registry)
    old = repo_registry["models"][old_id]
    models = {old_id: old}
    _copy_files(_model_files(old), root)
    fixture_entry = new_id is None
    if fixture_entry:
        # No condition has two registered models yet, and the switch needs two entries: a
        # byte-identical copy of the active model's files under another id and version
        # (same sha256, so it verifies and serves like the original). A legitimate fixture;
        # the id does not contain the old one, so the page's text tells them apart.
        new_id = f"{cond}-{old['architecture']}-copy"
        assert old_id not in new_id
        stem_old, stem_new = Path(old["path"]).stem, new_id
        new = json.loads(json.dumps(old))
        new["path"] = old["path"].replace(stem_old, stem_new)
        if isinstance(new.get("onnx"), dict):
            new["onnx"]["path"] = new["onnx"]["path"].replace(stem_old, stem_new)
        new["version"] = f"{old['version']}-copy"
        new["notes"] = f"Browser-test fixture: a copy of {old_id}'s files under another id and version."
        _copy_files(_model_files(old), root, rename=(stem_old, stem_new))
    else:
        new = repo_registry["models"][new_id]
        _copy_files(_model_files(new), root)
    models[new_id] = new
    copy = {
        "schema_version": repo_registry["schema_version"],
        "conditions": repo_registry["conditions"],  # all of them: the administrator picks one
        "models": models,                           # only the switched condition's: small
        "active_models": {cond: old_id},
    }
    registry = root / "model_registry.json"
    registry.write_text(json.dumps(copy, indent=2) + "\n")
    return Switch(cond, repo_registry["conditions"][cond]["name"], old_id, new_id, new["version"], _phantom_for(cond),
                  registry, root / "audit.sqlite3", json.loads(registry.read_text()), fixture_entry,
                  new.get("kind", "classifier"))


def _hash_password(password: str) -> str:
    """As the README says: `python -m xray_ai hash-password` (the password on standard input)."""
    out = subprocess.run([sys.executable, "-m", "xray_ai", "hash-password", "--stdin"], input=password + "\n",
                         capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def _repo_state() -> dict:
    """What the test must not change: the repository's registry and audit logs."""
    def digest(p: Path):
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None

    return {name: digest(REPO / name) for name in
            ("model_registry.json", "model_registry.json.bak", "model_registry.audit.sqlite3", "audit.sqlite3")}


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("admin_registry")
    switch = _make_copy(root)
    env = {
        "XRAY_AI_REGISTRY": str(switch.registry),
        "XRAY_AI_AUDIT_DB": str(switch.audit_db),
        "XRAY_AI_ADMIN_PASSWORD_HASH": _hash_password(ADMIN_PASSWORD),
    }
    with streamlit_app(ARTIFACTS / "browser_admin_streamlit.log", env) as server:
        yield server, switch


@pytest.fixture(scope="module")
def browser():
    with chromium_context() as context:
        yield context


# ---------------------------------------------------------------------------------------
# Page helpers
# ---------------------------------------------------------------------------------------
def _go_to(page, nav_title: str, heading: str) -> None:
    nav_link(page, nav_title).click()
    expect(page.get_by_test_id("stMain").get_by_role("heading", name=heading, exact=True)).to_be_visible()
    wait_until_idle(page)


def _section_after(page, heading: str):
    """The element block of the page that follows the subheader `heading` (its dataframe)."""
    return page.get_by_test_id("stMain").locator(
        f"xpath=//*[@data-testid='stHeading'][normalize-space()='{heading}']/ancestor::*"
        "[@data-testid='stElementContainer'][1]/following-sibling::*[@data-testid='stElementContainer'][1]")


def _grid(dataframe):
    # st.dataframe draws on a canvas; its accessible table (rendered while it is on screen)
    # holds the cells as text.
    return dataframe.locator("table[role=grid]")


def _grid_rows(page, dataframe) -> list[list[str]]:
    """The dataframe's rows as cell texts (header row left out), after scrolling it into view."""
    for attempt in range(3):  # a rerun may replace the element while it is scrolled to
        try:
            dataframe.scroll_into_view_if_needed(timeout=UI_TIMEOUT_MS)
            break
        except Exception:
            if attempt == 2:
                raise
            wait_until_idle(page)
    expect(_grid(dataframe)).to_have_count(1)
    return _grid(dataframe).evaluate(
        "t => [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()))")


def _wait_for_grid_text(page, dataframe, pattern) -> list[list[str]]:
    """The rows once a row matches `pattern` (the page may still show the previous run's table)."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        rows = _grid_rows(page, dataframe)
        if any(pattern.search(" | ".join(r)) for r in rows) or time.monotonic() > deadline:
            return rows
        page.wait_for_timeout(250)


def _active_column(rows: list[list[str]], header: list[str]) -> dict[str, str]:
    """model id -> the table's "active" cell ("true"/"false")."""
    return {r[header.index("model id")]: r[header.index("active")] for r in rows if len(r) == len(header)}


def _header(dataframe) -> list[str]:
    return _grid(dataframe).evaluate(
        "t => [...t.querySelectorAll('thead th')].map(c => c.innerText.trim())")


def _standalone(model_id: str):
    return re.compile(rf"(?<![\w.-]){re.escape(model_id)}(?![\w.-])")


TIMINGS: dict = {}


def test_an_administrator_switches_the_active_model_and_the_analysis_uses_it(browser, admin_app):
    server, sw = admin_app
    repo_before = _repo_state()
    t_start = time.perf_counter()
    page, console = open_page(browser, server)
    try:
        main = page.get_by_test_id("stMain")

        # 1. The registry page, read-only until unlocked.
        _go_to(page, REGISTRY_PAGE, REGISTRY_HEADING)
        expect(main.get_by_role("heading", name=SWITCH_HEADING)).to_have_count(0)
        table = main.get_by_test_id("stDataFrame").first  # the models table comes first
        rows = _grid_rows(page, table)
        header = _header(table)
        assert header[:3] == ["model id", "condition", "active"], header
        active = _active_column(rows, header)
        assert active == {sw.old_id: "true", sw.new_id: "false"}, active

        t0 = time.perf_counter()
        main.get_by_label(NAME_LABEL).fill(ADMIN_NAME)
        main.get_by_label(PASSWORD_LABEL).fill(ADMIN_PASSWORD)
        main.get_by_role("button", name=UNLOCK_BUTTON).click()
        expect(main.get_by_role("heading", name=SWITCH_HEADING)).to_be_visible()
        wait_until_idle(page)
        TIMINGS["unlock_s"] = round(time.perf_counter() - t0, 2)

        # 2. Switch the condition's active model.
        choose(page, CONDITION_LABEL, sw.condition_name)
        model_box = main.get_by_role("combobox", name=MODEL_LABEL, exact=True)
        expect(model_box).to_have_value(f"{sw.old_id} (active)")  # starts at the active model, marked so
        choose(page, MODEL_LABEL, sw.new_id)
        expect(model_box).to_have_value(sw.new_id)
        wait_until_idle(page)
        main.get_by_role("button", name=ACTIVATE_BUTTON, exact=True).click()
        change = re.compile(rf"active_models\.{re.escape(sw.condition)}: '{re.escape(sw.old_id)}'{ARROW}"
                            rf"'{re.escape(sw.new_id)}'")
        expect(main.get_by_test_id("stAlertContentSuccess").filter(has_text=change)).to_be_visible()
        wait_until_idle(page)
        expect(model_box).to_have_value(f"{sw.new_id} (active)")  # the picker marks the new one now

        # The registry copy holds exactly that change (and its previous version as .bak).
        after = json.loads(sw.registry.read_text())
        assert after["active_models"] == {**sw.before["active_models"], sw.condition: sw.new_id}
        assert {k: v for k, v in after.items() if k != "active_models"} == \
               {k: v for k, v in sw.before.items() if k != "active_models"}
        backup = json.loads(sw.registry.with_name(sw.registry.name + ".bak").read_text())
        assert backup["active_models"][sw.condition] == sw.old_id

        # 3. The audit log on the same page: the switch, by name, and the login before it.
        audit = _section_after(page, AUDIT_HEADING)
        expect(audit.get_by_test_id("stDataFrame")).to_have_count(1)
        rows = _wait_for_grid_text(page, audit, change)
        audit_header = _header(audit)
        assert audit_header == ["time", "user", "action", "changes"], audit_header
        records = [dict(zip(audit_header, r)) for r in rows]
        switched = [r for r in records if r["action"] == "activate"]
        assert len(switched) == 1, records
        assert switched[0]["user"] == ADMIN_NAME
        assert change.search(switched[0]["changes"]), switched[0]
        assert [r["user"] for r in records if r["action"] == "login"] == [ADMIN_NAME], records
        assert records[0] == switched[0], "the newest record comes first"
        # ... kept where XRAY_AI_AUDIT_DB says, not beside the registry copy
        with contextlib.closing(sqlite3.connect(sw.audit_db)) as con:
            stored = con.execute("SELECT user, action FROM audit ORDER BY id").fetchall()
        assert stored == [(ADMIN_NAME, "login"), (ADMIN_NAME, "activate")], stored
        assert not sw.registry.with_name(sw.registry.stem + ".audit.sqlite3").exists()

        # 4. The Analyse page: the condition's model is now the new one, and a phantom's
        #    result names it.
        _go_to(page, ANALYSE_PAGE, ANALYSE_HEADING)
        choose(page, CONDITION_LABEL, sw.condition_name)
        expect(main.get_by_role("combobox", name=MODEL_LABEL, exact=True)).to_have_value(
            re.compile(rf"^{re.escape(sw.new_id)} \("))  # "<id> (<profile>)"
        wait_until_idle(page)
        t0 = time.perf_counter()
        _file_input(page).set_input_files(str(sw.phantom))
        provenance = main.get_by_test_id("stMarkdown").filter(has_text=PROVENANCE)
        expect(provenance).to_contain_text(f"Model {sw.new_id} v{sw.new_version}", timeout=RESULT_TIMEOUT_MS)
        expect(_result_image(page, sw.phantom.name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        TIMINGS["analysis_s"] = round(time.perf_counter() - t0, 2)
        assert not _standalone(sw.old_id).search(provenance.inner_text()), provenance.inner_text()
        expect(main.get_by_text(PLACEHOLDER_BANNER)).to_have_count(0)  # the copy verifies and serves
        expect(main.get_by_test_id("stMetric").first).to_be_visible()  # an in-scope phantom: a decision
        if sw.new_kind == "measurement":  # the CTR U-Net: the measurement is the main figure
            expect(main.get_by_test_id("stMetric").first).to_contain_text(re.compile("cardiothoracic ratio", re.I))

        # 5. Back on the registry page: still unlocked, the table marks the new model active.
        _go_to(page, REGISTRY_PAGE, REGISTRY_HEADING)
        expect(main.get_by_role("heading", name=SWITCH_HEADING)).to_be_visible()
        table = main.get_by_test_id("stDataFrame").first
        active = _active_column(_grid_rows(page, table), _header(table))
        assert active == {sw.old_id: "false", sw.new_id: "true"}, active
        TIMINGS["flow_s"] = round(time.perf_counter() - t_start, 2)
    except BaseException:
        report_failure(page, console, server, ARTIFACTS / "browser_admin_failure.png")
        raise
    finally:
        page.close()
        TIMINGS.update(condition=sw.condition, old_model=sw.old_id, new_model=sw.new_id,
                       fixture_entry=sw.fixture_entry)
        (ARTIFACTS / "browser_admin_timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
        print(f"\nadmin flow: {TIMINGS}")
    assert _repo_state() == repo_before, "the repository's registry or audit log changed"
