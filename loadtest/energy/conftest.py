"""The end-to-end experiment (marker ``experiment``) runs only when selected: ``-m experiment``.

It needs the running stack and the built runner and tools, and takes about three minutes, so a plain
``pytest loadtest`` leaves it out.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "experiment: the short end-to-end energy experiment (select with -m experiment)")


def pytest_collection_modifyitems(config, items):
    if "experiment" in (config.getoption("markexpr") or ""):
        return
    skipped = [i for i in items if i.get_closest_marker("experiment")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [i for i in items if not i.get_closest_marker("experiment")]
