"""First-party dataset and template providers (`spmctl_plugins`).

They register through the `spmctl` entry-point group, the same way a
third-party package does, so the built-ins prove the plugin path.
"""
