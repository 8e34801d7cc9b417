"""Providers whose methods fail or answer the wrong type when spmctl uses them."""

from spmctl.hookspecs import hookimpl


class StringSettings:
    name = "string-settings"
    description = "prompt_settings() returns a string"

    def names(self):  # type: ignore[no-untyped-def]
        return None

    def prompt_settings(self, name):  # type: ignore[no-untyped-def]
        return "erase " + name


class Raising:
    name = "raising"
    description = "prompt_settings() divides by zero"

    def names(self):  # type: ignore[no-untyped-def]
        return None

    def prompt_settings(self, name):  # type: ignore[no-untyped-def]
        return 1 / 0


class StringRows:
    name = "string-rows"
    description = "rows() yields strings"

    def rows(self, root=None, *, use_sample=True, **options):  # type: ignore[no-untyped-def]
        yield "a prompt, not a PromptRow"


@hookimpl
def register_templates(register):  # type: ignore[no-untyped-def]
    register(StringSettings())
    register(Raising())


@hookimpl
def register_datasets(register):  # type: ignore[no-untyped-def]
    register(StringRows())
