"""Model building and loading (the built-in tiny SD, hub ids, folders, single files)."""
