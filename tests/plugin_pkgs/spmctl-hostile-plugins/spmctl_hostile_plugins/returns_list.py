"""Returns its providers instead of registering them."""

from spmctl.hookspecs import hookimpl


class Shapes:
    name = "shapes"
    description = "never registered"

    def names(self):  # type: ignore[no-untyped-def]
        return None

    def prompt_settings(self, name):  # type: ignore[no-untyped-def]
        return [{"target": name}]


@hookimpl
def register_templates(register):  # type: ignore[no-untyped-def]
    return [Shapes()]
