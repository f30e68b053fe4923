from profiler.cli.main import entry

entry()
