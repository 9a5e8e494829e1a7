"""The selected model, usable on new patients: export to MLflow, alignment, prediction, external validation.

``model`` (:class:`SelectedModel`, the model families), ``align`` (features by name), ``predict`` (the
prediction table, imputed stores), ``validate`` (external validation), ``mlflow_model`` (the pyfunc model,
logging, registering, loading).
"""
