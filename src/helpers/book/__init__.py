"""The book: the stage pipeline (papermill, run folders, typed config), plots, reports, claims, benchmarks page."""
