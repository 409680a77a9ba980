"""The run record: metrics files, experiment trackers, the progress bar, the HTML report."""
