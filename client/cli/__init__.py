"""The `kairos` command line; `main.main` is the console-script entry point."""
