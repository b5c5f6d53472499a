"""The notebook widgets against real sessions on a real room server (no browser).

Buttons are clicked with ``button.click()``; what the browser would send (drops,
notification clicks) is fed to the widgets' comms as the kernel would receive it.
"""

from __future__ import annotations

import os
import time

import ipywidgets as widgets
import pytest
from helpers import sparse_file, wait_until

from ivisit_nb import events as ev
from ivisit_nb.sharing.inbox import Item
from ivisit_nb.widgets import (
    Bridge,
    DataBox,
    OfferDialog,
    Panel,
    ProgressList,
    Pump,
    ReceiveToggle,
    Roster,
    SettingsPanel,
    Viewer,
    choice_labels,
    frontend,
    preview,
)
from ivisit_nb.widgets.pump import PROGRESS_INTERVAL




@pytest.fixture
def panel(pair):
    p = pair[1].ui()
    yield p
    p.close()


def make_file(path, size: int):
    path.write_bytes(os.urandom(size))
    return path


def frontend_msg(widget, content, buffers=()):
    """Deliver a custom message to ``widget`` as if the browser sent it."""
    widget.comm.handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": list(buffers)})


def card_for(panel, timeout=10.0):
    return wait_until(lambda: list(panel.offers.cards.values())[:1], timeout)[0]


# -- the panel and the roster -----------------------------------------------------------
def test_panel_has_every_part(pair, panel):
    alice, bob = pair
    assert isinstance(panel, Panel)
    assert [type(p) for p in (panel.receive, panel.roster, panel.offers, panel.progress, panel.viewer)] == [
        ReceiveToggle, Roster, OfferDialog, ProgressList, Viewer,
    ]
    tile = panel.roster.tiles["alice"]
    assert isinstance(tile.root, DataBox)
    assert "ivisit-tile" in tile.root._dom_classes
    assert tile.root.data == {"user": "alice"}
    wait_until(lambda: "connected" in tile.state.value)
    sas = bob.peers["alice"].sas
    assert sas and sas in tile.sas.value
    assert sas == alice.peers["bob"].sas


def test_reception_button_blocks_and_unblocks(pair, panel, tmp_path):
    alice, bob = pair
    tile = panel.roster.tiles["alice"]
    assert tile.reception.description == "Receiving from alice"
    tile.reception.click()
    assert bob.settings["alice"].blocked is True
    assert tile.reception.description == "Blocked: alice"
    t = alice.send_file(make_file(tmp_path / "x.bin", 10), to="bob")
    assert t.wait(10) == "refused"
    assert t.reason == "bob has blocked files and URLs from alice"
    tile.reception.click()
    assert bob.settings["alice"].blocked is False
    # a change made from code shows too
    bob.settings["alice"].blocked = True
    wait_until(lambda: tile.reception.description == "Blocked: alice", 3)


def test_settings_arrow_opens_user_settings(pair, panel):
    alice, bob = pair
    tile = panel.roster.tiles["alice"]
    tile.arrow.click()
    settings = tile.settings_panel
    assert isinstance(settings, SettingsPanel) and settings in tile.children
    assert list(settings.choices) == ["calls", "messages", "files", "urls"]
    settings.choices["files"].value = "accept"
    settings.choices["calls"].value = "refuse"
    assert bob.settings["alice"].files == "accept" and bob.settings["alice"].calls == "refuse"
    bob.settings["alice"].urls = "refuse"
    wait_until(lambda: settings.choices["urls"].value == "refuse", 3)
    tile.arrow.click()
    assert tile.settings_panel is None


def test_receive_toggle(pair, panel):
    alice, bob = pair
    assert panel.receive.checkbox.description == "Receive files and URLs"
    assert panel.receive.checkbox.value is True
    panel.receive.checkbox.value = False
    assert bob.receiving is False
    bob.receiving = True
    wait_until(lambda: panel.receive.checkbox.value is True, 3)


# -- the four choices ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "index, status, setting",
    [(0, "done", "accept"), (1, "done", None), (2, "refused", "refuse"), (3, "refused", None)],
)
def test_the_four_choices_act_on_real_offers(pair, panel, tmp_path, index, status, setting):
    alice, bob = pair
    t = alice.send_file(make_file(tmp_path / "one.txt", 1000), to="bob")
    card = card_for(panel)
    assert [b.description for b in card.buttons] == [
        "Accept always from alice", "Accept this file", "Refuse always from alice", "Refuse this file",
    ]
    assert "one.txt" in card.text.value and "alice" in card.text.value and "1K" in card.text.value
    assert card.root.data["transfer"] == t.transfer_id
    card.buttons[index].click()
    assert t.wait(10) == status
    assert card_gone(panel)
    if setting is None:
        assert not bob.settings.has_own("alice", "files")
    else:
        assert bob.settings["alice"].files == setting


def card_gone(panel):
    return wait_until(lambda: not panel.offers.cards, 5)


def test_url_offers_say_url_and_offers_queue(pair, panel):
    alice, bob = pair
    u1 = alice.send_url("https://example.org/a", to="bob")
    u2 = alice.send_url("https://example.org/b", to="bob")
    wait_until(lambda: len(panel.offers.cards) == 2)
    first, second = panel.offers.cards.values()
    assert [b.description for b in first.buttons][1::2] == ["Accept this URL", "Refuse this URL"]
    assert "https://example.org/a" in first.text.value and "https://example.org/b" in second.text.value
    second.buttons[3].click()
    assert u2.wait(10) == "refused"
    first.buttons[1].click()
    assert u1.wait(10) == "done"
    wait_until(lambda: bob.inbox.current is not None and bob.inbox.current.url == "https://example.org/a")


def test_notification_click_decides_and_answered_offers_are_dismissed(pair, panel, tmp_path):
    alice, bob = pair
    bridge = panel.offers.bridge
    assert isinstance(bridge, Bridge)
    t = alice.send_file(make_file(tmp_path / "n.txt", 10), to="bob")
    card = card_for(panel)
    key = f"offer-{t.transfer_id}"
    message, actions, _cb = bridge._notes[key]
    assert message == "alice offers n.txt (1K)" and actions == choice_labels(card.request)
    frontend_msg(bridge, {"event": "action", "key": key, "index": 1})  # "Accept this file" in the notification
    assert t.wait(10) == "done"
    card_gone(panel)
    # answered inline: the notification goes
    t2 = alice.send_file(make_file(tmp_path / "m.txt", 10), to="bob")
    card = card_for(panel)
    assert f"offer-{t2.transfer_id}" in bridge._notes
    card.buttons[3].click()
    assert f"offer-{t2.transfer_id}" not in bridge._notes
    assert t2.wait(10) == "refused"


def test_offer_timeout_removes_the_card(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob", offer_timeout=1.0)
    bob.wait_for_peers(timeout=30).wait()
    bob.receiving = True
    dialog = OfferDialog(bob)
    t = alice.send_file(make_file(tmp_path / "x.bin", 10), to="bob")
    wait_until(lambda: dialog.cards)
    assert t.wait(10) == "refused" and t.reason == "bob did not answer within 1 s"
    wait_until(lambda: not dialog.cards, 5)
    assert not dialog.bridge._notes
    dialog.close()


# -- progress -----------------------------------------------------------------------------------
def slow_transfer(alice, bob, tmp_path, size=1 << 30):
    """1 GiB (sparse) on the direct lane: seconds, so a click lands mid-transfer."""
    bob.settings["alice"].files = "accept"
    t = alice.send_file(sparse_file(tmp_path / "slow.bin", size), to="bob")
    incoming = wait_until(lambda: bob.sharing.transfers.get(t.transfer_id), 10)
    return t, incoming


def test_progress_line_reaches_100_percent(pair, panel, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    t = alice.send_file(make_file(tmp_path / "report.pdf", 1_228_800), to="bob")
    assert t.wait(30) == "done"
    line = wait_until(lambda: panel.progress.lines.get(t.transfer_id), 5)
    wait_until(lambda: "done" in line.rate.value, 5)
    assert "Transferring report.pdf from alice, 100% of 1200K received" in line.text.value
    assert line.bar.value == 1.0 and line.stop.disabled
    assert line.root.data == {"transfer": t.transfer_id, "direction": "in", "peer": "alice"}


def test_stop_button_cancels(pair, panel, tmp_path):
    alice, bob = pair
    t, incoming = slow_transfer(alice, bob, tmp_path)
    line = wait_until(lambda: panel.progress.lines.get(t.transfer_id), 10)
    assert line.text.value.startswith("<span>Transferring slow.bin from alice, ")
    line.stop.click()
    assert incoming.wait(10) == "cancelled" and t.wait(10) == "cancelled"
    assert t.reason == "bob pressed Stop"
    wait_until(lambda: "cancelled" in line.rate.value, 5)


def test_progress_is_throttled(pair, tmp_path):
    alice, bob = pair
    seen: dict[str, list[float]] = {}
    Pump.of(bob).listen(
        lambda e: seen.setdefault(e.transfer.transfer_id, []).append(time.monotonic())
        if isinstance(e, ev.TransferProgress) else None
    )
    t, incoming = slow_transfer(alice, bob, tmp_path, size=20_000_000)
    assert t.wait(60) == "done"
    time.sleep(0.3)
    stamps = seen[t.transfer_id]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(g >= PROGRESS_INTERVAL * 0.9 for g in gaps[:-1]), gaps  # the last one may be the final flush


# -- the viewer ----------------------------------------------------------------------------------
def send_accepted(alice, bob, path):
    bob.settings["alice"].files = "accept"
    assert alice.send_file(path, to="bob").wait(20) == "done"


def test_viewer_back_forward_pause_and_selector(pair, panel, tmp_path):
    alice, bob = pair
    viewer = panel.viewer
    for name in ("a.txt", "b.txt", "c.txt"):
        send_accepted(alice, bob, make_file(tmp_path / name, 50))
    wait_until(lambda: "c.txt" in viewer.title.value)
    assert "(3 of 3)" in viewer.title.value
    viewer.back.click()
    assert bob.inbox.current.name == "b.txt" and "b.txt" in viewer.title.value
    viewer.back.click()
    assert bob.inbox.current.name == "a.txt" and viewer.back.disabled
    viewer.forward.click()
    assert bob.inbox.current.name == "b.txt"
    assert [label for label, _ in viewer.selector.options] == ["1. a.txt — alice", "2. b.txt — alice", "3. c.txt — alice"]
    viewer.selector.value = 2
    assert bob.inbox.current.name == "c.txt"
    # Pause holds the current item while new ones arrive
    viewer.pause.value = True
    assert bob.inbox.paused
    send_accepted(alice, bob, make_file(tmp_path / "d.txt", 50))
    wait_until(lambda: len(viewer.selector.options) == 4)
    assert bob.inbox.current.name == "c.txt" and "paused, 1 new" in viewer.title.value
    viewer.forward.click()
    assert bob.inbox.current.name == "d.txt"
    viewer.pause.value = False
    assert not bob.inbox.paused


def test_viewer_close_button_cancels_receives(pair, panel, tmp_path):
    alice, bob = pair
    t, incoming = slow_transfer(alice, bob, tmp_path)
    wait_until(lambda: incoming.received > 0, 10)
    panel.viewer.close_button.click()
    assert incoming.wait(10) == "cancelled" and t.wait(10) == "cancelled"
    assert "closed the Sharing viewer" in t.reason
    assert "Viewer closed" in panel.viewer.title.value
    send_accepted(alice, bob, make_file(tmp_path / "next.txt", 10))  # the next item opens it again
    wait_until(lambda: "next.txt" in panel.viewer.title.value, 5)


def test_closing_the_viewer_widget_cancels_receives(pair, tmp_path):
    alice, bob = pair
    viewer = Viewer(bob)
    t, incoming = slow_transfer(alice, bob, tmp_path)
    wait_until(lambda: incoming.received > 0, 10)
    viewer.close()
    assert incoming.wait(10) == "cancelled"
    assert bob.inbox.closed


def test_viewer_stop_and_load_files_fallback(pair, panel, tmp_path):
    alice, bob = pair
    t, incoming = slow_transfer(alice, bob, tmp_path)
    wait_until(lambda: incoming.received > 0, 10)
    panel.viewer.stop.click()
    assert incoming.wait(10) == "cancelled" and t.wait(10) == "cancelled"
    assert "pressed Stop in the Sharing viewer" in t.reason
    # No browser has said hello to the bridge, so Load files shows the path box.
    panel.viewer.load.click()
    assert panel.viewer.load_row.layout.display == "flex"
    local = tmp_path / "local.csv"
    local.write_text("a,b\n1,2\n3,4\n")
    panel.viewer.path.value = str(local)
    panel.viewer.open_path.click()
    assert bob.inbox.current.name == "local.csv" and bob.inbox.current.lane == "local"
    assert "<table" in panel.viewer.content.children[0].value


def test_load_files_uses_the_file_dialog_when_the_browser_answers(pair, panel, tmp_path):
    alice, bob = pair
    bridge = Bridge.of(bob)
    frontend_msg(bridge, {"event": "hello", "root": str(tmp_path)})
    assert bridge.ready
    panel.viewer.load.click()
    assert panel.viewer.load_row.layout.display == "none"
    (tmp_path / "pick.txt").write_text("picked")
    key = next(iter(bridge._picks))
    frontend_msg(bridge, {"event": "picked", "key": key, "paths": ["pick.txt"], "root": str(tmp_path)})
    assert bob.inbox.current.name == "pick.txt"


# -- drag and drop -------------------------------------------------------------------------------------
def drop(box, files=(), paths=(), urls=(), root=""):
    """Play the browser's drop messages (labextension/src/drop.ts) into ``box``."""
    key = f"d{time.monotonic_ns()}"
    frontend_msg(box, {"event": "drop-start", "drop": key, "files": [{"name": n, "size": len(b)} for n, b in files],
                       "paths": list(paths), "urls": list(urls), "root": root})
    for i, (_name, data) in enumerate(files):
        for offset in range(0, len(data), 1000):
            frontend_msg(box, {"event": "drop-chunk", "drop": key, "file": i, "offset": offset}, [data[offset:offset + 1000]])
    frontend_msg(box, {"event": "drop-end", "drop": key})


def test_drops_on_the_viewer_go_to_the_room_and_on_a_tile_to_that_user(pair, panel, tmp_path):
    alice, bob = pair
    alice.receiving = True
    alice.settings["bob"].files = "accept"
    alice.settings["bob"].urls = "accept"
    data = os.urandom(2500)
    drop(panel.viewer.root, files=[("../evil name?.bin", data)], urls=["https://example.org/dropped"])
    wait_until(lambda: len(panel.viewer.drops.sent) == 2)
    wait_until(lambda: len(alice.inbox) == 2, 10)
    got = alice.inbox.items
    assert list(got.name) == ["evil name_.bin", "https://example.org/dropped"] or set(got.name) == {"evil name_.bin", "https://example.org/dropped"}
    file_row = got[got.kind == "file"].iloc[0]
    assert open(file_row.path, "rb").read() == data
    # a file from JupyterLab's file browser: a path relative to the server root
    (tmp_path / "notes.md").write_text("# notes")
    tile = panel.roster.tiles["alice"]
    drop(tile.root, paths=["notes.md"], root=str(tmp_path))
    wait_until(lambda: len(alice.inbox) == 3, 10)
    assert alice.inbox.current.name == "notes.md"
    handle = tile.drops.sent[-1][1]
    assert handle.peer == "alice"  # a tile sends to its user only


# -- without the extension -----------------------------------------------------------------------------
def test_without_the_extension_plain_widgets_still_work(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "0")
    alice, bob = pair
    p = Panel(bob)
    try:
        tile = p.roster.tiles["alice"]
        assert type(tile.root) is widgets.Box and "ivisit-tile" in tile.root._dom_classes
        assert p.offers.bridge is None
        t = alice.send_file(make_file(tmp_path / "plain.txt", 10), to="bob")
        card_for(p).buttons[1].click()
        assert t.wait(10) == "done"
        wait_until(lambda: "plain.txt" in p.viewer.title.value)
        p.viewer.load.click()
        assert p.viewer.load_row.layout.display == "flex"
    finally:
        p.close()


# -- previews ----------------------------------------------------------------------------------------
def item(path, kind="file", url=None):
    return Item(time=0, sender="alice", kind=kind, name=path.name if path else url, path=str(path) if path else None,
                url=url, hash=None, size=path.stat().st_size if path else 0, lane="datachannel")


def test_previews_fit_the_type_and_stay_bounded(tmp_path):
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert isinstance(preview(item(png)), widgets.Image)
    html = tmp_path / "page.html"
    html.write_text('<script>alert(1)</script><b>hi</b>')
    w = preview(item(html))
    assert 'sandbox=""' in w.value and "<script>" not in w.value
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 5_000_000)
    w = preview(item(big))
    assert len(w.value) < 200_000 and "first 64.0 KB shown" in w.value
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(100_000)))
    w = preview(item(csv))
    assert w.value.count("<tr") <= 21
    link = preview(item(None, kind="url", url="https://example.org/?q=<x>"))
    assert 'href="https://example.org/?q=&lt;x&gt;"' in link.value and 'rel="noopener noreferrer nofollow"' in link.value
    wav = tmp_path / "s.wav"
    wav.write_bytes(b"RIFF" + b"\0" * 40)
    assert isinstance(preview(item(wav)), widgets.Audio)
    pdf = tmp_path / "d.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    assert "application/pdf" in preview(item(pdf)).value


def test_parquet_preview(tmp_path):
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"a": range(1000)}).to_parquet(path)
    assert preview(item(path)).value.count("<tr") <= 21


def test_extension_detection_can_be_forced(monkeypatch):
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "0")
    assert frontend.extension_available() is False
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "1")
    assert frontend.extension_available() is True


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    """The code cells of notebooks/01-quickstart.ipynb, in order, in this process; once alice has
    sent her file and URL (the cell tagged ``offers-sent``) bob's panel shows both offers."""
    import json
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "01-quickstart.ipynb").read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    sent = next(i for i, c in enumerate(cells) if "offers-sent" in c["metadata"].get("tags", []))
    ns: dict = {}

    def run(cell: dict) -> None:
        exec(compile("".join(cell["source"]), "01-quickstart", "exec"), ns)

    panel = None
    try:
        for cell in cells[: sent + 1]:
            run(cell)
        panel = eval("bob.ui()", ns)
        wait_until(lambda: len(panel.offers.cards) == 2, 10)
        labels = [[b.description for b in c.buttons] for c in panel.offers.cards.values()]
        # the file is hashed before it is offered, so the URL may arrive first
        assert sorted(lab[1] for lab in labels) == ["Accept this URL", "Accept this file"]
        for cell in cells[sent + 1 : -1]:  # the notebook answers the offers itself and checks the results
            run(cell)
        wait_until(lambda: len(panel.offers.cards) == 0, 10)
    finally:
        if panel is not None:
            panel.close()  # closing the viewer cancels incoming transfers: only once they are done
        run(cells[-1])


def test_closing_the_panel_closes_every_widget_inside(pair):
    alice, bob = pair
    p = bob.ui()
    p.roster.tiles["alice"].arrow.click()  # an open settings panel too

    def tree(w):
        yield w
        for c in getattr(w, "children", ()):
            yield from tree(c)

    inside = list(tree(p))
    assert len(inside) > 40
    p.close()
    assert [w for w in inside if w.comm is not None] == []
    assert bob.inbox.closed


def test_a_closed_panel_freed_on_another_thread_does_not_wait_for_ui_lock(panel):
    """The garbage collector may free a closed widget on any thread (ipywidgets' __del__ calls
    close() again), even one that a thread holding UI_LOCK is waiting for: that once hung the suite."""
    import threading

    from ivisit_nb.widgets import UI_LOCK

    parts = [panel, panel.roster, *panel.roster.tiles.values()]
    panel.close()
    done = threading.Event()

    def collect() -> None:
        for w in parts:
            w.__del__()  # what the collector runs
        done.set()

    with UI_LOCK:
        threading.Thread(target=collect, daemon=True).start()
        assert done.wait(10), "a closed widget's __del__ waited for UI_LOCK"
