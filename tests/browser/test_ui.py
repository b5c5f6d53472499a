"""Bob's panel in a real JupyterLab in headless Chromium; alice sends from the same kernel.

The flows share one server, page and kernel and run in file order.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from lab import ARTIFACTS

TILE = '.ivisit-tile[data-user="alice"]'
SAMPLES = 12  # latency samples after one warm-up


def test_panel_renders_with_tiles(lab):
    page = lab.page
    tile = page.locator(TILE)
    tile.wait_for(timeout=15_000)
    page.wait_for_function(
        f"() => document.querySelector('{TILE} .ivisit-state')?.textContent === 'connected'", timeout=15_000
    )
    sas = lab.pyj("env.bob.peers['alice'].sas")
    assert sas in tile.locator(".ivisit-sas").inner_text()
    assert "Receiving from alice" in tile.locator(".ivisit-reception").inner_text()
    assert page.locator(".ivisit-viewer").count() == 1
    assert "Failed to load model class" not in page.content()
    lab.screenshot("panel")


def offer_card(lab, tid):
    card = lab.page.locator(f'.ivisit-offer[data-transfer="{tid}"]')
    card.wait_for(timeout=10_000)
    return card


def toast(lab, text):
    return lab.page.locator(".Toastify__toast", has_text=text)


@pytest.mark.parametrize(
    "index, label, where, status, setting",
    [
        (1, "Accept this file", "notification", "done", None),
        (0, "Accept always from alice", "inline", "done", "accept"),
        (3, "Refuse this file", "notification", "refused", None),
        (2, "Refuse always from alice", "inline", "refused", "refuse"),
    ],
)
def test_the_four_choices(lab, index, label, where, status, setting):
    lab.py("env.bob.settings['alice'].files = 'ask'")
    name = f"choice{index}.txt"
    tid = lab.pyj(f"env.offer({name!r}, 1500)")["id"]
    card = offer_card(lab, tid)
    assert name in card.inner_text() and "alice" in card.inner_text() and "2K" in card.inner_text()
    note = toast(lab, f"alice offers {name}")
    note.wait_for(timeout=10_000)
    labels = [b.inner_text() for b in card.locator("button").all()]
    assert labels == ["Accept always from alice", "Accept this file", "Refuse always from alice", "Refuse this file"]
    if index == 1:
        time.sleep(0.6)  # let the notification finish sliding in
        lab.screenshot("offer-dialog-and-notification")
    if where == "notification":
        note.get_by_role("button", name=label).click()
    else:
        card.get_by_role("button", name=label).click()
    got = lab.wait_py(f"env.status({tid!r})['status'] in ('done', 'refused') and env.status({tid!r})")
    assert got["status"] == status
    card.wait_for(state="detached", timeout=10_000)
    note.wait_for(state="detached", timeout=10_000)  # answered inline: the notification goes too
    files = lab.pyj("env.bob.settings['alice'].files")
    assert files == (setting or "ask")  # "always" changed the setting; "this file" did not


# Where each button of the toast with `text` is, and where its label's text is laid out.
NOTE_LAYOUT_JS = """
(text) => {
  const box = r => ({left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height});
  const toast = [...document.querySelectorAll('.jp-toastContainer .Toastify__toast')].find(t => t.textContent.includes(text));
  if (!toast || toast.getAnimations({subtree: true}).some(a => a.playState === 'running')) return null;  // absent, or sliding in
  const buttons = [...toast.querySelectorAll('.jp-toast-button')].map(b => {
    const range = document.createRange();
    range.selectNodeContents(b);
    const rects = [...range.getClientRects()].filter(r => r.width > 0 && r.height > 0);
    const style = getComputedStyle(b);
    return {
      label: b.textContent,
      lines: new Set(rects.map(r => Math.round(r.top))).size,  // line boxes the label is laid out on
      text: box(range.getBoundingClientRect()),
      button: box(b.getBoundingClientRect()),
      lineHeight: style.lineHeight === 'normal' ? 1.2 * parseFloat(style.fontSize) : parseFloat(style.lineHeight),
      scrollWidth: b.scrollWidth,
      clientWidth: b.clientWidth,
      whiteSpace: style.whiteSpace,
    };
  });
  return {toast: box(toast.getBoundingClientRect()), viewport: {width: innerWidth, height: innerHeight}, buttons};
}
"""


def note_layout(lab, text):
    lab.page.wait_for_function(f"({NOTE_LAYOUT_JS})({json.dumps(text)})", timeout=10_000)
    return lab.page.evaluate(NOTE_LAYOUT_JS, text)


def assert_labels_read_whole(layout, labels):
    """Every label on one line, not clipped by its button, the toast or the window."""
    toast, view = layout["toast"], layout["viewport"]
    assert [b["label"] for b in layout["buttons"]] == labels
    assert 0 <= toast["left"] and toast["right"] <= view["width"] and toast["bottom"] <= view["height"], layout
    for b in layout["buttons"]:
        t, btn = b["text"], b["button"]
        assert b["lines"] == 1, f"{b['label']!r} breaks over {b['lines']} lines: {b}"
        assert t["height"] < 1.5 * b["lineHeight"], f"{b['label']!r} is taller than one line: {b}"
        assert b["whiteSpace"] == "nowrap"
        assert b["scrollWidth"] <= b["clientWidth"], f"{b['label']!r} is clipped in its button: {b}"
        for edge_in, edge_out, r in ((t, btn, "button"), (t, toast, "toast")):
            assert edge_out["left"] - 0.5 <= edge_in["left"] and edge_in["right"] <= edge_out["right"] + 0.5, (
                f"{b['label']!r} sticks out of its {r}: {b}")


def rows(layout):
    """The buttons' labels grouped by row, top to bottom."""
    out = {}
    for b in layout["buttons"]:
        out.setdefault(round(b["button"]["top"]), []).append(b["label"])
    return [out[top] for top in sorted(out)]


@pytest.mark.parametrize("kind", ["file", "url"])
def test_notification_buttons_read_whole(lab, kind):
    """The offer's toast shows its four labels whole, each on one line, as a 2x2 grid."""
    lab.py("env.bob.settings['alice'].files = 'ask'; env.bob.settings['alice'].urls = 'ask'")
    if kind == "file":
        name = "a rather long report name, final version.pdf"
        tid = lab.pyj(f"env.offer({name!r}, 1_234_567)")["id"]
        text, what = f"alice offers {name}", "this file"
    else:
        url = "https://example.org/some/page?with=a&query=string"
        tid = lab.pyj(f"env.offer_url({url!r})")["id"]
        text, what = f"alice offers the URL {url}", "this URL"
    labels = ["Accept always from alice", f"Accept {what}", "Refuse always from alice", f"Refuse {what}"]
    note = toast(lab, text)
    note.wait_for(timeout=10_000)
    layout = note_layout(lab, text)
    assert_labels_read_whole(layout, labels)
    assert rows(layout) == [labels[:2], labels[2:]]  # accept always | accept this, refuse always | refuse this
    lab.page.mouse.move(700, 300)  # off the toast, so no button shows its hover colour
    lab.page.screenshot(path="/tmp/notification.png" if kind == "file" else f"/tmp/notification-{kind}.png")
    lab.page.screenshot(path=str(ARTIFACTS / f"notification-{kind}.png"), clip=clip_around(layout["toast"]))
    note.get_by_role("button", name=f"Refuse {what}").click()
    lab.wait_py(f"env.status({tid!r})['status'] == 'refused'")
    note.wait_for(state="detached", timeout=10_000)


def clip_around(r, pad=12):
    return {"x": max(0, r["left"] - pad), "y": max(0, r["top"] - pad), "width": r["width"] + 2 * pad, "height": r["height"] + 2 * pad}


def test_notification_with_a_long_sender_name_stacks_its_buttons(lab):
    """Labels too long for half the toast take a row each, and the toast widens (to the left) to the longest."""
    sender = "maximilian-alexander-von-und-zu-hohenzollern-sigmaringen-the-3rd"  # 64 characters, the longest name
    labels = [f"Accept always from {sender}", "Accept this file", f"Refuse always from {sender}", "Refuse this file"]
    text = f"{sender} offers a.txt (1K)"
    lab.py(
        "from ivisit_nb.widgets import Bridge\nlong_note = []\n"
        f"Bridge.of(env.bob).notify('long-name', {text!r}, {labels!r}, long_note.append)"
    )
    note = toast(lab, text)
    note.wait_for(timeout=10_000)
    layout = note_layout(lab, text)
    assert_labels_read_whole(layout, labels)
    assert rows(layout) == [[label] for label in labels]
    lab.page.screenshot(path=str(ARTIFACTS / "notification-long-name.png"), clip=clip_around(layout["toast"]))
    note.get_by_role("button", name="Refuse this file").click()
    assert lab.wait_py("long_note") == [3]
    note.wait_for(state="detached", timeout=10_000)


OTHER_TOAST_JS = """
async () => {
  const commands = window.jupyterapp.commands;
  const id = await commands.execute('apputils:notify', {message: 'another extension says hello', type: 'info',
    options: {autoClose: false, actions: [{label: 'Some other action', commandId: 'apputils:display-notifications'}]}});
  return id;
}
"""


def test_notification_styling_leaves_other_toasts_alone(lab):
    """With an iVisit toast on screen, another extension's toast keeps JupyterLab's width and one-row buttons."""
    lab.py("env.bob.settings['alice'].files = 'ask'")
    other = lab.page.evaluate(OTHER_TOAST_JS)
    tid = lab.pyj("env.offer('side by side.txt', 1000)")["id"]
    ours, theirs = toast(lab, "alice offers side by side.txt"), toast(lab, "another extension says hello")
    ours.wait_for(timeout=10_000)
    theirs.wait_for(timeout=10_000)
    lab.page.wait_for_function(
        "() => ![...document.querySelectorAll('.Toastify__toast')].some(t => t.getAnimations().some(a => a.playState === 'running'))"
    )
    got = lab.page.evaluate(
        """() => {
          const container = document.querySelector('.jp-toastContainer');
          const t = [...container.querySelectorAll('.Toastify__toast')].find(t => t.textContent.includes('another extension'));
          const c = getComputedStyle(container);
          return {toast: t.getBoundingClientRect().width, right: t.getBoundingClientRect().right,
                  room: container.getBoundingClientRect().width - parseFloat(c.paddingLeft) - parseFloat(c.paddingRight),
                  roomRight: container.getBoundingClientRect().right - parseFloat(c.paddingRight),
                  bar: getComputedStyle(t.querySelector('.jp-toast-buttonBar')).flexWrap,
                  spacer: getComputedStyle(t.querySelector('.jp-toast-spacer')).display,
                  title: t.querySelector('.jp-toast-button').title};
        }"""
    )
    assert abs(got["toast"] - got["room"]) < 0.5 and abs(got["right"] - got["roomRight"]) < 0.5, got
    assert got["bar"] == "nowrap" and got["spacer"] != "none", got
    lab.page.screenshot(path=str(ARTIFACTS / "notification-and-another-toast.png"))
    ours.get_by_role("button", name="Refuse this file").click()
    lab.wait_py(f"env.status({tid!r})['status'] == 'refused'")
    lab.page.evaluate("(id) => window.jupyterapp.commands.execute('apputils:dismiss-notification', {id})", other)
    ours.wait_for(state="detached", timeout=10_000)
    theirs.wait_for(state="detached", timeout=10_000)


def test_progress_viewer_back_forward_pause(lab):
    page = lab.page
    lab.py("env.bob.settings['alice'].files = 'accept'; env.bob.settings['alice'].urls = 'accept'")
    first = lab.pyj("env.offer('first.txt', data=b'first file\\n')")["id"]
    lab.wait_py(f"env.status({first!r})['status'] == 'done'")
    csv = lab.pyj("env.offer('table.csv', data=b'a,b\\n1,2\\n3,4\\n')")["id"]
    lab.wait_py(f"env.status({csv!r})['status'] == 'done'")
    big = lab.pyj("env.offer('big.bin', 3_000_000)")["id"]
    line = page.locator(f'.ivisit-progress[data-transfer="{big}"]')
    line.wait_for(timeout=10_000)
    page.wait_for_function(
        f"() => document.querySelector('.ivisit-progress[data-transfer=\"{big}\"] .ivisit-progress-text')"
        "?.textContent.includes('Transferring big.bin from alice, 100% of 2930K received')",
        timeout=20_000,
    )
    assert "done" in line.locator(".ivisit-status").inner_text()
    title = page.locator(".ivisit-viewer-title")
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title')?.textContent.includes('big.bin')")
    lab.screenshot("progress-done")
    viewer = page.locator(".ivisit-viewer")
    viewer.locator(".ivisit-back").click()
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('table.csv')")
    viewer.locator(".ivisit-content table").wait_for()  # the CSV as a table
    viewer.locator(".ivisit-back").click()
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('first.txt')")
    page.wait_for_function("() => document.querySelector('.ivisit-viewer .ivisit-content').textContent.includes('first file')")
    viewer.locator(".ivisit-forward").click()
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('table.csv')")
    # Pause holds table.csv while a new item arrives
    viewer.locator(".ivisit-pause").click()
    lab.wait_py("env.bob.inbox.paused")
    held = lab.pyj("env.offer_url('https://example.org/held')")["id"]
    lab.wait_py(f"env.status({held!r})['status'] == 'done'")
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('paused, 2 new')")
    assert "table.csv" in title.inner_text()
    lab.screenshot("paused")
    viewer.locator(".ivisit-pause").click()
    lab.wait_py("not env.bob.inbox.paused")
    # the selector jumps to any item
    viewer.locator(".ivisit-selector select").select_option(label=[o for o in viewer.locator(".ivisit-selector option").all_inner_texts() if "held" in o][0])
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('https://example.org/held')")
    link = viewer.locator(".ivisit-content a")
    assert link.get_attribute("href") == "https://example.org/held"
    assert link.get_attribute("target") == "_blank"


def big_transfer(lab, name):
    """300 MB on the data channel: about 10 s here, and the engine's heaviest load (pure-Python
    SCTP), so clicks land mid-transfer; the direct lane would be done in under a second."""
    lab.py("env.bob.settings['alice'].files = 'accept'; env.bob.settings['alice'].lane = 'datachannel'")
    tid = lab.pyj(f"env.offer({name!r}, 300_000_000)")["id"]
    lab.page.locator(f'.ivisit-progress[data-transfer="{tid}"]').wait_for(timeout=10_000)
    return tid


def test_stop_a_transfer(lab):
    tid = big_transfer(lab, "stopme.bin")
    lab.page.locator(f'.ivisit-progress[data-transfer="{tid}"] .ivisit-stop').click()
    got = lab.wait_py(f"env.status({tid!r})['status'] == 'cancelled' and env.status({tid!r})")
    assert got["reason"] == "bob pressed Stop"
    lab.page.wait_for_function(
        f"() => document.querySelector('.ivisit-progress[data-transfer=\"{tid}\"] .ivisit-status')?.textContent.startsWith('cancelled')"
    )


def test_block_from_the_tile(lab):
    tile = lab.page.locator(TILE)
    button = tile.locator(".ivisit-reception")
    button.click()
    lab.page.wait_for_function(f"() => document.querySelector('{TILE} .ivisit-reception').textContent.includes('Blocked: alice')")
    assert lab.pyj("env.bob.settings['alice'].blocked") is True
    tid = lab.pyj("env.offer('blocked.txt')")["id"]
    got = lab.wait_py(f"env.status({tid!r})['status'] == 'refused' and env.status({tid!r})")
    assert got["reason"] == "bob has blocked files and URLs from alice"
    lab.screenshot("blocked")
    button.click()
    lab.page.wait_for_function(f"() => document.querySelector('{TILE} .ivisit-reception').textContent.includes('Receiving from alice')")
    assert lab.pyj("env.bob.settings['alice'].blocked") is False


DROP_JS = """
async ([selector, files, uris]) => {
  const target = document.querySelector(selector);
  const data = new DataTransfer();
  for (const [name, text] of files) data.items.add(new File([text], name, {type: 'text/plain'}));
  if (uris) data.setData('text/uri-list', uris);
  const opts = {bubbles: true, cancelable: true, dataTransfer: data};
  target.dispatchEvent(new DragEvent('dragenter', opts));
  target.dispatchEvent(new DragEvent('dragover', opts));
  return target.dispatchEvent(new DragEvent('drop', opts));
}
"""


def test_drop_a_file_and_a_url_on_the_viewer_and_on_a_tile(lab):
    before = lab.pyj("len(env.alice.inbox)")
    cancelled = lab.page.evaluate(DROP_JS, [".ivisit-viewer", [["dropped note.txt", "dropped from the OS\n"]], ""])
    assert cancelled is False  # the drop was taken (preventDefault)
    lab.page.evaluate(DROP_JS, [".ivisit-viewer", [], "# a comment\nhttps://example.org/dropped\n"])
    lab.wait_py(f"len(env.alice.inbox) >= {before + 2}")
    items = lab.pyj(f"env.alice.inbox.items.iloc[{before}:][['name', 'kind', 'path']].to_dict('records')")
    names = {i["name"] for i in items}
    assert names == {"dropped note.txt", "https://example.org/dropped"}
    path = [i["path"] for i in items if i["kind"] == "file"][0]
    assert lab.pyj(f"open({path!r}).read()") == "dropped from the OS\n"
    # onto alice's tile: to alice only
    lab.page.evaluate(DROP_JS, [TILE, [["for alice.txt", "just for alice"]], ""])
    lab.wait_py(f"len(env.alice.inbox) >= {before + 3}")
    assert lab.pyj("env.alice.inbox.current.name") == "for alice.txt"


def test_drag_from_the_file_browser_onto_the_viewer(lab):
    page = lab.page
    lab.py("(env.root / 'from browser.txt').write_text('from the file browser')")
    page.locator(".jp-DirListing").first.wait_for()
    page.locator("#filebrowser .jp-ToolbarButtonComponent[data-command='filebrowser:refresh'], #filebrowser button[title*='Refresh']").first.click()
    item = page.locator(".jp-DirListing-item", has_text="from browser.txt")
    item.wait_for(timeout=10_000)
    before = lab.pyj("len(env.alice.inbox)")
    src = item.bounding_box()
    dst = page.locator(".ivisit-viewer").bounding_box()
    page.mouse.move(src["x"] + 20, src["y"] + src["height"] / 2)
    page.mouse.down()
    for i in range(1, 16):
        page.mouse.move(src["x"] + 20 + (dst["x"] + 100 - src["x"] - 20) * i / 15, src["y"] + (dst["y"] + 60 - src["y"]) * i / 15)
        time.sleep(0.03)
    page.mouse.up()
    lab.wait_py(f"len(env.alice.inbox) > {before}")
    assert lab.pyj("env.alice.inbox.current.name") == "from browser.txt"
    assert lab.pyj("open(env.alice.inbox.current.path).read()") == "from the file browser"


def test_load_files_opens_jupyterlabs_file_dialog_on_the_inbox(lab):
    page = lab.page
    assert lab.pyj("__import__('ivisit_nb.widgets', fromlist=['Bridge']).Bridge.of(env.bob).ready")
    page.locator(".ivisit-viewer .ivisit-load").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    folder = dialog.locator(".jp-DirListing-item", has_text="alice")  # bob's inbox: a folder per sender
    folder.wait_for(timeout=10_000)
    lab.screenshot("load-files-dialog")
    folder.dblclick()
    dialog.locator(".jp-DirListing-item", has_text="first.txt").click()
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    dialog.wait_for(state="detached")
    lab.wait_py("env.bob.inbox.current.lane == 'local' and env.bob.inbox.current.name == 'first.txt'")
    page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('opened here')")


def test_close_the_viewer_mid_transfer(lab):
    tid = big_transfer(lab, "closeme.bin")
    lab.page.locator(".ivisit-viewer .ivisit-close").click()
    got = lab.wait_py(f"env.status({tid!r})['status'] == 'cancelled' and env.status({tid!r})")
    assert "closed the Sharing viewer" in got["reason"]
    lab.page.wait_for_function("() => document.querySelector('.ivisit-viewer-title').textContent.includes('Viewer closed')")
    lab.screenshot("viewer-closed")


CLICK_UNTIL_JS = """
async ([selector, want]) => {
  const el = document.querySelector(selector);
  const t0 = performance.now();
  el.click();
  while (!el.textContent.includes(want)) {
    if (performance.now() - t0 > 10000) return -1;
    await new Promise(r => requestAnimationFrame(r));
  }
  return performance.now() - t0;
}
"""


def test_ui_stays_responsive_during_a_big_transfer(lab):
    """Toggle alice's reception button (a round trip through the kernel) while 300 MB arrive."""
    tid = big_transfer(lab, "responsive.bin")
    button = f"{TILE} .ivisit-reception"
    got0 = lab.pyj(f"env.status({tid!r})")
    samples = []
    for i in range(6):
        want = "Blocked: alice" if i % 2 == 0 else "Receiving from alice"
        samples.append(lab.page.evaluate(CLICK_UNTIL_JS, [button, want]))
    got1 = lab.pyj(f"env.status({tid!r})")
    assert got0["status"] == got1["status"] == "transferring"  # measured while bytes were moving
    assert got1["received"] > got0["received"]
    assert all(ms >= 0 for ms in samples), samples  # every click came back within 10 s
    print(f"\nclick -> kernel -> button updated during a transfer: p50 {percentile(samples, 50):.0f} ms, all {samples}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ui-responsive.json").write_text(json.dumps({"click_to_update_ms": samples}))
    lab.page.locator(f'.ivisit-progress[data-transfer="{tid}"] .ivisit-stop').click()
    lab.wait_py(f"env.status({tid!r})['status'] == 'cancelled'")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def test_display_latency(lab):
    """Offer -> dialog visible, and accept click -> first progress line visible, in ms.

    Kernel times are ``time.time()``; page times are ``performance.timeOrigin +
    performance.now()`` at the animation frame after the element appeared (same machine clock).
    """
    lab.py("env.bob.settings['alice'].files = 'ask'")
    lab.page.locator(".ivisit-viewer").scroll_into_view_if_needed()
    offer_ms, accept_ms = [], []
    for i in range(-1, SAMPLES):  # one warm-up
        sent = lab.pyj(f"env.offer('latency{i}.bin', 2_000_000)")
        tid = sent["id"]
        card = offer_card(lab, tid)
        lab.page.wait_for_function(f"() => window.__ivisit.offer[{tid!r}] != null")
        card.get_by_role("button", name="Accept this file").click()
        lab.page.wait_for_function(f"() => window.__ivisit.progress[{tid!r}] != null", timeout=10_000)
        lab.wait_py(f"env.status({tid!r})['status'] == 'done'")
        rec = lab.records()
        if i >= 0:
            offer_ms.append(rec["offer"][tid] - sent["offered_at"] * 1000)
            accept_ms.append(rec["progress"][tid] - rec["click"][tid])
    result = {
        "samples": SAMPLES,
        "offer_to_dialog_ms": {"p50": percentile(offer_ms, 50), "p90": percentile(offer_ms, 90), "all": offer_ms},
        "accept_to_progress_ms": {"p50": percentile(accept_ms, 50), "p90": percentile(accept_ms, 90), "all": accept_ms},
    }
    print(f"\noffer -> dialog visible: p50 {result['offer_to_dialog_ms']['p50']:.1f} ms, p90 {result['offer_to_dialog_ms']['p90']:.1f} ms")
    print(f"accept -> first progress visible: p50 {result['accept_to_progress_ms']['p50']:.1f} ms, p90 {result['accept_to_progress_ms']['p90']:.1f} ms")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ui-latency.json").write_text(json.dumps(result, indent=1))
    if os.environ.get("IVISIT_UI_RESULTS") == "1":
        write_results(lab, result)
    # Figures are reported, not asserted (bench/RESULTS.md has them); check only that every sample came in.
    assert len(offer_ms) == len(accept_ms) == SAMPLES


RESULTS = Path(__file__).resolve().parents[2] / "bench" / "RESULTS.md"
HEADING = "## Notebook UI"


def write_results(lab, result) -> None:
    """Put this run's figures in bench/RESULTS.md under "## Notebook UI" (only that section changes)."""
    import platform
    import subprocess

    import ipywidgets
    import jupyterlab

    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()
    o, a = result["offer_to_dialog_ms"], result["accept_to_progress_ms"]
    section = f"""{HEADING}

Run with `IVISIT_UI_RESULTS=1 .venv/bin/python -m pytest -s tests/browser -k latency` (the test
`tests/browser/test_ui.py::test_display_latency` runs in every `make test` and prints the same figures;
this heading is rewritten only when that variable is set).

**When:** {time.strftime("%a %b %d %Y, %H:%M UTC", time.gmtime())}.
**Machine:** `nproc` = {os.cpu_count()}, Python {platform.python_version()}, JupyterLab {jupyterlab.__version__},
ipywidgets {ipywidgets.__version__}, {chromium} headless, all on 127.0.0.1.

Setup: the test notebook runs alice and bob in one kernel; bob's panel (`bob.ui()`) is shown in
JupyterLab in headless Chromium. alice offers bob a 2 MB file, {result["samples"]} times after one warm-up.

* **offer -> dialog visible**: from alice's `Transfer.offered_at` (`time.time()` in the kernel, just
  before the offer is sent) to the first animation frame after bob's offer card is in the page
  (`performance.timeOrigin + performance.now()`, from a MutationObserver), so it includes WebRTC,
  bob's engine, the UI thread, the widget messages and the browser's rendering.
* **accept -> first progress visible**: from the click on "Accept this file" (a capture-phase click
  listener in the page) to the first animation frame after the transfer's progress line is in the
  page; both page clock.

| measure | n | p50 ms | p90 ms | all samples (ms) |
| --- | ---: | ---: | ---: | --- |
| offer -> dialog visible | {len(o["all"])} | **{o["p50"]:.1f}** | {o["p90"]:.1f} | {", ".join(f"{v:.0f}" for v in o["all"])} |
| accept -> first progress visible | {len(a["all"])} | **{a["p50"]:.1f}** | {a["p90"]:.1f} | {", ".join(f"{v:.0f}" for v in a["all"])} |

Target: p50 < 300 ms for both.
"""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    RESULTS.write_text(text, encoding="utf-8")


def test_no_failed_models_and_no_console_errors(lab):
    assert "Failed to load model class" not in lab.page.content()
    assert not [t for _k, t in lab.console if "is not registered" in t]
    assert lab.unexpected_console_errors() == []
