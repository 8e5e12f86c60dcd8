pytest_plugins = [
    "tests.plugins.no_errors",
    "tests.plugins.coturn",
    "tests.plugins.browser",
    "tests.plugins.xdist_groups",
    "tests.plugins.longest_first",
    "harness.pytest_plugin",
    "pytester",
]
