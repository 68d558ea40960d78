pytest_plugins = ["hermes_lite.pytest_plugin"]
