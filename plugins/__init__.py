"""First-party dataset and template providers (`spmctl_plugins`).

They are default plugins (`spmctl.plugins.DEFAULT_PLUGINS`): registered on the same plugin manager,
through the same hooks, as a third-party package's entry point, so the built-ins prove the plugin path.
"""
