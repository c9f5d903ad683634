"""Reading a run directory: the report page, plots and the terminal view."""
