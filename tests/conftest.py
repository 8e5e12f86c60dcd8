pytest_plugins = ["tests.plugins.no_errors", "tests.plugins.coturn", "pytester"]
