"""Takes seconds to import, and leaves a mark (HOSTILE_MARKER) so a test can tell it was imported."""

import os
import time
from pathlib import Path

if os.environ.get("HOSTILE_MARKER"):
    Path(os.environ["HOSTILE_MARKER"]).write_text("imported")
time.sleep(3)
