"""A metric returning the wrong type, and a classifier answering labels it does not have."""

from spmctl.hookspecs import hookimpl


class ListMetric:
    name = "list-metric"
    description = "returns a list"

    def evaluate(self, runs, **options):  # type: ignore[no-untyped-def]
        return [1, 2, 3]


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


@hookimpl
def register_classifiers(register):  # type: ignore[no-untyped-def]
    register(WrongLabels())
