pytest_plugins = ["tests.plugins.no_errors", "pytester"]
