"""Takes seconds to import, and leaves a mark (HOSTILE_MARKER) so a test can tell it was imported.

HOSTILE_HOLD_SECONDS (default 3) is how long the import takes: the Ctrl-C test holds it for minutes,
so its signal lands during the import however late a loaded machine lets the test send it."""

import os
import time
from pathlib import Path

if os.environ.get("HOSTILE_MARKER"):
    Path(os.environ["HOSTILE_MARKER"]).write_text("imported")
time.sleep(float(os.environ.get("HOSTILE_HOLD_SECONDS", "3")))
