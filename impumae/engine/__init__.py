"""The engine: pretraining jobs, trials, the search, the holdout, nested CV and MLflow tracking on Ray."""
