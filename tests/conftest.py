pytest_plugins = [
    "tests.plugins.no_errors",
    "tests.plugins.coturn",
    "tests.plugins.browser",
    "tests.plugins.xdist_groups",
    "harness.pytest_plugin",
    "pytester",
]
