"""Notebook UI for ivisit_nb sessions (ipywidgets, plus the ivisit-nb JupyterLab extension).

``session.ui()`` returns a :class:`Panel` with everything; each part can also be
displayed on its own::

    from ivisit_nb.widgets import Roster, OfferDialog, ProgressList, Viewer, SettingsPanel, ReceiveToggle, VideoView
    Viewer(bob)
    VideoView(bob.video_feed("alice"))

Session events arrive on the session's engine thread; the widgets are updated on
one UI thread per session under one lock (see :mod:`ivisit_nb.widgets.pump`).
Without the extension everything works with plain ipywidgets controls except
drag and drop and JupyterLab notifications.
"""

from .drop import DropReceiver, Notice
from .frontend import Bridge, DataBox, extension_available
from .offers import OfferCard, OfferDialog, choice_labels
from .panel import Panel
from .preview import preview
from .progress import ProgressLine, ProgressList
from .pump import UI_LOCK, Pump
from .roster import PreviewTile, Roster, Tile
from .settings_panel import ReceiveToggle, SettingsPanel
from .video import ImageVideo, VideoView, video_widget
from .viewer import Viewer

__all__ = [
    "Panel", "Roster", "Tile", "ReceiveToggle", "SettingsPanel", "OfferDialog", "OfferCard", "choice_labels",
    "ProgressList", "ProgressLine", "Viewer", "preview", "DropReceiver", "Notice", "Bridge", "DataBox",
    "extension_available", "Pump", "UI_LOCK", "PreviewTile", "VideoView", "ImageVideo", "video_widget",
]
