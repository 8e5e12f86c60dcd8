pytest_plugins = [
    "tests.plugins.no_errors",
    "tests.plugins.coturn",
    "tests.plugins.browser",
    "harness.pytest_plugin",
    "pytester",
]
