pytest_plugins = ["tests.plugins.no_errors", "tests.plugins.coturn", "harness.pytest_plugin", "pytester"]
