"""Registers objects of the wrong kind."""

from spmctl.hookspecs import hookimpl


class NoEvaluate:
    name = "no-evaluate"
    description = "a metric without evaluate()"


class OddClassifier:
    name = "odd-classifier"
    kind = "colour"
    labels = ["red"]
    description = "a classifier of neither styles nor objects"

    def predict(self, images):  # type: ignore[no-untyped-def]
        return ["red"] * len(images)


@hookimpl
def register_datasets(register):  # type: ignore[no-untyped-def]
    register(42)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    register(NoEvaluate())


@hookimpl
def register_classifiers(register):  # type: ignore[no-untyped-def]
    register(OddClassifier())
