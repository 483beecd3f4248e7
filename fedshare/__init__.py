"""The ``fedshare`` command line (cli.py): one entry point over the project's tools."""
