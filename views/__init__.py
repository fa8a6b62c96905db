"""What node page and hub both serve: merged cells, ranges of windows, insights, significance, the dashboard."""
