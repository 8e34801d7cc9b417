"""Metrics returning the wrong type or calling sys.exit, and a classifier answering labels it lacks."""

import sys

from spmctl.hookspecs import hookimpl


class ListMetric:
    name = "list-metric"
    description = "returns a list"

    def evaluate(self, runs, **options):  # type: ignore[no-untyped-def]
        return [1, 2, 3]


class ExitMetric:
    name = "exit-metric"
    description = "calls sys.exit(0) instead of scoring"

    def evaluate(self, runs, **options):  # type: ignore[no-untyped-def]
        sys.exit(0)


class WrongLabels:
    name = "wrong-labels"
    kind = "style"
    labels = ["Van_Gogh"]
    description = "answers a label it does not have"

    def predict(self, images):  # type: ignore[no-untyped-def]
        return ["banana"] * len(images)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    register(ListMetric())
    register(ExitMetric())


@hookimpl
def register_classifiers(register):  # type: ignore[no-untyped-def]
    register(WrongLabels())
