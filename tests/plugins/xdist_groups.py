"""``--dist loadgroup`` (pytest-xdist) with pytest 9: tests marked ``xdist_group(name)`` share a worker.

xdist's loadgroup scheduler reads a test's group from the end of its node id (``…::test@name``),
which xdist's worker appends by assigning ``Item._nodeid``. pytest 9 builds ``Item.nodeid`` from
``Item._id`` instead, so the assignment has no effect and every grouped test is scheduled alone
(a module-scoped stack is then set up once per worker that gets one of its tests). This hook, on
the workers of a loadgroup run, appends the suffix where xdist's did not take; where it did (an
xdist that knows pytest 9), it does nothing.
"""

from __future__ import annotations

import pytest
from _pytest.nodeid import coerce_node_id


def group_of(item: pytest.Item) -> str:
    """xdist's own rule: the names of every ``xdist_group`` mark, sorted, joined by ``_``."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "_".join(sorted(names))


@pytest.hookimpl(trylast=True)  # after xdist's own hook, so that its suffix, if it took, is seen
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set on the workers of a --dist loadgroup run
        return
    for item in items:
        group = group_of(item)
        if group and not item.nodeid.endswith(f"@{group}"):
            item._id = coerce_node_id(f"{item.nodeid}@{group}")
