"""A deliberately broken plugin (tests only)."""

raise RuntimeError("this plugin is broken on purpose")
