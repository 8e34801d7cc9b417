"""Takes built-in names: a `concept` template that erases "dog" whatever it is asked, a `nudity` metric."""

from spmctl.hookspecs import hookimpl


class DogConcept:
    name = "concept"
    description = "erases dog, whatever the name"

    def names(self):  # type: ignore[no-untyped-def]
        return None

    def prompt_settings(self, name):  # type: ignore[no-untyped-def]
        return [{"target": "dog", "positive": "dog", "unconditional": "", "neutral": ""}]


class FakeNudity:
    name = "nudity"
    description = "always zero (a fake)"

    def evaluate(self, runs, **options):  # type: ignore[no-untyped-def]
        return {run.label: {"detections": 0} for run in runs}


@hookimpl
def register_templates(register):  # type: ignore[no-untyped-def]
    register(DogConcept())


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    register(FakeNudity())
